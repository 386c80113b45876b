-- The audit trail: every action leaves exactly its row, in the transaction of the change;
-- failed attempts survive their rollback; append-only; tampering is found and named.
-- Ids, times and uuids are masked: rows are numbered per tenant in event order.

\c - regress_op
SELECT voucher.create_tenant('audited') AS t \gset
SELECT voucher.create_tenant('bystander') AS b \gset
SELECT voucher.create_api_key('admin', 'first admin', tenant => :'t') AS admin \gset
SELECT voucher.create_api_key('admin', tenant => :'b') AS b_admin \gset

\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('auditor', 'the auditor') AS auditor \gset
SELECT voucher.create_api_key('redeemer') AS redeemer \gset
SELECT voucher.create_api_key('manager') AS manager \gset
SELECT voucher.create_campaign('spring', discount_type => 'amount', discount_value => 5,
                               redemption_limit => 2) AS spring \gset
SELECT voucher.add_code(:'spring', 'SPRING-1') IS NOT NULL AS added;
SELECT voucher.generate_codes(:'spring', 3) AS generated;
SELECT voucher.set_voucher_active('spring-1', false);
SELECT voucher.set_voucher_active('spring-1', true);
SELECT voucher.set_campaign_active(:'spring', false);
SELECT voucher.set_campaign_active(:'spring', true);
SELECT voucher.upsert_customer('cust-1', 'one@example.com', 'One') IS NOT NULL AS customer;
SELECT voucher.upsert_customer('cust-1', name => 'Uno') IS NOT NULL AS customer_changed;
SELECT voucher.upsert_customer('cust-1', name => 'Uno') IS NOT NULL AS customer_unchanged;
SELECT redemption_id AS r1 FROM voucher.redeem('spring-1', customer => 'cust-1', order_amount => 20,
                                              order_id => 'o-1') \gset
SELECT restored FROM voucher.rollback_redemption(:'r1', 'returned');
SELECT voucher.revoke_api_key(id) FROM voucher.api_keys WHERE role = 'manager';
SELECT voucher.set_audit_retention('6 months');
COMMIT;

-- a change rolled back leaves no audit row
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_campaign('never') IS NOT NULL AS created;
ROLLBACK;

-- a refused redemption leaves its failure row although its transaction rolls back
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT try($$SELECT voucher.redeem('NO-SUCH-CODE')$$) AS unknown;
SELECT voucher.redeem('NO-SUCH-CODE');
ROLLBACK;
-- and so does a revoked key, used again
SELECT try(format('SELECT voucher.authenticate(%L)', :'manager')) AS revoked_key;

-- an operator acting as the tenant is recorded, even if it rolls back
\c - regress_op
BEGIN;
SELECT voucher.act_as(:'t', 'auditor');
ROLLBACK;

-- a DBA changing rows directly, not through the API, is recorded too
\c - postgres
UPDATE voucher.code SET active = false WHERE tenant_id = :'t' AND code = 'SPRING1';
DELETE FROM voucher.redemption WHERE tenant_id = :'t';
UPDATE voucher.customer SET email = 'changed@example.com' WHERE tenant_id = :'t';
-- TRUNCATE takes every tenant's rows: each tenant gets a row (rolled back here: so do they)
BEGIN;
TRUNCATE voucher.customer_usage;
SELECT count(*) FILTER (WHERE tenant_id = :'t') AS audited_rows,
       count(DISTINCT tenant_id) = (SELECT count(*) FROM voucher.tenant) AS every_tenant
  FROM voucher.audit_event WHERE action = 'direct.truncate';
ROLLBACK;

-- what the auditor sees: exactly one row per action above, in order
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'auditor') IS NOT NULL AS ok;
SELECT row_number() OVER (ORDER BY id) AS n, action, object_type,
       actor ->> 'type' AS actor, coalesce(actor ->> 'role', actor ->> 'db_role') AS as_role,
       details - 'redemption_id' - 'campaign_id' - 'customer_id' - 'voucher_id' - 'prefix'
               - 'code_shape' - 'key_id' AS details
  FROM voucher.audit_log ORDER BY id;
SELECT bool_and(tenant_id = :'t') AS own_tenant_only, count(*) FILTER (WHERE sealed) AS sealed
  FROM voucher.audit_log;
SELECT ok, rows_checked, first_bad_id, problem FROM voucher.verify_audit();
COMMIT;

