-- The seal worker (the library is preloaded in this cluster): with voucher.seal_interval set,
-- events get sealed without any seal_audit() call, and verify_audit then catches a deleted
-- sealed row. make test runs the cluster with seal_interval = 0 so other tests see no seals;
-- this file turns it on (1 second) and off again.
SELECT voucher._preloaded() AS preloaded;
-- the launcher: connected to no database
SELECT count(*) AS sealer_running FROM pg_stat_activity
 WHERE backend_type = 'voucher_ext sealer' AND datid IS NULL;
SELECT pid AS launcher FROM pg_stat_activity
 WHERE backend_type = 'voucher_ext sealer' AND datid IS NULL \gset
\c - regress_op
SELECT voucher.create_tenant('worker sealed') AS t \gset
SELECT voucher.create_api_key('admin', tenant => :'t') AS admin \gset
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_campaign('w', discount_type => 'amount', discount_value => 1) AS c \gset
SELECT voucher.generate_codes(:'c', 3) AS generated;
SELECT voucher.create_api_key('auditor') AS auditor \gset
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'auditor') IS NOT NULL AS ok;
SELECT count(*) AS events, count(*) FILTER (WHERE sealed) AS sealed FROM voucher.audit_log;
COMMIT;

-- sealing that fails (an audit key file that cannot be created) is logged and retried: nothing
-- is sealed meanwhile, the launcher keeps running, and sealing resumes once the file is fixed
\c - postgres
ALTER SYSTEM SET voucher.audit_key_file = '/nonexistent/voucher_audit.key';
ALTER SYSTEM SET voucher.seal_interval = 1;
SELECT pg_reload_conf();
SELECT pg_sleep(3.5);
SELECT count(*) AS sealed_meanwhile FROM voucher.audit_state s JOIN voucher.tenant t USING (tenant_id)
 WHERE t.name = 'worker sealed' AND s.sealed_through > 0;
SELECT pid = :launcher AS same_launcher FROM pg_stat_activity
 WHERE backend_type = 'voucher_ext sealer' AND datid IS NULL;
ALTER SYSTEM RESET voucher.audit_key_file;
SELECT pg_reload_conf();
-- wait (at most 60 s) until the worker has sealed every event of the tenant
DO $$
DECLARE
    t uuid := (SELECT tenant_id FROM voucher.tenant WHERE name = 'worker sealed');
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT s.sealed_through FROM voucher.audit_state s WHERE s.tenant_id = t)
                  >= (SELECT max(e.event_id) FROM voucher.audit_event e WHERE e.tenant_id = t);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
ALTER SYSTEM SET voucher.seal_interval = 0;
SELECT pg_reload_conf();

\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'auditor') IS NOT NULL AS ok;
SELECT count(*) AS events, count(*) FILTER (WHERE sealed) AS sealed FROM voucher.audit_log;
SELECT ok, problem FROM voucher.verify_audit();
COMMIT;

-- a superuser deletes a sealed row: the chain shows it
\c - postgres
DELETE FROM voucher.audit_event
 WHERE tenant_id = :'t' AND action = 'codes.generated';
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'auditor') IS NOT NULL AS ok;
SELECT ok, first_bad_id IS NOT NULL AS names_a_row, problem FROM voucher.verify_audit();
COMMIT;
