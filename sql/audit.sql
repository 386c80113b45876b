-- The audit trail: one row per state change and security event, written in the same transaction
-- as the change (src/audit/mod.rs explains the design: row HMACs at insert, a chain sealed later,
-- failed attempts that survive their transaction's rollback).

-- CACHE 1 (the default) on purpose: sealing reads last_value as the highest id handed out, which
-- per-backend caches would make a lie.
CREATE SEQUENCE voucher.audit_event_id_seq AS bigint;

CREATE TABLE voucher.audit_event (
    tenant_id    uuid        NOT NULL,
    event_id     bigint      NOT NULL,
    at           timestamptz NOT NULL,
    actor        jsonb       NOT NULL,
    action       text        NOT NULL,
    object_type  text,
    object_id    text,
    details      jsonb       NOT NULL DEFAULT '{}',
    row_hash     bytea       NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
) WITH (fillfactor = 100);
COMMENT ON TABLE voucher.audit_event IS
    'The audit log: append-only; row_hash is an HMAC-SHA256 of the row under the server''s audit key.';
-- Written on every change, read rarely: few indexes. The primary key serves a tenant's log in
-- order (and verification and purging); the object index a voucher's or key's history; a BRIN
-- index time ranges (rows arrive in time order and are never updated, so it stays tight).
CREATE INDEX audit_event_object_idx ON voucher.audit_event (tenant_id, object_type, object_id);
CREATE INDEX audit_event_at_brin ON voucher.audit_event USING brin (at);

-- The chain, written by seal_audit(): chain_hash = HMAC(previous chain_hash || row_hash), per
-- tenant in event_id order. Insert-only, like the log.
CREATE TABLE voucher.audit_chain (
    tenant_id    uuid   NOT NULL,
    event_id     bigint NOT NULL,
    chain_hash   bytea  NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
COMMENT ON TABLE voucher.audit_chain IS 'The sealed hash chain over each tenant''s audit events.';

-- Where each tenant's chain stands.
CREATE TABLE voucher.audit_state (
    tenant_id         uuid        NOT NULL,
    sealed_through    bigint      NOT NULL DEFAULT 0,
    head              bytea,
    sealed_rows       bigint      NOT NULL DEFAULT 0,
    sealed_at         timestamptz,
    -- events up to pending_through become sealable once every transaction older than
    -- pending_xmax has ended (no id at or below it can still appear)
    pending_through   bigint,
    pending_xmax      xid8,
    -- retention: the chain restarts after purged_through from purge_head
    purged_through    bigint      NOT NULL DEFAULT 0,
    purge_head        bytea,
    key_fingerprint   text,
    PRIMARY KEY (tenant_id)
);
COMMENT ON TABLE voucher.audit_state IS 'Per tenant: how far the audit chain is sealed, and its head.';

SELECT voucher._isolate_tenant('voucher.audit_event');
SELECT voucher._isolate_tenant('voucher.audit_chain');
SELECT voucher._isolate_tenant('voucher.audit_state');

-- Append-only: nobody but a superuser may change or remove audit rows (and what a superuser
-- changes, verify_audit finds). The only exception is voucher.purge_audit() applying retention.
CREATE FUNCTION voucher._audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF voucher._audit_purging() THEN
        RETURN OLD;
    ELSIF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RETURN CASE TG_OP WHEN 'UPDATE' THEN NEW ELSE OLD END;
    END IF;
    RAISE EXCEPTION 'audit rows are append-only: % on %.% is not allowed',
                    TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = '42501',
              HINT = 'only a superuser may change or remove audit rows; voucher.purge_audit() applies retention';
END
$$;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON voucher.audit_event
    FOR EACH ROW EXECUTE FUNCTION voucher._audit_append_only();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON voucher.audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_append_only();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON voucher.audit_chain
    FOR EACH ROW EXECUTE FUNCTION voucher._audit_append_only();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON voucher.audit_chain
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_append_only();

-- Direct changes by anyone but our own functions (a DBA as table owner or superuser): one audit
-- row per changed row, with the columns that changed (values too, except personal data and key
-- hashes). Our functions run as voucher_definer and write their own, richer rows.
CREATE FUNCTION voucher._audit_direct_dml() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_row jsonb := to_jsonb(OLD);
    new_row jsonb;
    changed jsonb := '{}';
    k text;
    private boolean := TG_TABLE_NAME IN ('customer', 'credential', 'tenant_key');
BEGIN
    IF TG_OP = 'UPDATE' THEN
        new_row := to_jsonb(NEW);
        FOR k IN SELECT jsonb_object_keys(new_row) LOOP
            IF new_row -> k IS DISTINCT FROM old_row -> k THEN
                changed := changed || jsonb_build_object(k, CASE WHEN private THEN NULL
                    ELSE jsonb_build_object('before', old_row -> k, 'after', new_row -> k) END);
            END IF;
        END LOOP;
    END IF;
    PERFORM voucher._audit_direct(OLD.tenant_id, 'direct.' || lower(TG_OP), TG_TABLE_NAME,
        CASE TG_TABLE_NAME
            WHEN 'tenant' THEN OLD.tenant_id::text
            ELSE (SELECT string_agg(old_row ->> a.attname, ',' ORDER BY k.n)
                    FROM pg_catalog.pg_index i
                    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n)
                    JOIN pg_catalog.pg_attribute a
                      ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                   WHERE i.indrelid = TG_RELID AND i.indisprimary AND a.attname <> 'tenant_id')
        END,
        jsonb_build_object('table', TG_TABLE_NAME, 'changed', changed));
    RETURN NULL;
END
$$;

-- TRUNCATE removes every tenant's rows: one audit row per tenant, written before the rows go
-- (so truncating voucher.tenant itself still finds them). It runs as the DBA truncating.
CREATE FUNCTION voucher._audit_direct_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher._audit_direct(t.tenant_id, 'direct.truncate', TG_TABLE_NAME, NULL,
                                  jsonb_build_object('table', TG_TABLE_NAME))
       FROM voucher.tenant t;
    RETURN NULL;
END
$$;

-- The condition is a function call (voucher._by_definer(), src/tenancy/definer.rs), not
-- `current_user <> 'voucher_definer'`: every statement that updates the table reads it back from
-- pg_trigger and plans it, and the name constant made that 25k instructions per redemption.
DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant', 'credential', 'campaign', 'code', 'code_use', 'customer',
                             'customer_usage', 'redemption', 'tenant_key'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.%I FOR EACH ROW '
            'WHEN (NOT voucher._by_definer()) EXECUTE FUNCTION voucher._audit_direct_dml()', t);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.%I FOR EACH STATEMENT '
            'EXECUTE FUNCTION voucher._audit_direct_truncate()', t);
    END LOOP;