------------------------------------------------------------------------------------------------
-- who may read and change the log
------------------------------------------------------------------------------------------------
SELECT r.role, try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.audit_log', r.key)) AS read_log,
       try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.verify_audit()', r.key)) AS verify
  FROM (VALUES ('admin', :'admin'), ('auditor', :'auditor'), ('redeemer', :'redeemer')) r(role, key);
-- without a context the log is empty; another tenant sees only its own rows
SELECT count(*) AS rows_without_context FROM voucher.audit_log;
BEGIN;
SELECT voucher.authenticate(:'b_admin') IS NOT NULL AS ok;
SELECT count(*) FILTER (WHERE tenant_id = :'t') AS rows_of_audited, count(*) AS own_rows
  FROM voucher.audit_log;
COMMIT;
-- clients hold no privilege on the audit tables; sealing is for operators
SELECT try('UPDATE voucher.audit_event SET action = action') AS client_update,
       try('DELETE FROM voucher.audit_event') AS client_delete,
       try('SELECT voucher.seal_audit()') AS client_seal;

-- roles with privileges on the table, even its owner, are refused by the append-only trigger
\c - postgres
CREATE ROLE regress_dba IN ROLE voucher_operator;
GRANT UPDATE, DELETE, TRUNCATE ON voucher.audit_event, voucher.audit_chain TO regress_dba;
CREATE ROLE regress_owner IN ROLE voucher_client;
ALTER TABLE voucher.audit_event OWNER TO regress_owner;
SET ROLE regress_dba;
BEGIN;
SELECT voucher.act_as(:'t', 'auditor');
SELECT try('UPDATE voucher.audit_event SET action = ''forged''') AS dba_update,
       try('DELETE FROM voucher.audit_event') AS dba_delete,
       try('TRUNCATE voucher.audit_event') AS dba_truncate,
       try('TRUNCATE voucher.audit_chain') AS dba_chain_truncate;
COMMIT;
RESET ROLE;
SET ROLE regress_owner;
SELECT try('TRUNCATE voucher.audit_event') AS owner_truncate;
RESET ROLE;
ALTER TABLE voucher.audit_event OWNER TO postgres;
REVOKE ALL ON voucher.audit_event, voucher.audit_chain FROM regress_dba;

------------------------------------------------------------------------------------------------
-- tampering: each scenario on a tenant of its own, after its log is sealed
------------------------------------------------------------------------------------------------
\c - regress_op
SELECT voucher.create_tenant('tamper changed') AS t_changed \gset
SELECT voucher.create_tenant('tamper deleted') AS t_deleted \gset
SELECT voucher.create_tenant('tamper forged') AS t_forged \gset
SELECT voucher.create_tenant('tamper swapped') AS t_swapped \gset
SELECT voucher.create_tenant('tamper cut') AS t_cut \gset
SELECT voucher.create_tenant('tamper unsealed') AS t_unsealed \gset
-- each: the tenant created, then four times act_as and a campaign
SELECT count(*) AS campaigns FROM (
    SELECT voucher.act_as(t, 'admin'), voucher.create_campaign('c' || n)
      FROM unnest(ARRAY[:'t_changed', :'t_deleted', :'t_forged', :'t_swapped', :'t_cut',
                        :'t_unsealed']::uuid[]) t,
           generate_series(1, 4) n) x;
-- an event becomes sealable at the second run after it was written
SELECT voucher.seal_audit() >= 0 AS first_run;
SELECT voucher.seal_audit() > 0 AS second_run;

-- an event written after the seal is covered by its own HMAC only
SELECT voucher.act_as(:'t_unsealed', 'admin'), voucher.create_campaign('late') IS NOT NULL AS late;

\c - postgres
-- the tampering is done by a superuser with triggers off, i.e. bypassing every safeguard
SET session_replication_role = replica;
CREATE TABLE victims AS
SELECT t.name, e.tenant_id, e.event_id, row_number() OVER (PARTITION BY e.tenant_id ORDER BY e.event_id) AS n
  FROM voucher.audit_event e JOIN voucher.tenant t USING (tenant_id)
 WHERE t.name LIKE 'tamper %';
GRANT SELECT ON victims TO regress_op;
-- changed: the third event's details
UPDATE voucher.audit_event SET details = details || '{"name": "c9"}'
 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM victims WHERE name = 'tamper changed' AND n = 3);
-- deleted: the third event
DELETE FROM voucher.audit_event
 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM victims WHERE name = 'tamper deleted' AND n = 3);
-- forged: a row inserted after the last one, inside the sealed range, with a made-up hash
INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, details, row_hash)
SELECT tenant_id, event_id + 1, now(), '{"type": "db_role", "db_role": "postgres"}', 'campaign.created',
       'campaign', '{}', sha256('forged')
  FROM victims WHERE name = 'tamper forged' AND n = 5;
