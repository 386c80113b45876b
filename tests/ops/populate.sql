-- Data in every table of the extension, for the backup and upgrade tests: two tenants, keys,
-- campaigns with limits, generated and imported codes, a gift card, customers, per-customer
-- usage, redemptions with idempotency keys and a rollback, failed attempts, and audit events,
-- sealed and unsealed. Run as a superuser with psql; prints the two admin keys as
-- "key_a=..." / "key_b=..." lines for the caller (psql -At).
\set ON_ERROR_STOP on
\set QUIET on
SELECT voucher.create_tenant('shop-a') AS ta \gset
SELECT voucher.create_tenant('shop-b') AS tb \gset
SELECT voucher.create_api_key('admin', 'a admin', tenant => :'ta') AS key_a \gset
SELECT voucher.create_api_key('admin', 'b admin', tenant => :'tb') AS key_b \gset

BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT voucher.create_api_key('auditor', 'a auditor') IS NOT NULL AS ok \gset
SELECT voucher.create_campaign('spring', discount_type => 'amount', discount_value => 5,
                               redemption_limit => 2, per_customer_limit => 1) AS spring \gset
SELECT voucher.add_code(:'spring', 'SPRING-1') IS NOT NULL AS ok \gset
SELECT voucher.add_code(:'spring', 'SPRING-2') IS NOT NULL AS ok \gset
SELECT voucher.generate_codes(:'spring', 50) AS ok \gset
SELECT voucher.create_campaign('gift', kind => 'gift_card', gift_balance => 100,
                               redemption_limit => NULL, currency => 'EUR') AS gift \gset
SELECT voucher.add_code(:'gift', 'GIFT-1') IS NOT NULL AS ok \gset
SELECT voucher.upsert_customer('cust-1', 'one@example.com', 'One') IS NOT NULL AS ok \gset
SELECT voucher.upsert_customer('cust-2') IS NOT NULL AS ok \gset
SELECT replayed FROM voucher.redeem('SPRING-1', customer => 'cust-1', order_amount => 20,
                                   order_id => 'o-1', idempotency_key => 'idem-1') \gset
SELECT replayed FROM voucher.redeem('GIFT-1', amount => 30, idempotency_key => 'idem-2') \gset
SELECT redemption_id AS r3 FROM voucher.redeem('GIFT-1', amount => 5,
                                                metadata => '{"ship_to": "ann@example.org"}') \gset
SELECT restored FROM voucher.rollback_redemption(:'r3', 'cancelled') \gset
-- a voucher without a limit: from 0.2.0 on its uses are counted in voucher.code_use (issue 17)
SELECT voucher.create_campaign('open', discount_type => 'amount', discount_value => 1,
                               redemption_limit => NULL) AS open \gset
SELECT voucher.add_code(:'open', 'OPEN-1') IS NOT NULL AS ok \gset
SELECT replayed FROM voucher.redeem('OPEN-1', order_amount => 10) \gset
COMMIT;

BEGIN;
SELECT voucher.authenticate(:'key_b') IS NOT NULL AS ok \gset
SELECT voucher.create_campaign('b-camp', discount_type => 'percent', discount_value => 10,
                               redemption_limit => 1) AS bcamp \gset
SELECT voucher.generate_codes(:'bcamp', 20) AS ok \gset
SELECT voucher.add_code(:'bcamp', 'B-1') IS NOT NULL AS ok \gset
SELECT replayed FROM voucher.redeem('B-1', order_amount => 50, idempotency_key => 'idem-b') \gset
COMMIT;

-- a tenant setting (0.2.0 on; the upgrade test runs this file on 0.1.0 too)
SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'configure'
                AND pronamespace = 'voucher'::regnamespace) AS has_configure \gset
\if :has_configure
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT voucher.configure('customer_lockout_threshold', '12') AS ok \gset
COMMIT;
\endif

-- consents (privacy, 0.2.0 on): a grant and a withdrawal, so voucher.consent has history
SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'set_consent'
                AND pronamespace = 'voucher'::regnamespace) AS has_consent \gset
\if :has_consent
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT voucher.set_consent('cust-1', 'newsletter', true, 'signup form') AS ok \gset
SELECT voucher.set_consent('cust-1', 'newsletter', false, 'unsubscribe link') AS ok \gset
COMMIT;
\endif

-- a failed attempt: recorded durably by the next transaction of this backend
BEGIN;
SELECT voucher.authenticate(:'key_b') IS NOT NULL AS ok \gset
DO $$ BEGIN PERFORM voucher.redeem('B-1', order_amount => 50); EXCEPTION WHEN OTHERS THEN NULL; END $$;
ROLLBACK;

-- seal what is there (an event is sealed by the second run after it was written) ...
SELECT voucher.seal_audit() AS ok \gset
SELECT voucher.seal_audit() AS ok \gset
-- ... then leave some events unsealed
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT voucher.upsert_customer('cust-3') IS NOT NULL AS ok \gset
SELECT voucher.set_voucher_active('SPRING-2', false) AS ok \gset
SELECT voucher.set_voucher_active('SPRING-2', true) AS ok \gset
COMMIT;

\set QUIET off
\pset tuples_only on
\pset format unaligned
SELECT 'key_a=' || :'key_a';
SELECT 'key_b=' || :'key_b';