END
$triggers$;

CREATE VIEW voucher.audit_log WITH (security_barrier) AS
SELECT e.event_id AS id, e.at, e.tenant_id, e.actor, e.action, e.object_type, e.object_id,
       e.details, e.event_id <= coalesce(s.sealed_through, 0) AS sealed
  FROM voucher.audit_event e
  LEFT JOIN voucher.audit_state s ON s.tenant_id = e.tenant_id
 WHERE voucher._can_read('read_audit');
COMMENT ON VIEW voucher.audit_log IS
    'The tenant''s audit log (admin and auditor keys). sealed: covered by the hash chain.';

CREATE FUNCTION voucher.set_audit_retention(retention interval) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    t uuid := voucher._authorize('administer');
    before interval;
BEGIN
    IF retention IS NULL OR retention < interval '1 day' THEN
        RAISE EXCEPTION 'retention must be at least one day' USING ERRCODE = '22023';
    END IF;
    SELECT x.audit_retention INTO before FROM voucher.tenant x WHERE x.tenant_id = t;
    UPDATE voucher.tenant x SET audit_retention = retention WHERE x.tenant_id = t;
    PERFORM voucher._audit('tenant.audit_retention_changed', 'tenant', t::text,
        jsonb_build_object('before', before::text, 'after', retention::text));
END
$$;
COMMENT ON FUNCTION voucher.set_audit_retention(interval) IS
    'Admin keys: how long purge_audit() keeps this tenant''s audit rows (default 12 months).';
