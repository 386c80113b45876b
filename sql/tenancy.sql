-- Tenants and API keys. Every table of the extension follows the same rules:
--   * tenant_id is the first column of the primary key and of every unique constraint, and
--     every index starts with it (the layout a distribution by tenant_id needs);
--   * row-level security is enabled AND forced, with one policy comparing tenant_id to the
--     session's tenant context, written as a sub-select so it is evaluated once per query
--   (both written by voucher._isolate_tenant, the one helper for this boilerplate: install
--   time only, dropped again by finalize.sql).

CREATE FUNCTION voucher._isolate_tenant(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format('CREATE POLICY tenant_isolation ON %s '
                   'USING (tenant_id = (SELECT voucher.current_tenant())) '
                   'WITH CHECK (tenant_id = (SELECT voucher.current_tenant()))', tbl);
END
$$;

CREATE TABLE voucher.tenant (
    tenant_id        uuid        NOT NULL,
    name             text        NOT NULL CHECK (name <> ''),
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text        NOT NULL,
    audit_retention  interval    NOT NULL DEFAULT interval '12 months',
    PRIMARY KEY (tenant_id)
);
COMMENT ON TABLE voucher.tenant IS 'One row per tenant. Only operators create them.';

CREATE TABLE voucher.credential (
    tenant_id     uuid        NOT NULL,   -- no foreign key: see _tenant_keep_refs below
    key_id        uuid        NOT NULL,
    prefix        text        NOT NULL,
    key_hash      bytea       NOT NULL CHECK (length(key_hash) = 32),
    role          text        NOT NULL CHECK (role IN ('admin', 'manager', 'redeemer', 'auditor')),
    label         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    PRIMARY KEY (tenant_id, key_id),
    UNIQUE (tenant_id, prefix)
);
COMMENT ON TABLE voucher.credential IS
    'API keys: SHA-256 of the key and its non-secret prefix; the key itself is never stored.';
COMMENT ON COLUMN voucher.credential.prefix IS 'vk_ and 12 random characters: shown, not secret.';

-- authenticate() finds a key by its prefix before it knows the tenant.
CREATE INDEX credential_prefix_idx ON voucher.credential (prefix);

-- No foreign keys to voucher.tenant (operations): pg_restore -j loads the tables' data
-- concurrently and ignores the order pg_dump keeps for the keys among an extension's tables, so a
-- key from voucher.credential, voucher.campaign, voucher.tenant_key or voucher.tenant_setting
-- made a parallel restore fail (a child loaded before its tenant). No table of the extension has
-- a foreign key any more: sql/codes.sql and sql/redeem.sql replaced the others for speed, this
-- function the last ones, with the keys' behaviour for direct DML (the extension's functions never
-- delete or re-key a tenant): deleting a tenant deletes its keys, settings, data keys and
-- campaigns (ON DELETE CASCADE, as the keys did; a campaign that codes name still refuses,
-- _codes_keep_refs), re-keying a tenant that those rows name or truncating voucher.tenant while
-- they exist is refused (23503, 0A000), and so is re-pointing one of them at a tenant that does
-- not exist. Inserts are not checked (a restore inserts in any order): clients cannot insert
-- into these tables, and the functions that do read the tenant FOR KEY SHARE first (the lock the
-- key's check took), so a concurrent delete of the tenant waits for them or makes them fail.
-- Like the other *_keep_refs it sees every tenant's rows and stays the extension owner's
-- (sql/finalize.sql).
CREATE FUNCTION voucher._tenant_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: rows truncated in the same statement are gone by now
        IF EXISTS (SELECT FROM voucher.credential) OR EXISTS (SELECT FROM voucher.campaign)
           OR EXISTS (SELECT FROM voucher.tenant_key)
           OR EXISTS (SELECT FROM voucher.tenant_setting) THEN
            RAISE EXCEPTION 'cannot truncate voucher.tenant while other tables name its rows'
                USING ERRCODE = '0A000',
                HINT = 'truncate voucher.credential, voucher.campaign, voucher.tenant_key and '
                       'voucher.tenant_setting in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME <> 'tenant' THEN
        IF NOT EXISTS (SELECT FROM voucher.tenant t WHERE t.tenant_id = NEW.tenant_id
                          FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.%: no such tenant', TG_TABLE_NAME USING ERRCODE = '23503';
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM voucher.credential c WHERE c.tenant_id = OLD.tenant_id;
        DELETE FROM voucher.tenant_setting s WHERE s.tenant_id = OLD.tenant_id;
        DELETE FROM voucher.tenant_key k WHERE k.tenant_id = OLD.tenant_id;
        DELETE FROM voucher.campaign c WHERE c.tenant_id = OLD.tenant_id;
    ELSIF EXISTS (SELECT FROM voucher.credential c WHERE c.tenant_id = OLD.tenant_id)
          OR EXISTS (SELECT FROM voucher.campaign c WHERE c.tenant_id = OLD.tenant_id)
          OR EXISTS (SELECT FROM voucher.tenant_key k WHERE k.tenant_id = OLD.tenant_id)
          OR EXISTS (SELECT FROM voucher.tenant_setting s WHERE s.tenant_id = OLD.tenant_id) THEN
        RAISE EXCEPTION 'voucher.tenant: other tables name this tenant' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.tenant
    FOR EACH ROW EXECUTE FUNCTION voucher._tenant_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id ON voucher.tenant
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.tenant
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._tenant_keep_refs();
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.credential
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();
-- (the same trigger on voucher.campaign, voucher.tenant_key and voucher.tenant_setting is
-- created with each table)

SELECT voucher._isolate_tenant('voucher.tenant');

SELECT voucher._isolate_tenant('voucher.credential');
-- Platform maintenance (sealing every tenant's audit chain) lists the tenants, and only that.
CREATE POLICY platform_scan ON voucher.tenant FOR SELECT
    USING ((SELECT voucher._tenant_scan()));
-- While authenticate() checks a key, exactly the rows with that key's prefix are visible to it.
CREATE POLICY key_lookup ON voucher.credential FOR SELECT
    USING (prefix = (SELECT voucher._key_probe()));

-- Any committed change that can invalidate a key bumps the revocation generation, so sessions
-- re-read their key at their next call (src/tenancy/revocation.rs). last_used_at is not such a change.
CREATE FUNCTION voucher._credential_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher._credentials_changed();
    RETURN NULL;
END
$$;
CREATE TRIGGER credential_changed
    AFTER UPDATE OF tenant_id, key_id, key_hash, role, expires_at, revoked_at OR DELETE OR TRUNCATE
    ON voucher.credential FOR EACH STATEMENT EXECUTE FUNCTION voucher._credential_trigger();

CREATE VIEW voucher.api_keys WITH (security_barrier) AS
SELECT key_id AS id, label, role, prefix, created_at, expires_at, last_used_at, revoked_at
  FROM voucher.credential
 WHERE voucher._can_read('read_keys');
COMMENT ON VIEW voucher.api_keys IS 'The tenant''s API keys (admin and auditor keys). Never the secret.';

CREATE FUNCTION voucher.revoke_api_key(key_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    t uuid := voucher._authorize('manage_keys');
BEGIN
    IF revoke_api_key.key_id IS NULL THEN
        RAISE EXCEPTION 'key_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    UPDATE voucher.credential c SET revoked_at = now()
     WHERE c.tenant_id = t AND c.key_id = revoke_api_key.key_id AND c.revoked_at IS NULL;
    IF FOUND THEN
        PERFORM voucher._audit('key.revoked', 'key', revoke_api_key.key_id::text, '{}');
    ELSIF NOT EXISTS (SELECT 1 FROM voucher.credential c
                      WHERE c.tenant_id = t AND c.key_id = revoke_api_key.key_id) THEN
        RAISE EXCEPTION 'no such API key' USING ERRCODE = '22023';
    END IF;
END
$$;
COMMENT ON FUNCTION voucher.revoke_api_key(uuid) IS
    'Revokes a key at once, also for sessions already authenticated with it. Idempotent.';
