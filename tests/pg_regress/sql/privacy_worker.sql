-- Customer retention by the background worker (the library is preloaded in this cluster): with
-- voucher.customer_retention_interval set, inactive customers of tenants with
-- customer_retention_days get forgotten without any call. Off by default (make test's cluster
-- leaves it at 0); this file turns it on (1 second) and off again.
SHOW voucher.customer_retention_interval;
\c - regress_op
SELECT voucher.create_tenant('worker retention') AS t \gset
SELECT voucher.create_api_key('admin', tenant => :'t') AS admin \gset
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.configure('customer_retention_days', '7');
SELECT count(voucher.upsert_customer('w' || i, 'w' || i || '@example.com')) AS customers
  FROM generate_series(1, 3) i;
-- a later transaction: its customer's created_at is later than the three aged below (customers
-- created in one transaction share created_at, and the ORDER BY created_at LIMIT 3 below
-- then picked any 3 of the 4)
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('w-recent', 'recent@example.com') IS NOT NULL AS recent;
COMMIT;
\c - postgres
UPDATE voucher.customer c SET updated_at = now() - interval '8 days'
 WHERE c.tenant_id = :'t' AND c.customer_id IN (SELECT customer_id FROM voucher.customer
                                                 WHERE tenant_id = :'t' ORDER BY created_at LIMIT 3);
SELECT count(*) FILTER (WHERE forgotten_at IS NOT NULL) AS forgotten_before
  FROM voucher.customer WHERE tenant_id = :'t';
ALTER SYSTEM SET voucher.customer_retention_interval = 1;
SELECT pg_reload_conf();
-- wait (at most 60 s) until the worker has forgotten the three inactive customers
DO $$
DECLARE
    t uuid := (SELECT tenant_id FROM voucher.tenant WHERE name = 'worker retention');
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT count(*) FROM voucher.customer c
                    WHERE c.tenant_id = t AND c.forgotten_at IS NOT NULL) >= 3;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
ALTER SYSTEM RESET voucher.customer_retention_interval;
SELECT pg_reload_conf();
SELECT count(*) FILTER (WHERE forgotten_at IS NOT NULL) AS forgotten,
       count(*) FILTER (WHERE forgotten_at IS NULL) AS kept
  FROM voucher.customer WHERE tenant_id = :'t';
-- in the tenant's own log, by the worker's (superuser) role acting as an admin
SELECT e.details ->> 'reason' AS reason, e.actor ->> 'type' AS actor, e.actor ->> 'role' AS role,
       count(*)
  FROM voucher.audit_event e
 WHERE e.tenant_id = :'t' AND e.action = 'customer.forgotten' GROUP BY 1, 2, 3;
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.export_customer('w-recent') IS NOT NULL AS recent_kept,
       voucher.export_customer('w1') IS NULL AS w1_forgotten;
SELECT ok FROM voucher.verify_audit();
COMMIT;
