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
    tenant_id     uuid        NOT NULL REFERENCES voucher.tenant ON DELETE CASCADE,
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
