-- A walk through voucher_ext, run by `make demo` as the superuser of a private cluster.
\pset footer off
CREATE EXTENSION voucher_ext;

-- The platform: an operator creates a tenant and its first (admin) key.
SELECT voucher.create_tenant('Acme Shop') AS tenant \gset
SELECT voucher.create_api_key('admin', 'Acme admin', tenant => :'tenant') AS admin_key \gset
\echo the admin key, shown once: :admin_key

-- The shop's back office: a key for the checkout, a campaign, codes.
BEGIN;
SELECT voucher.authenticate(:'admin_key') AS tenant_id;
SELECT voucher.create_api_key('redeemer', 'checkout') AS checkout_key \gset
SELECT voucher.create_campaign('Spring sale', discount_type => 'percent', discount_value => 15,
                               max_discount => 20, currency => 'EUR',
                               code_pattern => '####-####', code_prefix => 'SPRING-',
                               code_check_char => true) AS spring \gset
SELECT voucher.generate_codes(:'spring', 1000) AS codes_generated;
SELECT code FROM voucher.vouchers ORDER BY code LIMIT 3;
SELECT code AS some_code FROM voucher.vouchers ORDER BY code LIMIT 1 \gset
SELECT voucher.create_campaign('Gift cards', kind => 'gift_card', gift_balance => 50,
                               redemption_limit => NULL, currency => 'EUR') AS gifts \gset
SELECT voucher.add_code(:'gifts', 'GIFT-ANNA') IS NOT NULL AS gift_card_issued;
SELECT label, role, prefix FROM voucher.api_keys ORDER BY label;
COMMIT;

-- The checkout: validate, redeem (typed the way a customer would), redeem again.
BEGIN;
SELECT voucher.authenticate(:'checkout_key') IS NOT NULL AS authenticated;
SELECT valid, reason, discount FROM voucher.validate(lower(:'some_code'), order_amount => 80);
SELECT discount, replayed FROM voucher.redeem(lower(:'some_code'), customer => 'cust-42',
                                              order_amount => 80, idempotency_key => 'order-1');
-- a retry of the same request: the first result, nothing spent twice
SELECT discount, replayed FROM voucher.redeem(lower(:'some_code'), customer => 'cust-42',
                                              order_amount => 80, idempotency_key => 'order-1');
SELECT sqlstate, reason FROM voucher.validate(:'some_code', order_amount => 80);
SELECT discount, balance_after FROM voucher.redeem('gift-anna', amount => 30);
SELECT redemption_id AS gift_redemption FROM voucher.redeem('gift-anna', amount => 15) \gset
SELECT restored FROM voucher.rollback_redemption(:'gift_redemption', 'order cancelled');
SELECT balance FROM voucher.validate('gift-anna');
COMMIT;

-- A typo in a code with a check character, a used-up code, and a wrong key: each its SQLSTATE.
-- (The two errors below are intended: the demo lets them through and carries on.)
\set VERBOSITY sqlstate
\set ON_ERROR_STOP 0
BEGIN;
SELECT voucher.authenticate(:'checkout_key') IS NOT NULL AS authenticated;
SELECT sqlstate, reason FROM voucher.validate(overlay(:'some_code' placing 'Z' from 8 for 1));
SAVEPOINT s;
SELECT * FROM voucher.redeem(:'some_code', order_amount => 80);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT voucher.authenticate('vk_not_a_key');
\set ON_ERROR_STOP 1
\set VERBOSITY default

-- Outside a transaction that authenticated, nothing is visible.
SELECT count(*) AS vouchers_visible_without_context FROM voucher.vouchers;

-- The audit log, as the admin sees it, sealed and verified. Sealing is an operator's periodic
-- job (pg_cron, say every minute): the first run only fixes a horizon past every transaction
-- that could still be writing events, the next run chains everything before that horizon.
SELECT voucher.seal_audit() AS sealed_first_run;
SELECT voucher.seal_audit() AS sealed_second_run;
BEGIN;
SELECT voucher.authenticate(:'admin_key') IS NOT NULL AS authenticated;
SELECT action, object_type, actor ->> 'type' AS actor, sealed FROM voucher.audit_log ORDER BY id;
SELECT * FROM voucher.verify_audit();
COMMIT;