INSERT INTO victims SELECT name, tenant_id, event_id + 1, 6 FROM victims WHERE name = 'tamper forged' AND n = 5;
-- swapped: the second and third events trade their places in the log
UPDATE voucher.audit_event e SET event_id = -e.event_id FROM victims v
 WHERE v.name = 'tamper swapped' AND v.n = 2 AND e.tenant_id = v.tenant_id AND e.event_id = v.event_id;
UPDATE voucher.audit_event e SET event_id = v2.event_id FROM victims v, victims v2
 WHERE v.name = 'tamper swapped' AND v.n = 3 AND e.tenant_id = v.tenant_id AND e.event_id = v.event_id
   AND v2.tenant_id = v.tenant_id AND v2.n = 2;
UPDATE voucher.audit_event e SET event_id = v3.event_id FROM victims v, victims v3
 WHERE v.name = 'tamper swapped' AND v.n = 2 AND e.tenant_id = v.tenant_id AND e.event_id = -v.event_id
   AND v3.tenant_id = v.tenant_id AND v3.n = 3;
-- cut: the last two events and their chain entries removed, as if they never were
DELETE FROM voucher.audit_event
 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM victims WHERE name = 'tamper cut' AND n >= 4);
DELETE FROM voucher.audit_chain
 WHERE (tenant_id, event_id) IN (SELECT tenant_id, event_id FROM victims WHERE name = 'tamper cut' AND n >= 4);
-- unsealed: the campaign written after the seal is deleted
DELETE FROM voucher.audit_event e USING voucher.tenant t
 WHERE t.tenant_id = e.tenant_id AND t.name = 'tamper unsealed'
   AND e.action = 'campaign.created' AND e.details ->> 'name' = 'late';
RESET session_replication_role;
CREATE FUNCTION verify_as(t uuid) RETURNS TABLE (ok boolean, rows_checked bigint, first_bad_id bigint, problem text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.act_as(t, 'auditor');
    RETURN QUERY SELECT * FROM voucher.verify_audit();
END
$$;
GRANT EXECUTE ON FUNCTION verify_as(uuid) TO regress_op;

\c - regress_op
-- verify_audit names the first bad row (shown as its position n in the tenant's log); the row
-- deleted before any seal is the one thing it cannot see
SELECT v.name, x.ok, x.rows_checked,
       (SELECT n FROM victims w WHERE w.tenant_id = v.tenant_id AND w.event_id = x.first_bad_id) AS first_bad_n,
       x.problem
  FROM (SELECT DISTINCT name, tenant_id FROM victims) v, LATERAL verify_as(v.tenant_id) x
 ORDER BY v.name;
-- the same verdicts when parallel workers recompute the row HMACs (large logs are checked that
-- way; here it is forced on a small one)
SET force_parallel_mode = on;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SELECT v.name, x.ok, x.rows_checked,
       (SELECT n FROM victims w WHERE w.tenant_id = v.tenant_id AND w.event_id = x.first_bad_id) AS first_bad_n,
       x.problem
  FROM (SELECT DISTINCT name, tenant_id FROM victims) v, LATERAL verify_as(v.tenant_id) x
 ORDER BY v.name;
RESET force_parallel_mode;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;

------------------------------------------------------------------------------------------------
-- retention: purging sealed rows keeps the rest verifiable
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.act_as(:'t', 'admin');
SELECT try($$SELECT voucher.purge_audit(interval '1 hour')$$) AS short_horizon_refused;
COMMIT;
SELECT voucher.seal_audit() >= 0 AS sealed;
SELECT voucher.seal_audit() >= 0 AS sealed_again;
\c - postgres
BEGIN;
SELECT voucher.act_as(:'t', 'admin');
SELECT voucher.purge_audit(interval '0 seconds') > 0 AS purged;
SELECT action, details ->> 'rows' IS NOT NULL AS counted FROM voucher.audit_log ORDER BY id;
SELECT ok, problem FROM voucher.verify_audit();
COMMIT;
SELECT voucher.seal_audit() >= 0 AS sealed;
SELECT voucher.seal_audit() >= 0 AS sealed_again;
BEGIN;
SELECT voucher.act_as(:'t', 'auditor');
SELECT ok, problem FROM voucher.verify_audit();
SELECT count(*) FILTER (WHERE sealed) AS sealed_rows FROM voucher.audit_log;
COMMIT;

\c - postgres
DROP TABLE victims;
DROP FUNCTION verify_as(uuid);
