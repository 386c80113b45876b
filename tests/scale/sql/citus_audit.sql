-- The audit trail on the cluster: each tenant's rows live on its worker, sealed and verified per
-- tenant; a superuser's change to a row on one worker is found, the other tenant still verifies.
SELECT tenant AS a FROM citus_tenant WHERE name = 'a' \gset
SELECT tenant AS b FROM citus_tenant WHERE name = 'b' \gset
-- a second call seals what the first left pending once every transaction that was running at
-- the first has ended (an autovacuum ANALYZE or Citus's maintenance daemon may hold one for a
-- moment): called again in new transactions until it does, 100 times at most
CREATE PROCEDURE public.seal_until_sealed(INOUT sealed boolean DEFAULT false) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..100 LOOP
        sealed := voucher.seal_audit() > 0;
        COMMIT;
        EXIT WHEN sealed;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SET ROLE regress_op;
SELECT voucher.seal_audit() >= 0 AS horizon_set;
CALL seal_until_sealed();
RESET ROLE;
CREATE FUNCTION public.verify_as(who text) RETURNS TABLE (tenant text, ok boolean, checked boolean,
                                                           first_bad_id bigint, problem text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.authenticate(auditor) FROM citus_tenant WHERE name = who;
    RETURN QUERY SELECT who, v.ok, v.rows_checked > 0, v.first_bad_id, v.problem FROM voucher.verify_audit() v;
END
$$;
GRANT EXECUTE ON FUNCTION public.verify_as(text) TO PUBLIC;
SET ROLE regress_client;
SELECT * FROM verify_as('a');
SELECT * FROM verify_as('b');
RESET ROLE;
-- the only writer of audit rows on the cluster is the node a client calls: rows carry HMACs
-- made with the one audit key every node shares
SELECT count(*) > 0 AS sealed_rows_of_a FROM voucher.audit_chain WHERE tenant_id = :'a';
-- a superuser (past the append-only trigger) changes a sealed row of a, on a's worker
SELECT min(event_id) AS a_first FROM voucher.audit_event WHERE tenant_id = :'a' \gset
UPDATE voucher.audit_event SET details = details || '{"tampered": true}'
 WHERE tenant_id = :'a' AND event_id = :a_first;
-- ...and deletes a sealed row of b, on b's worker
SELECT max(event_id) AS b_last FROM voucher.audit_chain WHERE tenant_id = :'b' \gset
SELECT min(event_id) AS b_first FROM voucher.audit_event WHERE tenant_id = :'b' \gset
DELETE FROM voucher.audit_event WHERE tenant_id = :'b' AND event_id = :b_first;
SET ROLE regress_client;
SELECT tenant, ok, first_bad_id = :a_first AS at_the_changed_row, problem FROM verify_as('a');
SELECT tenant, ok, problem FROM verify_as('b');
RESET ROLE;
-- retention on the cluster: purge_audit's deletes reach b's worker, whose append-only triggers
-- let them through on the coordinator's permit (an HMAC of the transaction's token); every sealed
-- row goes (younger than a day: a superuser's call), the gap left by the deleted row with them,
-- and the chain restarts after the purged rows: b verifies again
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS b_admin FROM citus_tenant WHERE name = 'b';
SELECT voucher.set_audit_retention(interval '400 days');
SELECT voucher.purge_audit() AS purged_by_retention;
SELECT voucher.purge_audit(interval '0 seconds') > 0 AS purged;
COMMIT;
SELECT count(*) AS sealed_rows_left FROM voucher.audit_event WHERE tenant_id = :'b' AND event_id <= :b_last;
SELECT count(*) > 0 AS younger_rows_kept FROM voucher.audit_event WHERE tenant_id = :'b';
SET ROLE regress_client;
SELECT tenant, ok, problem FROM verify_as('b');
RESET ROLE;
-- the permit is the purge's alone: the same delete in a transaction of its own is refused
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS b_admin FROM citus_tenant WHERE name = 'b';
SET ROLE voucher_definer;
SELECT regexp_replace(t(format($$DELETE FROM voucher.audit_event WHERE tenant_id = %L$$, :'b')),
                      'audit_event_[0-9]+', 'audit_event_<shard>') AS delete_without_permit;
RESET ROLE;
COMMIT;
