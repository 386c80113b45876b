-- On a streaming standby (tests/scale/standby.sh): the read-only API works, every writing
-- function fails with 25006 and a clear message (no XX000, no backtrace in a DETAIL), and what
-- a standby cannot record (last_used_at, refused keys) does not break the reads.
SELECT pg_is_in_recovery() AS on_a_standby;
-- refresh last_used_at on every authentication, were it writable
SET voucher.key_last_used_interval = 0;
SET ROLE regress_client;

-- a redeemer: validate works, the writes are refused up front
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'redeemer';
SELECT valid, reason, discount FROM voucher.validate('SB-2', order_amount => 40);
SELECT valid, reason, sqlstate FROM voucher.validate('SB-1', order_amount => 40);
SELECT valid, balance FROM voucher.validate('SB-GIFT', order_amount => 20);
SELECT t($$SELECT * FROM voucher.redeem('SB-2', order_amount => 40)$$) AS redeem;
SELECT t($$SELECT * FROM voucher.redeem('SB-GIFT', amount => 5, idempotency_key => 'k1')$$) AS redeem_gift;
SELECT t($$SELECT * FROM voucher.rollback_redemption(gen_random_uuid())$$) AS rollback;
SELECT t($$SELECT voucher.upsert_customer('cust-2')$$) AS upsert_customer;
SELECT t($$SELECT voucher.set_consent('cust-1', 'newsletter', true)$$) AS set_consent;
-- exporting is for admin keys, here as on the primary
SELECT t($$SELECT voucher.export_customer('cust-1')$$) AS export_customer;
-- a role that may not write at all still hears 42501 first
SELECT t($$SELECT voucher.create_campaign('x')$$) AS create_campaign_as_redeemer;
COMMIT;

-- an admin: every view reads, every writing function is refused
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'admin';
SELECT (SELECT count(*) FROM voucher.api_keys) AS api_keys,
       (SELECT count(*) FROM voucher.campaigns) AS campaigns,
       (SELECT count(*) FROM voucher.vouchers) AS vouchers,
       (SELECT count(*) FROM voucher.customers) AS customers,
       (SELECT count(*) FROM voucher.redemptions) AS redemptions,
       (SELECT count(*) > 0 FROM voucher.audit_log) AS audit_rows;
SELECT code, redeemed_count, remaining_uses FROM voucher.vouchers ORDER BY code;
SELECT f, t(sql) AS outcome FROM (VALUES
    ('create_campaign', $$SELECT voucher.create_campaign('x')$$),
    ('set_campaign_active', $$SELECT voucher.set_campaign_active(id, false) FROM voucher.campaigns$$),
    ('generate_codes', $$SELECT voucher.generate_codes(id, 10) FROM voucher.campaigns$$),
    ('add_code', $$SELECT voucher.add_code(id, 'NEW-1') FROM voucher.campaigns$$),
    ('set_voucher_active', $$SELECT voucher.set_voucher_active('SB-3', false)$$),
    ('create_api_key', $$SELECT voucher.create_api_key('auditor')$$),
    ('revoke_api_key', $$SELECT voucher.revoke_api_key(id) FROM voucher.api_keys$$),
    ('set_audit_retention', $$SELECT voucher.set_audit_retention('30 days')$$),
    ('purge_audit', $$SELECT voucher.purge_audit()$$),
    ('redeem', $$SELECT * FROM voucher.redeem('SB-3')$$),
    ('forget_customer', $$SELECT voucher.forget_customer('cust-1')$$),
    ('forget_inactive_customers', $$SELECT voucher.forget_inactive_customers()$$),
    ('set_consent', $$SELECT voucher.set_consent('cust-1', 'profile', false)$$)) v(f, sql);
COMMIT;

-- export_customer (privacy) reads: it works here without its audit row (which cannot be written);
-- a caller that wants every export audited passes allow_unaudited => false and gets 25006
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'admin';
SELECT t($$SELECT voucher.export_customer('cust-1', allow_unaudited => false)$$) AS export_audited;
SELECT e ->> 'format' AS format, e -> 'audited' AS audited,
       e -> 'customer' ->> 'source_id' AS source_id, e -> 'customer' ->> 'email' AS email,
       jsonb_array_length(e -> 'redemptions') AS redemptions,
       (SELECT array_agg(DISTINCT a ->> 'action' ORDER BY a ->> 'action')
          FROM jsonb_array_elements(e -> 'audit_events') a) AS events
  FROM voucher.export_customer('cust-1') e;
SELECT voucher.export_customer('cust-streamed') -> 'customer' ->> 'source_id'
       AS streamed;
SELECT voucher.export_customer('nobody', allow_unaudited => true) IS NULL AS unknown_is_null;
SELECT t($$SELECT voucher.export_customer(NULL, allow_unaudited => true)$$) AS null_source;
COMMIT;

-- an auditor: the audit log and its verification
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'auditor';
SELECT ok, rows_checked > 0 AS checked_rows, first_bad_id, problem FROM voucher.verify_audit();
SELECT action, count(*) FROM voucher.audit_log GROUP BY action ORDER BY action;
SELECT count(*) > 0 AS sealed_rows FROM voucher.audit_log WHERE sealed;
COMMIT;

-- a bad key and a revoked key: refused (28000); their audit events cannot be written here
SELECT t($$SELECT voucher.authenticate('vk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')$$) AS bad_key;
SELECT t($$SELECT voucher.authenticate(key) FROM standby_key WHERE name = 'revoked'$$) AS revoked_key;
-- ...and the next calls of this session work (nothing queued is flushed on a standby)
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'redeemer';
SELECT valid, discount FROM voucher.validate('SB-3', order_amount => 15);
COMMIT;

-- a session-scoped context works outside a transaction block too
SELECT voucher.authenticate(key, session => true) IS NOT NULL AS authenticated
  FROM standby_key WHERE name = 'auditor';
SELECT count(*) AS keys_listed FROM voucher.api_keys;
SELECT t($$SELECT * FROM voucher.redeem('SB-3')$$) AS redeem_as_auditor;
SELECT voucher.logout();
RESET ROLE;

-- operators: every operator call writes, so every one is refused
SET ROLE regress_op;
SELECT f, t(sql) AS outcome FROM (VALUES
    ('create_tenant', $$SELECT voucher.create_tenant('new')$$),
    ('act_as', $$SELECT voucher.act_as(tenant_id) FROM (SELECT '00000000-0000-0000-0000-000000000000'::uuid) x(tenant_id)$$),
    ('create_api_key', $$SELECT voucher.create_api_key('admin', tenant => gen_random_uuid())$$),
    ('seal_audit', $$SELECT voucher.seal_audit()$$),
    ('run_customer_retention', $$SELECT voucher.run_customer_retention()$$)) v(f, sql);
RESET ROLE;
