-- After a restore or an upgrade: the data of tests/ops/populate.sql is intact and usable.
-- Needs psql variables key_a and key_b (the two admin keys). Raises on the first failed check.
\set ON_ERROR_STOP on
\set QUIET on
CREATE FUNCTION pg_temp.check(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'check failed: %', what;
    END IF;
END
$$;
CREATE FUNCTION pg_temp.fails_with(stmt text, state text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    RAISE EXCEPTION 'check failed: % succeeded, expected SQLSTATE %', stmt, state;
EXCEPTION WHEN OTHERS THEN
    IF SQLSTATE <> state THEN
        RAISE EXCEPTION 'check failed: % raised % (%), expected %', stmt, SQLSTATE, SQLERRM, state;
    END IF;
END
$$;

SELECT max(event_id) AS before_max FROM voucher.audit_event \gset

-- every tenant's log verifies, before anything else touches it
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT pg_temp.check(ok, 'tenant a verify_audit: ' || coalesce(problem, '')) FROM voucher.verify_audit();
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'key_b') IS NOT NULL AS ok \gset
SELECT pg_temp.check(ok, 'tenant b verify_audit: ' || coalesce(problem, '')) FROM voucher.verify_audit();
COMMIT;
SELECT pg_temp.check(matching = 2 AND other = 0, 'key fingerprints match') FROM voucher.key_fingerprints();

-- personal data decrypts with the master key that came with the backup
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT pg_temp.check((SELECT email = 'one@example.com' AND name = 'One'
                        FROM voucher.customers WHERE source_id = 'cust-1'), 'customer cust-1 decrypts');
SELECT pg_temp.check((SELECT count(*) = 1 FROM voucher.find_customer('ONE@example.com ')),
                     'find_customer by e-mail');
SELECT pg_temp.check((SELECT metadata ->> 'ship_to' = 'ann@example.org'
                        FROM voucher.redemptions WHERE status = 'rolled back'),
                     'redemption metadata decrypts');
COMMIT;

-- the limits, the per-customer usage, the gift balance and the idempotency keys hold
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT pg_temp.check(replayed, 'idempotent replay')
  FROM voucher.redeem('SPRING-1', customer => 'cust-1', order_amount => 20, order_id => 'o-1',
                      idempotency_key => 'idem-1');
SELECT pg_temp.check(replayed AND discount = 30, 'gift replay')
  FROM voucher.redeem('GIFT-1', amount => 30, idempotency_key => 'idem-2');
SELECT pg_temp.fails_with($$SELECT voucher.redeem('SPRING-2', customer => 'cust-1', order_amount => 20)$$, 'VC005');
SELECT pg_temp.fails_with($$SELECT voucher.redeem('GIFT-1', amount => 71)$$, 'VC006');
SELECT pg_temp.check(balance_after = 0, 'gift balance was 70')
  FROM voucher.redeem('GIFT-1', amount => 70);
SELECT pg_temp.check(NOT replayed, 'second use of SPRING-1')
  FROM voucher.redeem('SPRING-1', customer => 'cust-2', order_amount => 20);
SELECT pg_temp.fails_with($$SELECT voucher.redeem('SPRING-1', customer => 'cust-3', order_amount => 20)$$, 'VC004');
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'key_b') IS NOT NULL AS ok \gset
SELECT pg_temp.check(replayed, 'tenant b replay')
  FROM voucher.redeem('B-1', order_amount => 50, idempotency_key => 'idem-b');
SELECT pg_temp.fails_with($$SELECT voucher.redeem('B-1', order_amount => 50)$$, 'VC004');
COMMIT;

-- sealing continues the restored chain, new events get fresh ids, and everything verifies
SELECT voucher.seal_audit() AS ok \gset
SELECT voucher.seal_audit() AS ok \gset
SELECT pg_temp.check(min(s.sealed_through) >= :before_max, 'sealed through the restored events')
  FROM voucher.audit_state s;
SELECT pg_temp.check(count(*) > 0, 'events after the restore have new ids')
  FROM voucher.audit_event WHERE event_id > :before_max;
BEGIN;
SELECT voucher.authenticate(:'key_a') IS NOT NULL AS ok \gset
SELECT pg_temp.check(ok AND rows_checked > 10, 'tenant a verify_audit after sealing: ' || coalesce(problem, ''))
  FROM voucher.verify_audit();
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'key_b') IS NOT NULL AS ok \gset
SELECT pg_temp.check(ok, 'tenant b verify_audit after sealing: ' || coalesce(problem, ''))
  FROM voucher.verify_audit();
COMMIT;
\echo checks passed
