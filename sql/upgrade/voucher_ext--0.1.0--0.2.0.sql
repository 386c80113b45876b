-- voucher_ext 0.1.0 -> 0.2.0, run by ALTER EXTENSION voucher_ext UPDATE (TO '0.2.0').
--
-- How to extend it (every helper that changes the schema in this release):
--   * add your DDL in a section of its own below, named after your capability, between the
--     "-- begin CAP" / "-- end CAP" markers; write it exactly as the install script (sql/*.sql
--     and the CREATE FUNCTION lines pgrx generates: `cargo pgrx schema` prints them) would,
--     schema-qualified (the script runs with search_path = voucher, pg_temp);
--   * new functions need no REVOKE FROM PUBLIC, no owner change and no GRANT to voucher_definer
--     of their own: the "privileges" section at the end repeats what sql/finalize.sql does for
--     every function; grants to voucher_client / voucher_operator go into that section;
--   * new tables: RLS + policy as in the install script, then the "pg_dump" line marks them;
--   * tests/ops/upgrade.sh compares the upgraded schema with a fresh install object by object
--     and prints the difference: it tells what is missing here.
-- The library (.so) is shared by both versions: until this script has run, the 0.1.0 SQL
-- definitions call into the 0.2.0 library, so no Rust function that 0.1.0 declares may be
-- removed or change its C signature without this script replacing its SQL definition.
\echo Use "ALTER EXTENSION voucher_ext UPDATE" to load this file. \quit

-- begin ops (issue 13) --------------------------------------------------------------------
CREATE FUNCTION voucher."key_fingerprints"() RETURNS TABLE (
	"key" TEXT,
	"file" TEXT,
	"fingerprint" TEXT,
	"matching" bigint,
	"other" bigint
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'key_fingerprints_wrapper';

CREATE FUNCTION voucher._ops_mark_for_dump() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT c.oid::regclass AS rel
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_depend d
                 ON d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
               JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid AND x.extname = 'voucher_ext'
              WHERE c.relkind IN ('r', 'p', 'S')
                AND c.oid <> ALL (coalesce(x.extconfig, '{}'))
              ORDER BY c.relname LOOP
        PERFORM pg_catalog.pg_extension_config_dump(r.rel, '');
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION voucher._ops_mark_for_dump() IS
    'Internal, for install and upgrade scripts: marks every table and sequence of the extension for pg_dump.';
-- end ops -------------------------------------------------------------------------------

-- begin settings and throttle (issue 16; ported by ops from sql/settings.sql, sql/throttle.sql
-- and the generated definitions) ------------------------------------------------------------
CREATE FUNCTION voucher."_setting_registry"() RETURNS TABLE (
	"setting" TEXT,
	"default_value" TEXT,
	"description" TEXT
)
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'setting_registry_wrapper';
CREATE FUNCTION voucher."_settings_changed"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'settings_changed_wrapper';
CREATE FUNCTION voucher."configure"(
	"setting" TEXT,
	"value" TEXT
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'configure_wrapper';
CREATE FUNCTION voucher."_lockouts"() RETURNS TABLE (
	"kind" TEXT,
	"fingerprint" TEXT,
	"failures" bigint,
	"refused" bigint,
	"lockouts" bigint,
	"locked_at" timestamp with time zone,
	"locked_until" timestamp with time zone
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'lockouts_sql_wrapper';
CREATE FUNCTION voucher."_throttle_capacity"() RETURNS TABLE (
	"entries" bigint,
	"shared" bool,
	"lookups_until" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'capacity_sql_wrapper';
CREATE FUNCTION voucher."lockout_fingerprint"(
	"kind" TEXT,
	"identity" TEXT
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'lockout_fingerprint_wrapper';
CREATE FUNCTION voucher."unlock"(
	"kind" TEXT,
	"identity" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'unlock_wrapper';

-- validate and redeem gained a client argument: the 0.1.0 definitions call the same C symbols
-- with one argument less, which the 0.2.0 library refuses, so they are replaced here.
DROP FUNCTION voucher.validate(text, text, numeric);
CREATE FUNCTION voucher."validate"(
	"code" TEXT,
	"customer" TEXT DEFAULT NULL,
	"order_amount" NUMERIC DEFAULT NULL,
	"client" TEXT DEFAULT NULL
) RETURNS TABLE (
	"valid" bool,
	"reason" TEXT,
	"sqlstate" TEXT,
	"voucher_id" uuid,
	"discount" NUMERIC,
	"balance" NUMERIC
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'validate_wrapper';
DROP FUNCTION voucher.redeem(text, text, numeric, numeric, text, text, jsonb);
CREATE FUNCTION voucher."redeem"(
	"code" TEXT,
	"customer" TEXT DEFAULT NULL,
	"order_amount" NUMERIC DEFAULT NULL,
	"amount" NUMERIC DEFAULT NULL,
	"order_id" TEXT DEFAULT NULL,
	"idempotency_key" TEXT DEFAULT NULL,
	"metadata" jsonb DEFAULT NULL,
	"client" TEXT DEFAULT NULL
) RETURNS TABLE (
	"redemption_id" uuid,
	"voucher_id" uuid,
	"discount" NUMERIC,
	"balance_after" NUMERIC,
	"replayed" bool
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'redeem_wrapper';

CREATE TABLE voucher.tenant_setting (
    tenant_id   uuid        NOT NULL,
    setting     text        NOT NULL,
    value       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL,
    PRIMARY KEY (tenant_id, setting)
);
COMMENT ON TABLE voucher.tenant_setting IS
    'A tenant''s settings that differ from the defaults; written by voucher.configure.';
ALTER TABLE voucher.tenant_setting ENABLE ROW LEVEL SECURITY;
ALTER TABLE voucher.tenant_setting FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON voucher.tenant_setting
    USING (tenant_id = (SELECT voucher.current_tenant()))
    WITH CHECK (tenant_id = (SELECT voucher.current_tenant()));

CREATE FUNCTION voucher._setting_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher._settings_changed();
    RETURN NULL;
END
$$;
CREATE TRIGGER setting_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON voucher.tenant_setting FOR EACH STATEMENT EXECUTE FUNCTION voucher._setting_trigger();
CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.tenant_setting FOR EACH ROW
    WHEN (current_user <> 'voucher_definer') EXECUTE FUNCTION voucher._audit_direct_dml();
CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.tenant_setting
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_direct_truncate();

CREATE VIEW voucher.settings WITH (security_barrier) AS
SELECT r.setting, coalesce(s.value, r.default_value) AS value, r.default_value,
       s.updated_at, s.updated_by, r.description
  FROM voucher._setting_registry() r
  LEFT JOIN voucher.tenant_setting s ON s.setting = r.setting
 WHERE voucher._can_read('administer');
COMMENT ON VIEW voucher.settings IS
    'The tenant''s settings, configured or default (admin keys); change them with voucher.configure.';

CREATE VIEW voucher.lockouts AS
SELECT kind, fingerprint, failures, refused, lockouts, locked_at, locked_until
  FROM voucher._lockouts();
COMMENT ON VIEW voucher.lockouts IS
    'Current lock-outs (admin keys: the tenant''s customers, clients and keys; operators: source '
    'addresses of authenticate). Identities appear as keyed fingerprints, never in plaintext.';
-- end settings and throttle ------------------------------------------------------------------

-- begin crypto (issue 14: encryption at rest; sql/crypto.sql, sql/customers.sql, sql/redeem.sql)
-- 0.1.0 stored customers (source_id, email, name, metadata) and redemption metadata in
-- plaintext. This section adds the key tables, encrypts every such value in place through
-- voucher._crypto_migrate_plaintext() (Rust, src/crypto/migrate.rs: only Rust reaches the master
-- key; created here, called once, dropped again), then replaces the plaintext columns by the
-- ciphertexts. voucher.customer and voucher.redemption are rewritten (ACCESS EXCLUSIVE until the
-- update commits). Audit rows are append-only and hashed: those 0.1.0 wrote stay as they are
-- (README "Upgrading" says what they may hold).
CREATE SEQUENCE voucher.tenant_key_id_seq AS integer;
CREATE TABLE voucher.tenant_key (
    tenant_id      uuid        NOT NULL,
    key_id         integer     NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('data', 'index')),
    state          text        NOT NULL DEFAULT 'active'
                               CHECK (state IN ('active', 'retired', 'destroyed')),
    superseded_by  integer,
    master_key_id  text,
    wrapped        bytea,
    encryptions    bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    destroyed_at   timestamptz,
    rotated_through uuid,
    PRIMARY KEY (tenant_id, key_id),
    CHECK ((state = 'destroyed') = (wrapped IS NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);
COMMENT ON TABLE voucher.tenant_key IS
    'Per-tenant keys, wrapped under the master key (fingerprint master_key_id); never plaintext.';
COMMENT ON COLUMN voucher.tenant_key.encryptions IS
    'Encryptions reserved under this key; refused past 2^31 (NIST SP 800-38D random nonces: 2^32).';
COMMENT ON COLUMN voucher.tenant_key.rotated_through IS
    'rotate_data_key to this key: the customer_id it has walked through (primary key order).';
CREATE UNIQUE INDEX tenant_key_active_idx ON voucher.tenant_key (tenant_id, kind)
    WHERE state = 'active' AND superseded_by IS NULL;
ALTER SEQUENCE voucher.tenant_key_id_seq OWNED BY voucher.tenant_key.key_id;

ALTER TABLE voucher.tenant_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE voucher.tenant_key FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON voucher.tenant_key
    USING (tenant_id = (SELECT voucher.current_tenant()))
    WITH CHECK (tenant_id = (SELECT voucher.current_tenant()));
-- the key store reads them as voucher_definer while the migration below runs
GRANT SELECT, INSERT, UPDATE (superseded_by, state, master_key_id, wrapped, encryptions, retired_at,
                               destroyed_at, rotated_through)
    ON voucher.tenant_key TO voucher_definer;
GRANT USAGE ON SEQUENCE voucher.tenant_key_id_seq TO voucher_definer;

-- the views over the plaintext columns go first; they come back decrypting
DROP VIEW voucher.customers;
DROP VIEW voucher.redemptions;
DROP FUNCTION voucher.upsert_customer(text, text, text, jsonb);

-- the new columns (after the 0.1.0 ones, as sql/customers.sql and sql/redeem.sql order them) and
-- temporary ones for the ciphertexts
-- no foreign key to voucher.tenant any more (sql/customers.sql says why)
ALTER TABLE voucher.customer
    DROP CONSTRAINT customer_source_id_check,
    DROP CONSTRAINT customer_tenant_id_source_id_key,
    DROP CONSTRAINT customer_tenant_id_fkey,
    ADD COLUMN source_index bytea,
    ADD COLUMN email_index bytea,
    ADD COLUMN key_id integer,
    ADD COLUMN forgotten_at timestamptz,
    ADD COLUMN audit_key bytea,
    ADD COLUMN _source_id_ct bytea,
    ADD COLUMN _email_ct bytea,
    ADD COLUMN _name_ct bytea,
    ADD COLUMN _metadata_ct bytea;
ALTER TABLE voucher.redemption
    ADD COLUMN key_id integer,
    ADD COLUMN _metadata_ct bytea;

-- the migration: keys for every tenant, ciphertexts, blind indexes, customers' own keys. No audit row
-- of its own (the direct-DML triggers would record the superuser's UPDATEs).
CREATE FUNCTION voucher._crypto_migrate_plaintext() RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'migrate_plaintext_wrapper';
ALTER TABLE voucher.customer DISABLE TRIGGER audit_direct_dml;
ALTER TABLE voucher.redemption DISABLE TRIGGER audit_direct_dml;
SELECT voucher._crypto_migrate_plaintext() AS rows_encrypted;
ALTER TABLE voucher.customer ENABLE TRIGGER audit_direct_dml;
ALTER TABLE voucher.redemption ENABLE TRIGGER audit_direct_dml;
DROP FUNCTION voucher._crypto_migrate_plaintext();

-- the ciphertexts replace the plaintext in place (one rewrite of each table; the old files with
-- the plaintext are removed at commit)
ALTER TABLE voucher.customer
    ALTER COLUMN source_id TYPE bytea USING _source_id_ct,
    ALTER COLUMN email TYPE bytea USING _email_ct,
    ALTER COLUMN name TYPE bytea USING _name_ct,
    ALTER COLUMN metadata DROP DEFAULT,
    ALTER COLUMN metadata DROP NOT NULL,
    ALTER COLUMN metadata TYPE bytea USING _metadata_ct,
    ALTER COLUMN source_index SET NOT NULL,
    ALTER COLUMN key_id SET NOT NULL;
ALTER TABLE voucher.customer
    DROP COLUMN _source_id_ct, DROP COLUMN _email_ct, DROP COLUMN _name_ct,
    DROP COLUMN _metadata_ct,
    ADD UNIQUE (tenant_id, source_index);
ALTER TABLE voucher.redemption
    ALTER COLUMN metadata TYPE bytea USING _metadata_ct;
ALTER TABLE voucher.redemption DROP COLUMN _metadata_ct;
COMMENT ON TABLE voucher.customer IS
    'Customers; personal fields encrypted, source_id and email found by blind index.';
COMMENT ON COLUMN voucher.customer.source_index IS
    'HMAC-SHA256 of source_id under the tenant''s source_id index key.';
COMMENT ON COLUMN voucher.customer.email_index IS
    'HMAC-SHA256 of the trimmed, lower-case email under the tenant''s email index key.';
COMMENT ON COLUMN voucher.customer.key_id IS 'The data key every ciphertext of the row is under.';
COMMENT ON COLUMN voucher.customer.audit_key IS
    'The customer''s own key, wrapped under data key key_id: its personal data in audit rows is '
    'encrypted under it. NULL once forgotten (the key is destroyed).';
CREATE INDEX customer_email_idx ON voucher.customer (tenant_id, email_index)
    WHERE email_index IS NOT NULL;
COMMENT ON COLUMN voucher.redemption.metadata IS
    'Encrypted (AES-256-GCM) under the tenant data key key_id: metadata often holds personal data.';
CREATE INDEX redemption_key_idx ON voucher.redemption (tenant_id, key_id) WHERE key_id IS NOT NULL;

-- direct changes to the key tables are audited, without their values (sql/audit.sql)
CREATE OR REPLACE FUNCTION voucher._audit_direct_dml() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.tenant_key FOR EACH ROW
    WHEN (current_user <> 'voucher_definer') EXECUTE FUNCTION voucher._audit_direct_dml();
CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.tenant_key
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_direct_truncate();

-- the Rust functions (as `cargo pgrx schema` generates them)
CREATE FUNCTION voucher."upsert_customer"(
	"source_id" TEXT,
	"email" TEXT DEFAULT NULL,
	"name" TEXT DEFAULT NULL,
	"metadata" jsonb DEFAULT NULL
) RETURNS uuid
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'upsert_customer_wrapper';
CREATE FUNCTION voucher."find_customer"(
	"email" TEXT
) RETURNS SETOF uuid
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'find_customer_wrapper';
CREATE FUNCTION voucher."_decrypt"(
	"table" TEXT,
	"column" TEXT,
	"row" uuid,
	"ct" bytea
) RETURNS TEXT
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'decrypt_sql_wrapper';
CREATE FUNCTION voucher."rotate_master_key"() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_master_key_wrapper';
CREATE FUNCTION voucher."rotate_data_key"(
	"batch_size" INT DEFAULT 10000
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_data_key_wrapper';
CREATE FUNCTION voucher."destroy_retired_keys"(
	"older_than" interval DEFAULT '1 day'
) RETURNS TABLE (
	"key_id" INT
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'destroy_retired_keys_wrapper';

-- the views, decrypting (sql/crypto.sql, sql/redeem.sql)
-- Decrypted for admin and manager keys; 42501 for other key roles (the WHERE raises).
CREATE VIEW voucher.customers WITH (security_barrier) AS
SELECT c.customer_id,
       voucher._decrypt('customer', 'source_id', c.customer_id, c.source_id) AS source_id,
       voucher._decrypt('customer', 'email', c.customer_id, c.email) AS email,
       voucher._decrypt('customer', 'name', c.customer_id, c.name) AS name,
       coalesce(voucher._decrypt('customer', 'metadata', c.customer_id, c.metadata)::jsonb,
                '{}'::jsonb) AS metadata,
       c.created_at, c.updated_at, c.forgotten_at
  FROM voucher.customer c
 WHERE voucher._can_read('read_customers');
COMMENT ON VIEW voucher.customers IS 'The tenant''s customers, decrypted (admin and manager keys).';

-- The tenant's keys, without key material: id, kind, state, encryptions, dates (admin keys).
CREATE VIEW voucher.tenant_keys WITH (security_barrier) AS
SELECT k.key_id, k.kind, k.state, k.superseded_by, k.master_key_id, k.encryptions,
       k.created_at, k.retired_at, k.destroyed_at
  FROM voucher.tenant_key k
 WHERE voucher._can_read('administer');
COMMENT ON VIEW voucher.tenant_keys IS
    'The tenant''s keys: ids, states and counters, never key material.';

CREATE VIEW voucher.redemptions WITH (security_barrier) AS
SELECT r.redemption_id AS id, r.voucher_id, coalesce(v.display, v.code) AS code, r.campaign_id,
       voucher._decrypt('customer', 'source_id', cu.customer_id, cu.source_id) AS customer,
       r.order_id, r.order_amount, r.amount, r.discount,
       r.balance_after, CASE WHEN r.rolled_back_at IS NULL THEN 'redeemed' ELSE 'rolled back' END
       AS status, r.redeemed_at, r.redeemed_by, r.rolled_back_at, r.rollback_reason,
       r.rolled_back_by, r.idempotency_key,
       voucher._decrypt('redemption', 'metadata', r.redemption_id, r.metadata)::jsonb AS metadata,
       r.customer_id
  FROM voucher.redemption r
  JOIN voucher.code v ON v.tenant_id = r.tenant_id AND v.voucher_id = r.voucher_id
  LEFT JOIN voucher.customer cu ON cu.tenant_id = r.tenant_id AND cu.customer_id = r.customer_id
 WHERE voucher._can_read('read_redemptions');
COMMENT ON VIEW voucher.redemptions IS 'The tenant''s redemptions and their rollbacks.';
-- end crypto ------------------------------------------------------------------------------------

-- begin privacy (issue 15; sql/privacy.sql; needs the crypto section's customer columns,
-- audit_key and _decrypt before it) ---------------------------------------------------
-- the internal Rust functions (src/privacy/keys.rs, standby.rs) and run_customer_retention
-- (src/privacy/retention.rs), as pgrx declares them
CREATE FUNCTION voucher."_customer_by_source"(
	"t" uuid, /* pgrx :: Uuid */
	"source_id" TEXT /* & str */
) RETURNS uuid /* Option < pgrx :: Uuid > */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'customer_by_source_wrapper';
CREATE FUNCTION voucher."_open_personal"(
	"t" uuid, /* pgrx :: Uuid */
	"customer" uuid, /* pgrx :: Uuid */
	"sealed" TEXT /* & str */
) RETURNS jsonb /* Option < pgrx :: JsonB > */
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'open_personal_wrapper';
CREATE FUNCTION voucher."_pseudonymize"(
	"t" uuid, /* pgrx :: Uuid */
	"customer" uuid /* pgrx :: Uuid */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pseudonymize_wrapper';

CREATE FUNCTION voucher."run_customer_retention"(
	"batch_size" INT DEFAULT 1000 /* Option < i32 > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'run_customer_retention_wrapper';
CREATE FUNCTION voucher."_log_unaudited_export"() RETURNS void
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'log_unaudited_export_wrapper';

-- GDPR rights inside the database (src/privacy/, README "GDPR"): consent with its history, the
-- export of everything held about a customer, forgetting a customer, and retention of inactive
-- customers' profiles.

-- A forgotten customer keeps its row in voucher.customer (customer_id is the pseudonymous id its
-- redemptions, limits and statistics still count under), with forgotten_at set, its personal
-- fields NULL, its source_id a pseudonym and its own key (voucher.customer.audit_key) destroyed.

-- Every consent change, never updated: the current state is the latest row per customer and
-- purpose. Removed only when the customer is forgotten.
CREATE TABLE voucher.consent (
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    consent_id   uuid        NOT NULL,   -- uuid v7: time order
    purpose      text        NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_.:-]{0,62}$'),
    granted      boolean     NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    source       text        CHECK (length(source) <= 200),
    recorded_by  text        NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, consent_id)
);
COMMENT ON TABLE voucher.consent IS
    'Consent grants and withdrawals per customer and purpose, with time, key and source; history kept.';
ALTER TABLE voucher.consent ENABLE ROW LEVEL SECURITY;
ALTER TABLE voucher.consent FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON voucher.consent
    USING (tenant_id = (SELECT voucher.current_tenant()))
    WITH CHECK (tenant_id = (SELECT voucher.current_tenant()));
CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.consent FOR EACH ROW
    WHEN (current_user <> 'voucher_definer') EXECUTE FUNCTION voucher._audit_direct_dml();
CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.consent
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_direct_truncate();

-- A customer's redemptions, for export, forget and retention (which would otherwise scan the
-- tenant's redemptions once per customer).
CREATE INDEX redemption_customer_idx ON voucher.redemption (tenant_id, customer_id, redeemed_at)
    WHERE customer_id IS NOT NULL;
-- Failed redemptions that name a customer (the only audit rows that do without its id as their
-- object): export and forget find them without scanning the log. Only failures pay for it.
-- The key is a LEAKPROOF function (it cannot raise: -> and ->> on jsonb return NULL for what is
-- absent), so the index serves our functions, which run under row-level security, where a
-- non-leakproof jsonb operator would have to wait behind the policy as a filter.
CREATE FUNCTION voucher._audit_customer(details jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT LEAKPROOF PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN details -> 'customer' ->> 'customer_id';
END
$$;
CREATE INDEX audit_event_failed_customer_idx
    ON voucher.audit_event (tenant_id, voucher._audit_customer(details))
    WHERE action = 'redemption.failed';

------------------------------------------------------------------------------------------------
-- Tenant settings this capability reads (registered in src/settings/registry.rs, set with
-- voucher.configure): require_profile_consent (false) and customer_retention_days (0 = off).
------------------------------------------------------------------------------------------------
CREATE FUNCTION voucher._privacy_setting(t uuid, setting text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    v text;
BEGIN
    SELECT s.value INTO v FROM voucher.tenant_setting s
     WHERE s.tenant_id = t AND s.setting = _privacy_setting.setting;
    RETURN coalesce(v, CASE _privacy_setting.setting WHEN 'require_profile_consent' THEN 'false'
                                                     WHEN 'customer_retention_days' THEN '0' END);
END
$$;

------------------------------------------------------------------------------------------------
-- Storage-specific steps (the only functions that know how a customer's fields are stored)
------------------------------------------------------------------------------------------------

-- voucher._customer_by_source(t, source_id) (src/privacy/keys.rs): the live (not forgotten)
-- customer with this source_id, found through its blind index, or NULL.

-- The customer's profile as the person would read it.
-- (scale: the row is read first and decrypted in a statement of its own, which reads no table:
-- on a Citus cluster a look-up goes to the customer's shard with the functions of its target
-- list, and only the coordinator can decrypt)
CREATE FUNCTION voucher._customer_profile(t uuid, id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    c record;
BEGIN
    SELECT x.customer_id, x.source_id, x.email, x.name, x.metadata, x.created_at, x.updated_at
      INTO c FROM voucher.customer x WHERE x.tenant_id = t AND x.customer_id = id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object(
               'customer_id', c.customer_id,
               'source_id', voucher._decrypt('customer', 'source_id', c.customer_id, c.source_id),
               'email', voucher._decrypt('customer', 'email', c.customer_id, c.email),
               'name', voucher._decrypt('customer', 'name', c.customer_id, c.name),
               'metadata', coalesce(voucher._decrypt('customer', 'metadata', c.customer_id,
                                                     c.metadata)::jsonb, '{}'),
               'created_at', c.created_at, 'updated_at', c.updated_at);
END
$$;

-- Erases email, name and metadata (ciphertexts and the email's blind index); returns the names
-- of the fields that were stored.
CREATE FUNCTION voucher._erase_profile(t uuid, id uuid) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    old record;
BEGIN
    SELECT c.email IS NOT NULL AS email, c.name IS NOT NULL AS name,
           c.metadata IS NOT NULL AS metadata INTO old
      FROM voucher.customer c WHERE c.tenant_id = t AND c.customer_id = id FOR NO KEY UPDATE;
    IF NOT (old.email OR old.name OR old.metadata) THEN
        RETURN '{}';
    END IF;
    UPDATE voucher.customer c
       SET email = NULL, email_index = NULL, name = NULL, metadata = NULL, updated_at = now()
     WHERE c.tenant_id = t AND c.customer_id = id;
    RETURN array_remove(ARRAY[CASE WHEN old.email THEN 'email' END,
                              CASE WHEN old.name THEN 'name' END,
                              CASE WHEN old.metadata THEN 'metadata' END], NULL);
END
$$;

-- voucher._pseudonymize(t, id) (src/privacy/keys.rs): the source_id replaced by an encrypted
-- pseudonym and its blind index by random bytes, the profile fields NULL, forgotten_at set, and
-- the customer's own key destroyed.

-- The audit events that concern the customer: its own (created, changed, consents, exported),
-- its redemptions and their rollbacks, and failed redemptions that named it. Each kind is found
-- through an index (object, or the failed-customer index), never by scanning the log: a
-- customer's redemption events in one pass over the events of each of its vouchers (OFFSET 0
-- keeps the planner from flattening the LATERAL probes into a scan of every voucher's events).
-- PL/pgSQL, so its plan is kept (a SQL function with SET would be planned on every call).
CREATE FUNCTION voucher._customer_events(t uuid, id uuid)
RETURNS SETOF voucher.audit_event
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    idt text := id::text;
BEGIN
    RETURN QUERY
    -- the ids as text up front: a uuid::text cast inside a qual is not leakproof, so under
    -- row-level security it could not be an index condition
    WITH r AS MATERIALIZED (SELECT x.redemption_id::text AS rid, x.voucher_id::text AS vid
                              FROM voucher.redemption x
                             WHERE x.tenant_id = t AND x.customer_id = id)
    SELECT e.* FROM voucher.audit_event e
     WHERE e.tenant_id = t AND e.object_type = 'customer' AND e.object_id = idt
    UNION ALL
    SELECT e.* FROM (SELECT DISTINCT r.vid FROM r) v
     CROSS JOIN LATERAL (SELECT e.* FROM voucher.audit_event e
                          WHERE e.tenant_id = t AND e.object_type = 'voucher'
                            AND e.object_id = v.vid
                            AND e.action = 'redemption.created' OFFSET 0) e
     WHERE e.details ->> 'redemption_id' IN (SELECT r.rid FROM r)
    UNION ALL
    SELECT e.* FROM r
     CROSS JOIN LATERAL (SELECT e.* FROM voucher.audit_event e
                          WHERE e.tenant_id = t AND e.object_type = 'redemption'
                            AND e.object_id = r.rid OFFSET 0) e
    UNION ALL
    SELECT e.* FROM voucher.audit_event e
     WHERE e.tenant_id = t AND e.action = 'redemption.failed'
       AND voucher._audit_customer(e.details) = idt;
END
$$;

------------------------------------------------------------------------------------------------
-- Consent
------------------------------------------------------------------------------------------------

-- May this customer's profile hold personal fields? Always, unless the tenant requires the
-- 'profile' consent; then only when it is granted. id NULL: a customer not created yet.
CREATE FUNCTION voucher._profile_allowed(t uuid, id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
BEGIN
    -- (scale) two statements: on a Citus cluster the consent look-up goes to the customer's
    -- shard, which must not be asked to read the settings itself
    IF voucher._privacy_setting(t, 'require_profile_consent') <> 'true' THEN
        RETURN true;
    END IF;
    RETURN coalesce((SELECT c.granted FROM voucher.consent c
                      WHERE c.tenant_id = t AND c.customer_id = id AND c.purpose = 'profile'
                      ORDER BY c.consent_id DESC LIMIT 1), false);
END
$$;

CREATE FUNCTION voucher.set_consent(
    customer  text,
    purpose   text,
    granted   boolean,
    source    text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t       uuid := voucher._authorize('write_customers');
    id      uuid;
    before  boolean;
    erased  text[] := '{}';
BEGIN
    IF customer IS NULL OR purpose IS NULL OR granted IS NULL THEN
        RAISE EXCEPTION 'customer, purpose and granted must not be NULL' USING ERRCODE = '22004';
    ELSIF purpose !~ '^[a-z][a-z0-9_.:-]{0,62}$' THEN
        RAISE EXCEPTION 'purpose must be a lower-case word of at most 63 characters'
            USING ERRCODE = '22023', HINT = 'for example ''profile'' or ''newsletter''';
    ELSIF length(source) > 200 THEN
        RAISE EXCEPTION 'source is longer than 200 characters' USING ERRCODE = '22023';
    END IF;
    -- finds or creates the customer (and checks the id); then one change at a time per customer
    id := voucher.upsert_customer(customer);
    PERFORM 1 FROM voucher.customer c WHERE c.tenant_id = t AND c.customer_id = id FOR NO KEY UPDATE;
    SELECT c.granted INTO before FROM voucher.consent c
     WHERE c.tenant_id = t AND c.customer_id = id AND c.purpose = set_consent.purpose
     ORDER BY c.consent_id DESC LIMIT 1;
    INSERT INTO voucher.consent (tenant_id, customer_id, consent_id, purpose, granted, source,
                                 recorded_by)
    VALUES (t, id, voucher._uuid_v7(), purpose, granted, source, voucher._actor_label());
    -- withdrawing the profile consent erases the profile (the id and redemptions stay)
    IF purpose = 'profile' AND NOT granted THEN
        erased := voucher._erase_profile(t, id);
    END IF;
    PERFORM voucher._audit(CASE WHEN granted THEN 'consent.granted' ELSE 'consent.withdrawn' END,
                           'customer', id::text,
                           jsonb_build_object('purpose', purpose, 'source', source,
                                              'before', before, 'erased', to_jsonb(erased)));
END
$$;
COMMENT ON FUNCTION voucher.set_consent(text, text, boolean, text) IS
    'Records a consent grant or withdrawal; withdrawing ''profile'' erases email, name and metadata.';

CREATE VIEW voucher.consents WITH (security_barrier) AS
SELECT DISTINCT ON (c.customer_id, c.purpose) c.customer_id, c.purpose, c.granted, c.at, c.source
  FROM voucher.consent c
 WHERE voucher._can_read('read_customers')
 ORDER BY c.customer_id, c.purpose, c.consent_id DESC;
COMMENT ON VIEW voucher.consents IS 'The current consent per customer and purpose.';

------------------------------------------------------------------------------------------------
-- Know: export
------------------------------------------------------------------------------------------------
-- Exporting reads (action export_customers, admin keys only), so it also runs on a hot standby
-- (or in a READ ONLY transaction), where its audit row cannot be written: there it exports
-- without an audit row ("audited": false in the document; src/privacy/standby.rs logs tenant and
-- key, not who), unless the caller passes allow_unaudited => false: then it refuses with 25006.
CREATE FUNCTION voucher.export_customer(source_id text, allow_unaudited boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t         uuid := voucher._authorize('export_customers');
    audited   boolean := current_setting('transaction_read_only') = 'off';
    id        uuid;
    consents  jsonb;
    reds      jsonb;
    events    jsonb;
BEGIN
    IF source_id IS NULL THEN
        RAISE EXCEPTION 'source_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT audited AND NOT coalesce(allow_unaudited, true) THEN
        RAISE EXCEPTION 'cannot audit a customer export %',
              CASE WHEN pg_is_in_recovery() THEN 'on a hot standby' ELSE 'in a read-only transaction' END
            USING ERRCODE = '25006',
                  HINT = 'run export_customer on the primary (in a read-write transaction), or leave '
                         'allow_unaudited at true to export here without an audit row';
    END IF;
    id := voucher._customer_by_source(t, source_id);
    IF id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(jsonb_agg(x.doc ORDER BY x.purpose), '[]') INTO consents
      FROM (SELECT c.purpose,
                   jsonb_build_object(
                       'purpose', c.purpose,
                       'granted', (array_agg(c.granted ORDER BY c.consent_id DESC))[1],
                       'history', jsonb_agg(jsonb_build_object('granted', c.granted, 'at', c.at,
                                                               'source', c.source,
                                                               'recorded_by', c.recorded_by)
                                            ORDER BY c.consent_id)) AS doc
              FROM voucher.consent c WHERE c.tenant_id = t AND c.customer_id = id
             GROUP BY c.purpose) x;
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'redemption_id', r.redemption_id, 'code', coalesce(v.display, v.code),
               'campaign_id', r.campaign_id, 'campaign', ca.name, 'order_id', r.order_id,
               'order_amount', r.order_amount, 'amount', r.amount, 'discount', r.discount,
               'balance_after', r.balance_after,
               'metadata', encode(r.metadata, 'hex'),   -- decrypted below
               'redeemed_at', r.redeemed_at,
               'status', CASE WHEN r.rolled_back_at IS NULL THEN 'redeemed' ELSE 'rolled back' END,
               'rolled_back_at', r.rolled_back_at, 'rollback_reason', r.rollback_reason)
             ORDER BY r.redeemed_at, r.redemption_id), '[]') INTO reds
      FROM voucher.redemption r
      JOIN voucher.code v ON v.tenant_id = r.tenant_id AND v.voucher_id = r.voucher_id
      JOIN voucher.campaign ca ON ca.tenant_id = r.tenant_id AND ca.campaign_id = r.campaign_id
     WHERE r.tenant_id = t AND r.customer_id = id;
    -- (scale) the metadata decrypted in a statement that reads no table: on a Citus cluster the
    -- one above runs on the customer's shard, and only the coordinator can decrypt
    SELECT coalesce(jsonb_agg(x.e || jsonb_build_object('metadata',
               voucher._decrypt('redemption', 'metadata', (x.e ->> 'redemption_id')::uuid,
                                decode(x.e ->> 'metadata', 'hex'))::jsonb) ORDER BY x.n), '[]')
      INTO reds FROM jsonb_array_elements(reds) WITH ORDINALITY x(e, n);
    -- what an audit row holds about the customer under its own key, decrypted
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'event_id', e.event_id, 'at', e.at, 'action', e.action,
               'object_type', e.object_type, 'object_id', e.object_id,
               'details', CASE WHEN e.details -> 'customer' ? 'personal'
                               THEN jsonb_set(e.details, '{customer,personal}',
                                    coalesce(voucher._open_personal(t, id,
                                                 e.details -> 'customer' ->> 'personal'), 'null'))
                               ELSE e.details END)
             ORDER BY e.event_id), '[]') INTO events
      FROM voucher._customer_events(t, id) e;
    -- the export is audited: which customer (its pseudonymous id) and how much, no contents
    IF audited THEN
        PERFORM voucher._audit('customer.exported', 'customer', id::text,
            jsonb_build_object('consents', jsonb_array_length(consents),
                               'redemptions', jsonb_array_length(reds),
                               'audit_events', jsonb_array_length(events)));
    ELSE
        PERFORM voucher._log_unaudited_export();   -- the server log: tenant and key, no customer
    END IF;
    RETURN jsonb_build_object(
        'format', 'voucher_ext.customer_export/1',
        'exported_at', now(),
        'audited', audited,
        'tenant_id', t,
        'customer', voucher._customer_profile(t, id),
        'consents', consents,
        'redemptions', reds,
        'audit_events', events);
END
$$;
COMMENT ON FUNCTION voucher.export_customer(text, boolean) IS
    'Everything the tenant holds about a customer, as one jsonb document (voucher_ext.customer_export/1).';

------------------------------------------------------------------------------------------------
-- Forget
------------------------------------------------------------------------------------------------

-- Forgets one customer of tenant t (locked by the caller): returns the counts per kind.
CREATE FUNCTION voucher._forget(t uuid, id uuid, reason text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
#variable_conflict use_variable
DECLARE
    n_red     bigint;
    n_cons    bigint;
    n_events  bigint;
    result    jsonb;
BEGIN
    SELECT count(*) INTO n_events FROM voucher._customer_events(t, id);
    -- personal data in redemptions: their metadata; the rows stay (counts, limits and
    -- statistics), under the pseudonymous customer id
    SELECT count(*) INTO n_red FROM voucher.redemption r WHERE r.tenant_id = t AND r.customer_id = id;
    UPDATE voucher.redemption r SET metadata = NULL, key_id = NULL
     WHERE r.tenant_id = t AND r.customer_id = id AND r.metadata IS NOT NULL;
    DELETE FROM voucher.consent c WHERE c.tenant_id = t AND c.customer_id = id;
    GET DIAGNOSTICS n_cons = ROW_COUNT;
    PERFORM voucher._pseudonymize(t, id);
    result := jsonb_build_object('profile', 1, 'redemptions', n_red, 'consents', n_cons,
                                 'audit_events', n_events);
    -- says that a customer was forgotten, and how much, not who
    PERFORM voucher._audit('customer.forgotten', 'customer', NULL,
                           result || jsonb_build_object('reason', reason));
    RETURN result;
END
$$;

CREATE FUNCTION voucher.forget_customer(source_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t   uuid := voucher._authorize('administer');
    id  uuid;
BEGIN
    IF source_id IS NULL THEN
        RAISE EXCEPTION 'source_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    id := voucher._customer_by_source(t, source_id);
    IF id IS NULL THEN
        RETURN NULL;
    END IF;
    -- FOR UPDATE: a redemption that looked the customer up waits, and then finds it gone
    PERFORM 1 FROM voucher.customer c
     WHERE c.tenant_id = t AND c.customer_id = id AND c.forgotten_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;   -- forgotten meanwhile
    END IF;
    RETURN voucher._forget(t, id, 'request');
END
$$;
COMMENT ON FUNCTION voucher.forget_customer(text) IS
    'Erases a customer''s personal data for good; its redemptions stay under a pseudonymous id.';

------------------------------------------------------------------------------------------------
-- Retention
------------------------------------------------------------------------------------------------

-- Forgets up to batch_size customers of tenant t without activity (profile change, redemption,
-- consent) for longer than its customer_retention_days; returns how many (0: none left, or
-- retention is off). Run by forget_inactive_customers (an admin key's own tenant) and by
-- voucher.run_customer_retention (src/privacy/retention.rs: operators, every tenant, each under
-- its own context); row-level security keeps it to the context's tenant.
CREATE FUNCTION voucher._forget_inactive(t uuid, batch_size integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    days    integer;
    cutoff  timestamptz;
    c       record;
    n       bigint := 0;
BEGIN
    days := voucher._privacy_setting(t, 'customer_retention_days')::integer;
    IF days = 0 THEN
        RETURN 0;
    END IF;
    cutoff := now() - make_interval(days => days);
    FOR c IN
        SELECT cu.customer_id FROM voucher.customer cu
         WHERE cu.tenant_id = t AND cu.forgotten_at IS NULL AND cu.updated_at < cutoff
           AND NOT EXISTS (SELECT 1 FROM voucher.redemption r
                            WHERE r.tenant_id = t AND r.customer_id = cu.customer_id
                              AND r.redeemed_at >= cutoff)
           AND NOT EXISTS (SELECT 1 FROM voucher.consent k
                            WHERE k.tenant_id = t AND k.customer_id = cu.customer_id
                              AND k.at >= cutoff)
         ORDER BY cu.updated_at
         LIMIT batch_size
           FOR UPDATE OF cu SKIP LOCKED
    LOOP
        PERFORM voucher._forget(t, c.customer_id, 'retention');
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- An admin key: one batch of its own tenant. Call it until it returns 0, e.g. every few minutes
-- from a scheduler; for every tenant at once see voucher.run_customer_retention (operators).
CREATE FUNCTION voucher.forget_inactive_customers(batch_size integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    t  uuid := voucher._authorize('administer');
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 100000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    RETURN voucher._forget_inactive(t, batch_size);
END
$$;
COMMENT ON FUNCTION voucher.forget_inactive_customers(integer) IS
    'Forgets a batch of customers inactive for longer than the tenant''s customer_retention_days.';
-- end privacy -------------------------------------------------------------------------------

-- begin scale (issue 18) -------------------------------------------------------------------
CREATE FUNCTION voucher."distribute"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'distribute_wrapper';
REVOKE ALL ON FUNCTION voucher."distribute"() FROM PUBLIC;

-- create_campaign reads its audit details before calling _audit (on a Citus cluster, the
-- one-statement form would run _audit on a shard)
CREATE OR REPLACE FUNCTION voucher.create_campaign(
    name                text,
    kind                text        DEFAULT 'discount',
    discount_type       text        DEFAULT NULL,
    discount_value      numeric     DEFAULT NULL,
    max_discount        numeric     DEFAULT NULL,
    gift_balance        numeric     DEFAULT NULL,
    currency            text        DEFAULT NULL,
    starts_at           timestamptz DEFAULT NULL,
    expires_at          timestamptz DEFAULT NULL,
    redemption_limit    integer     DEFAULT 1,
    per_customer_limit  integer     DEFAULT NULL,
    min_order_amount    numeric     DEFAULT NULL,
    code_pattern        text        DEFAULT '########',
    code_charset        text        DEFAULT 'unambiguous',
    code_prefix         text        DEFAULT '',
    code_postfix        text        DEFAULT '',
    code_check_char     boolean     DEFAULT false,
    metadata            jsonb       DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t      uuid := voucher._authorize('manage_campaigns');
    id     uuid := voucher._uuid_v7();
    shape  text;
    settings jsonb;
    vtype  text := lower(discount_type);
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'campaign name must not be NULL' USING ERRCODE = '22004';
    ELSIF btrim(name) = '' THEN
        RAISE EXCEPTION 'campaign name must not be empty' USING ERRCODE = '22023';
    ELSIF length(name) > 200 THEN
        RAISE EXCEPTION 'campaign name is longer than 200 characters' USING ERRCODE = '22023';
    ELSIF kind IS NULL OR kind NOT IN ('discount', 'gift_card') THEN
        RAISE EXCEPTION 'unknown campaign kind "%"', kind USING ERRCODE = '22023',
            HINT = 'kind is discount or gift_card';
    ELSIF vtype IS NOT NULL AND vtype NOT IN ('percent', 'amount', 'fixed') THEN
        RAISE EXCEPTION 'unknown discount type "%"', discount_type USING ERRCODE = '22023',
            HINT = 'discount_type is percent, amount or fixed';
    END IF;
    PERFORM voucher._money(discount_value, 'discount_value'),
            voucher._money(max_discount, 'max_discount'),
            voucher._money(gift_balance, 'gift_balance'),
            voucher._money(min_order_amount, 'min_order_amount');
    IF kind = 'gift_card' THEN
        IF vtype IS NOT NULL OR discount_value IS NOT NULL OR max_discount IS NOT NULL THEN
            RAISE EXCEPTION 'a gift card campaign takes gift_balance, not a discount'
                USING ERRCODE = '22023';
        ELSIF gift_balance IS NULL OR gift_balance = 0 THEN
            RAISE EXCEPTION 'a gift card campaign needs a positive gift_balance' USING ERRCODE = '22023';
        END IF;
    ELSE
        IF gift_balance IS NOT NULL THEN
            RAISE EXCEPTION 'gift_balance applies to gift card campaigns only' USING ERRCODE = '22023',
                HINT = 'pass kind => ''gift_card''';
        ELSIF vtype IS NULL AND (discount_value IS NOT NULL OR max_discount IS NOT NULL) THEN
            RAISE EXCEPTION 'discount_value needs a discount_type' USING ERRCODE = '22023',
                HINT = 'discount_type is percent, amount or fixed';
        ELSIF vtype IS NOT NULL AND discount_value IS NULL THEN
            RAISE EXCEPTION 'discount_type % needs a discount_value', vtype USING ERRCODE = '22023';
        ELSIF vtype = 'percent' AND (discount_value = 0 OR discount_value > 100) THEN
            RAISE EXCEPTION 'a percent discount must be above 0 and at most 100' USING ERRCODE = '22023';
        ELSIF vtype = 'amount' AND discount_value = 0 THEN
            RAISE EXCEPTION 'an amount discount must be above 0' USING ERRCODE = '22023';
        ELSIF max_discount IS NOT NULL AND vtype IS DISTINCT FROM 'percent' THEN
            RAISE EXCEPTION 'max_discount caps percent discounts only' USING ERRCODE = '22023';
        END IF;
    END IF;
    IF currency IS NOT NULL AND upper(currency) !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'currency must be a three-letter ISO 4217 code' USING ERRCODE = '22023';
    ELSIF starts_at >= expires_at THEN
        RAISE EXCEPTION 'starts_at must be before expires_at' USING ERRCODE = '22023';
    ELSIF redemption_limit <= 0 THEN
        RAISE EXCEPTION 'redemption_limit must be positive' USING ERRCODE = '22023',
            HINT = 'NULL means unlimited';
    ELSIF per_customer_limit <= 0 THEN
        RAISE EXCEPTION 'per_customer_limit must be positive' USING ERRCODE = '22023',
            HINT = 'NULL means unlimited';
    ELSIF metadata IS NOT NULL AND jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = '22023';
    ELSIF pg_column_size(metadata) > 65536 THEN
        RAISE EXCEPTION 'metadata is larger than 64 kB' USING ERRCODE = '22023';
    END IF;
    -- the tenant's row FOR KEY SHARE, the lock a foreign key's check took (sql/tenancy.sql)
    PERFORM FROM voucher.tenant WHERE tenant_id = t FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such tenant' USING ERRCODE = '22023';
    END IF;
    shape := voucher._code_shape(coalesce(code_pattern, '########'),
                                 coalesce(code_charset, 'unambiguous'),
                                 coalesce(code_prefix, ''), coalesce(code_postfix, ''),
                                 coalesce(code_check_char, false));
    INSERT INTO voucher.campaign (
        tenant_id, campaign_id, name, kind, discount_type, discount_value, max_discount,
        gift_balance, currency, starts_at, expires_at, redemption_limit, per_customer_limit,
        min_order_amount, code_pattern, code_charset, code_prefix, code_postfix,
        code_check_char, code_shape, metadata, created_by)
    VALUES (
        t, id, btrim(name), kind, vtype, discount_value, max_discount,
        gift_balance, upper(currency), starts_at, expires_at, redemption_limit, per_customer_limit,
        min_order_amount, coalesce(code_pattern, '########'), coalesce(code_charset, 'unambiguous'),
        coalesce(code_prefix, ''), coalesce(code_postfix, ''), coalesce(code_check_char, false),
        shape, coalesce(metadata, '{}'), voucher._actor_label());
    -- read first, then audit: in one statement Citus would run _audit on the shard (src/scale)
    SELECT to_jsonb(c) - 'tenant_id' - 'campaign_id' - 'created_at' - 'created_by' INTO settings
      FROM voucher.campaign c WHERE c.tenant_id = t AND c.campaign_id = id;
    PERFORM voucher._audit('campaign.created', 'campaign', id::text, settings);
    RETURN id;
END
$$;
-- end scale -------------------------------------------------------------------------------

-- begin perf (issue 17: hot vouchers count their uses in slot rows) -------------------------
CREATE TABLE voucher.code_use (
    tenant_id   uuid      NOT NULL,
    voucher_id  uuid      NOT NULL,
    slot        smallint  NOT NULL CHECK (slot >= 0 AND slot < 16),
    used        integer   NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, voucher_id, slot)
) WITH (fillfactor = 50);
COMMENT ON TABLE voucher.code_use IS
    'Uses of a voucher without a limit, counted in 16 slots so that concurrent redemptions do not queue on one row.';
ALTER TABLE voucher.code_use ENABLE ROW LEVEL SECURITY;
ALTER TABLE voucher.code_use FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON voucher.code_use
    USING (tenant_id = (SELECT voucher.current_tenant()))
    WITH CHECK (tenant_id = (SELECT voucher.current_tenant()));
CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.code_use FOR EACH ROW
    WHEN (current_user <> 'voucher_definer') EXECUTE FUNCTION voucher._audit_direct_dml();
CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.code_use
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_direct_truncate();
ALTER TABLE voucher.redemption ADD COLUMN use_slot smallint;
COMMENT ON COLUMN voucher.redemption.use_slot IS
    'The voucher.code_use slot this use was counted in; NULL: the voucher''s own redeemed_count.';
-- the counters' checks as domains (sql/codes.sql says why). The view reads the columns, so it
-- is made again; the domains get their checks after the columns have their types, so that the
-- type change rewrites nothing (ALTER DOMAIN ADD CONSTRAINT then checks the rows in one scan).
DROP VIEW voucher.vouchers;
CREATE DOMAIN voucher.use_count AS integer;
CREATE DOMAIN voucher.balance_left AS numeric;
ALTER TABLE voucher.code
    DROP CONSTRAINT code_redeemed_count_check,
    DROP CONSTRAINT code_balance_check,
    ALTER COLUMN redeemed_count TYPE voucher.use_count,
    ALTER COLUMN balance TYPE voucher.balance_left;
ALTER DOMAIN voucher.use_count ADD CONSTRAINT code_redeemed_count_check CHECK (VALUE >= 0);
ALTER DOMAIN voucher.balance_left ADD CONSTRAINT code_balance_check CHECK (VALUE >= 0);
CREATE VIEW voucher.vouchers WITH (security_barrier) AS
SELECT v.voucher_id AS id, coalesce(v.display, v.code) AS code, v.code AS canonical_code,
       v.campaign_id, c.name AS campaign, c.kind, v.active AND c.active AS active,
       v.redeemed_count + u.used AS redeemed_count, c.redemption_limit,
       c.redemption_limit - v.redeemed_count - u.used AS remaining_uses,
       v.balance, c.currency, c.starts_at, c.expires_at, v.created_at
  FROM voucher.code v
  JOIN voucher.campaign c ON c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
  CROSS JOIN LATERAL (SELECT coalesce(sum(x.used), 0)::integer AS used FROM voucher.code_use x
                       WHERE x.tenant_id = v.tenant_id AND x.voucher_id = v.voucher_id) u
 WHERE voucher._can_read('read_catalog');
COMMENT ON VIEW voucher.vouchers IS 'The tenant''s vouchers with their remaining uses and balances.';
CREATE OR REPLACE FUNCTION voucher.rollback_redemption(
    INOUT redemption_id  uuid,
    reason               text DEFAULT NULL,
    OUT voucher_id       uuid,
    OUT restored         numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its statements are planned once per backend and kept: planned without sequential scans, a
-- table analyzed while nearly empty cannot leave it a plan that scans every redemption
-- (issue 17, notes/issue-17-seqscan); the redemption's own look-ups see below
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t         uuid := voucher._authorize('redeem');
    r         record;
    n         bigint;
    found_it  boolean;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL' USING ERRCODE = '22004';
    ELSIF length(reason) > 500 THEN
        RAISE EXCEPTION 'reason is longer than 500 characters' USING ERRCODE = '22023';
    END IF;
    -- The redemption by its primary key, planned at each call (EXECUTE): on a table never
    -- analyzed every index of voucher.redemption leads with tenant_id and all estimate one row,
    -- so a kept plan made while the table was small could walk all the tenant's redemptions by
    -- another index (redemption_time_idx) until the first ANALYZE (issue 17,
    -- notes/issue-17-traps). Planned now, the table's real size makes the primary key win.
    EXECUTE 'UPDATE voucher.redemption x
                SET rolled_back_at = now(), rollback_reason = $3,
                    rolled_back_by = voucher._actor_label()
              WHERE x.tenant_id = $1 AND x.redemption_id = $2 AND x.rolled_back_at IS NULL
             RETURNING x.voucher_id, x.campaign_id, x.customer_id, x.amount, x.use_slot'
       INTO r USING t, $1, $2;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM voucher.redemption x
                                 WHERE x.tenant_id = $1 AND x.redemption_id = $2)'
           INTO found_it USING t, $1;
        IF found_it THEN
            PERFORM voucher._raise('VC010');
        ELSE
            PERFORM voucher._raise('VC013');
        END IF;
    END IF;
    IF r.customer_id IS NOT NULL THEN
        UPDATE voucher.customer_usage u SET used = u.used - 1
         WHERE u.tenant_id = t AND u.campaign_id = r.campaign_id AND u.customer_id = r.customer_id
           AND u.used > 0;
    END IF;
    IF r.use_slot IS NULL THEN
        UPDATE voucher.code v
           SET redeemed_count = v.redeemed_count - 1, balance = v.balance + r.amount
         WHERE v.tenant_id = t AND v.voucher_id = r.voucher_id;
    ELSE
        -- the use was counted in a slot (a hot voucher without a limit): give it back there
        UPDATE voucher.code_use u SET used = u.used - 1
         WHERE u.tenant_id = t AND u.voucher_id = r.voucher_id AND u.slot = r.use_slot;
    END IF;
    voucher_id := r.voucher_id;
    restored := coalesce(r.amount, 0);
    PERFORM voucher._audit('redemption.rolled_back', 'redemption', $1::text,
        jsonb_build_object('voucher_id', r.voucher_id, 'restored', restored, 'reason', $2));
END
$$;
-- issue 17, the kept plans of the 0.1.0 functions that look rows up by key: planned without
-- sequential scans, as the fresh install declares them (notes/issue-17-traps)
ALTER FUNCTION voucher.set_voucher_active(text, boolean) SET enable_seqscan = off;
ALTER FUNCTION voucher.set_campaign_active(uuid, boolean) SET enable_seqscan = off;
ALTER FUNCTION voucher.set_campaign_active(uuid, boolean) SET plan_cache_mode = force_custom_plan;
ALTER FUNCTION voucher.revoke_api_key(uuid) SET enable_seqscan = off;
ALTER FUNCTION voucher.set_audit_retention(interval) SET enable_seqscan = off;
-- issue 17, later: no foreign keys from voucher.redemption (integrity against direct DML kept by
-- triggers, see sql/redeem.sql), and the idempotency key's unique index only where there is one
ALTER TABLE voucher.redemption
    DROP CONSTRAINT redemption_tenant_id_voucher_id_fkey,
    DROP CONSTRAINT redemption_tenant_id_customer_id_fkey,
    DROP CONSTRAINT redemption_tenant_id_idempotency_key_key;
-- nor from voucher.customer_usage (later still; the same triggers keep its integrity)
ALTER TABLE voucher.customer_usage
    DROP CONSTRAINT customer_usage_tenant_id_campaign_id_fkey,
    DROP CONSTRAINT customer_usage_tenant_id_customer_id_fkey;
CREATE UNIQUE INDEX redemption_idempotency_key_idx ON voucher.redemption (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE FUNCTION voucher._redemptions_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: rows truncated in the same statement are gone by now
        IF TG_TABLE_NAME IN ('code', 'customer')
           AND EXISTS (SELECT FROM voucher.redemption r
                        WHERE TG_TABLE_NAME = 'code' OR r.customer_id IS NOT NULL) THEN
            RAISE EXCEPTION 'cannot truncate voucher.% while voucher.redemption names its rows',
                TG_TABLE_NAME USING ERRCODE = '0A000',
                HINT = 'truncate voucher.redemption in the same statement';
        ELSIF TG_TABLE_NAME = 'code' AND EXISTS (SELECT FROM voucher.code_use) THEN
            RAISE EXCEPTION 'cannot truncate voucher.code while voucher.code_use names its rows'
                USING ERRCODE = '0A000', HINT = 'truncate voucher.code_use in the same statement';
        ELSIF TG_TABLE_NAME IN ('customer', 'campaign')
              AND EXISTS (SELECT FROM voucher.customer_usage) THEN
            RAISE EXCEPTION 'cannot truncate voucher.% while voucher.customer_usage names its rows',
                TG_TABLE_NAME USING ERRCODE = '0A000',
                HINT = 'truncate voucher.customer_usage in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME IN ('redemption', 'code_use') THEN
        -- a redemption, and a hot voucher's use slot, name a voucher; a redemption maybe a customer
        -- (a nested IF: code_use has no customer_id, and NEW.customer_id is resolved when reached)
        IF NOT EXISTS (SELECT FROM voucher.code v WHERE v.tenant_id = NEW.tenant_id
                          AND v.voucher_id = NEW.voucher_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.%: no such voucher', TG_TABLE_NAME USING ERRCODE = '23503';
        ELSIF TG_TABLE_NAME = 'redemption' THEN
            IF NEW.customer_id IS NOT NULL
               AND NOT EXISTS (SELECT FROM voucher.customer c WHERE c.tenant_id = NEW.tenant_id
                                  AND c.customer_id = NEW.customer_id FOR KEY SHARE) THEN
                RAISE EXCEPTION 'voucher.redemption: no such customer' USING ERRCODE = '23503';
            END IF;
        END IF;
    ELSIF TG_TABLE_NAME = 'customer_usage' THEN
        IF NOT EXISTS (SELECT FROM voucher.campaign c WHERE c.tenant_id = NEW.tenant_id
                          AND c.campaign_id = NEW.campaign_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.customer_usage: no such campaign' USING ERRCODE = '23503';
        ELSIF NOT EXISTS (SELECT FROM voucher.customer c WHERE c.tenant_id = NEW.tenant_id
                             AND c.customer_id = NEW.customer_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.customer_usage: no such customer' USING ERRCODE = '23503';
        END IF;
    ELSIF TG_TABLE_NAME = 'code' THEN
        IF EXISTS (SELECT FROM voucher.redemption r
                    WHERE r.tenant_id = OLD.tenant_id AND r.voucher_id = OLD.voucher_id) THEN
            RAISE EXCEPTION 'voucher.code: redemptions name this voucher' USING ERRCODE = '23503';
        ELSIF EXISTS (SELECT FROM voucher.code_use u
                       WHERE u.tenant_id = OLD.tenant_id AND u.voucher_id = OLD.voucher_id) THEN
            RAISE EXCEPTION 'voucher.code: use counters name this voucher' USING ERRCODE = '23503';
        END IF;
    ELSIF TG_TABLE_NAME = 'campaign' THEN
        IF EXISTS (SELECT FROM voucher.customer_usage u
                    WHERE u.tenant_id = OLD.tenant_id AND u.campaign_id = OLD.campaign_id) THEN
            RAISE EXCEPTION 'voucher.campaign: per-customer counters name this campaign'
                USING ERRCODE = '23503';
        END IF;
    ELSIF EXISTS (SELECT FROM voucher.redemption r
                   WHERE r.tenant_id = OLD.tenant_id AND r.customer_id = OLD.customer_id) THEN
        RAISE EXCEPTION 'voucher.customer: redemptions name this customer' USING ERRCODE = '23503';
    ELSIF EXISTS (SELECT FROM voucher.customer_usage u
                   WHERE u.tenant_id = OLD.tenant_id AND u.customer_id = OLD.customer_id) THEN
        RAISE EXCEPTION 'voucher.customer: per-customer counters name this customer'
            USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_refs AFTER UPDATE OF tenant_id, voucher_id, customer_id ON voucher.redemption
    FOR EACH ROW WHEN (current_user <> 'voucher_definer')
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER UPDATE OF tenant_id, campaign_id, customer_id ON voucher.customer_usage
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id
                       OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER UPDATE OF tenant_id, voucher_id ON voucher.code_use
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.voucher_id <> NEW.voucher_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.code
    FOR EACH ROW EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id, voucher_id ON voucher.code
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.voucher_id <> NEW.voucher_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.code
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.customer
    FOR EACH ROW EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id, customer_id ON voucher.customer
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.customer
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._redemptions_keep_refs();
-- (voucher.campaign's own triggers, for its codes, are keep_refs* of sql/codes.sql)
CREATE TRIGGER keep_usage AFTER DELETE ON voucher.campaign
    FOR EACH ROW EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_usage_rekey AFTER UPDATE OF tenant_id, campaign_id ON voucher.campaign
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_usage_truncate AFTER TRUNCATE ON voucher.campaign
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._redemptions_keep_refs();
-- issue 17, generate_codes: no foreign key from voucher.code to voucher.campaign either (the
-- code-inserting functions key-share lock the campaign once; direct DML kept by triggers, see
-- sql/codes.sql)
ALTER TABLE voucher.code DROP CONSTRAINT code_tenant_id_campaign_id_fkey;
CREATE FUNCTION voucher._codes_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: codes truncated in the same statement are gone by now
        IF EXISTS (SELECT FROM voucher.code) THEN
            RAISE EXCEPTION 'cannot truncate voucher.campaign while voucher.code names its rows'
                USING ERRCODE = '0A000', HINT = 'truncate voucher.code in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME = 'code' THEN
        IF NOT EXISTS (SELECT FROM voucher.campaign c WHERE c.tenant_id = NEW.tenant_id
                          AND c.campaign_id = NEW.campaign_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.code: no such campaign' USING ERRCODE = '23503';
        END IF;
    ELSIF EXISTS (SELECT FROM voucher.code v
                   WHERE v.tenant_id = OLD.tenant_id AND v.campaign_id = OLD.campaign_id) THEN
        RAISE EXCEPTION 'voucher.campaign: codes name this campaign' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.campaign
    FOR EACH ROW EXECUTE FUNCTION voucher._codes_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id, campaign_id ON voucher.campaign
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id)
    EXECUTE FUNCTION voucher._codes_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.campaign
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._codes_keep_refs();
CREATE TRIGGER keep_campaign AFTER UPDATE OF tenant_id, campaign_id ON voucher.code
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id)
    EXECUTE FUNCTION voucher._codes_keep_refs();
-- the details of a redemption's audit row, built in Rust (src/redeem/details.rs)
CREATE FUNCTION voucher."_redemption_details"(
	"redemption_id" uuid, /* Option < pgrx :: Uuid > */
	"campaign_id" uuid, /* Option < pgrx :: Uuid > */
	"customer_id" uuid, /* Option < pgrx :: Uuid > */
	"order_id" TEXT, /* Option < & str > */
	"order_amount" NUMERIC, /* Option < AnyNumeric > */
	"amount" NUMERIC, /* Option < AnyNumeric > */
	"discount" NUMERIC, /* Option < AnyNumeric > */
	"balance_after" NUMERIC, /* Option < AnyNumeric > */
	"idempotency_key" TEXT /* Option < & str > */
) RETURNS jsonb /* Jsonb */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'redemption_details_wrapper';
-- the one-statement claims' rules, judged in Rust (src/redeem/statements.rs)
CREATE FUNCTION voucher."_claimable"(
	"starts_at" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"expires_at" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"redemption_limit" INT, /* Option < i32 > */
	"redeemed_count" INT, /* Option < i32 > */
	"min_order_amount" NUMERIC, /* Option < AnyNumeric > */
	"per_customer_limit" INT, /* Option < i32 > */
	"kind" TEXT, /* Option < & str > */
	"balance" NUMERIC, /* Option < AnyNumeric > */
	"discount_type" TEXT, /* Option < & str > */
	"order_amount" NUMERIC, /* Option < AnyNumeric > */
	"amount" NUMERIC, /* Option < AnyNumeric > */
	"spread" bool /* Option < bool > */
) RETURNS bool /* bool */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'claimable_wrapper';
-- the direct-DML audit triggers' condition as a function call (sql/audit.sql says why)
CREATE FUNCTION voucher."_by_definer"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'by_definer_wrapper';
DO $triggers$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT t.tgrelid::regclass AS rel FROM pg_catalog.pg_trigger t
              WHERE t.tgname = 'audit_direct_dml'
                AND t.tgfoid = 'voucher._audit_direct_dml()'::pg_catalog.regprocedure LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER audit_direct_dml ON %s', r.rel);
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON %s FOR EACH ROW '
            'WHEN (NOT voucher._by_definer()) EXECUTE FUNCTION voucher._audit_direct_dml()', r.rel);
    END LOOP;
END
$triggers$;
-- end perf --------------------------------------------------------------------------------

-- Operations: the last foreign keys among the extension's tables go (pg_restore -j loads the
-- tables' data concurrently and ignores the keys' order among an extension's tables). Integrity
-- triggers keep what the keys did for direct DML (sql/tenancy.sql, sql/privacy.sql, and
-- voucher.code_use in _redemptions_keep_refs above); the functions that insert rows naming a
-- tenant read it FOR KEY SHARE first.
ALTER TABLE voucher.credential DROP CONSTRAINT credential_tenant_id_fkey;
ALTER TABLE voucher.campaign DROP CONSTRAINT campaign_tenant_id_fkey;
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
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.campaign
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.tenant_key
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.tenant_setting
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();

CREATE FUNCTION voucher._consent_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: consents truncated in the same statement are gone by now
        IF EXISTS (SELECT FROM voucher.consent) THEN
            RAISE EXCEPTION 'cannot truncate voucher.customer while voucher.consent names its rows'
                USING ERRCODE = '0A000', HINT = 'truncate voucher.consent in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME = 'consent' THEN
        IF NOT EXISTS (SELECT FROM voucher.customer c WHERE c.tenant_id = NEW.tenant_id
                          AND c.customer_id = NEW.customer_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.consent: no such customer' USING ERRCODE = '23503';
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM voucher.consent c
         WHERE c.tenant_id = OLD.tenant_id AND c.customer_id = OLD.customer_id;
    ELSIF EXISTS (SELECT FROM voucher.consent c
                   WHERE c.tenant_id = OLD.tenant_id AND c.customer_id = OLD.customer_id) THEN
        RAISE EXCEPTION 'voucher.customer: consents name this customer' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_consent AFTER DELETE ON voucher.customer
    FOR EACH ROW EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER keep_consent_rekey AFTER UPDATE OF tenant_id, customer_id ON voucher.customer
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER keep_consent_truncate AFTER TRUNCATE ON voucher.customer
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._consent_keep_refs();
CREATE TRIGGER keep_customer AFTER UPDATE OF tenant_id, customer_id ON voucher.consent
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._consent_keep_refs();

-- (other capabilities of 0.2.0: add your sections here)

-- pg_dump: every table and sequence of the extension, including the ones added above ---------
SELECT voucher._ops_mark_for_dump();

-- privileges: as sql/finalize.sql ------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA voucher FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA voucher FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA voucher FROM PUBLIC;
GRANT CREATE ON SCHEMA voucher TO voucher_definer;
DO $own$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS f FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'voucher'::regnamespace AND p.prosecdef
                -- the integrity triggers that replace the foreign keys among our tables see every
                -- tenant's rows, as the keys' checks did (sql/redeem.sql, sql/codes.sql,
                -- sql/tenancy.sql, sql/privacy.sql): they stay the extension owner's (a superuser)
                AND p.oid <> ALL (ARRAY['voucher._redemptions_keep_refs()',
                                        'voucher._codes_keep_refs()',
                                        'voucher._tenant_keep_refs()',
                                        'voucher._consent_keep_refs()']::pg_catalog.regprocedure[])
                AND p.proowner <> 'voucher_definer'::regrole LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO voucher_definer', r.f);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS v FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'v'
                AND c.relowner <> 'voucher_definer'::regrole LOOP
        EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO voucher_definer', r.v);
    END LOOP;
END
$own$;
REVOKE CREATE ON SCHEMA voucher FROM voucher_definer;

GRANT SELECT, INSERT, DELETE, UPDATE (value, updated_at, updated_by) ON voucher.tenant_setting
    TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (used) ON voucher.code_use TO voucher_definer;
GRANT EXECUTE ON FUNCTION
    voucher.validate(text, text, numeric, text),
    voucher.redeem(text, text, numeric, numeric, text, text, jsonb, text),
    voucher.configure(text, text),
    voucher.unlock(text, text),
    voucher.lockout_fingerprint(text, text)
TO voucher_client;
GRANT SELECT ON voucher.settings, voucher.lockouts TO voucher_client;
-- crypto
GRANT SELECT, INSERT, UPDATE (key_id, source_id, email, email_index, name, metadata, updated_at,
                               audit_key)
    ON voucher.customer TO voucher_definer;
GRANT UPDATE (key_id, metadata) ON voucher.redemption TO voucher_definer;
GRANT EXECUTE ON FUNCTION
    voucher.upsert_customer(text, text, text, jsonb),
    voucher.find_customer(text),
    voucher.rotate_data_key(integer),
    voucher.destroy_retired_keys(interval)
TO voucher_client;
GRANT SELECT ON voucher.customers, voucher.redemptions, voucher.tenant_keys, voucher.vouchers
    TO voucher_client;
GRANT EXECUTE ON FUNCTION voucher._decrypt(text, text, uuid, bytea)
    TO voucher_client, voucher_operator, voucher_definer;
GRANT EXECUTE ON FUNCTION voucher._throttle_capacity(), voucher.key_fingerprints() TO voucher_operator;
GRANT EXECUTE ON FUNCTION voucher._settings_changed() TO voucher_definer;
GRANT EXECUTE ON FUNCTION voucher._setting_registry(), voucher._lockouts()
    TO voucher_client, voucher_operator, voucher_definer;
-- privacy
GRANT SELECT, INSERT, DELETE ON voucher.consent TO voucher_definer;
GRANT UPDATE (source_index, forgotten_at) ON voucher.customer TO voucher_definer;
GRANT EXECUTE ON FUNCTION
    voucher._customer_by_source(uuid, text),
    voucher._open_personal(uuid, uuid, text),
    voucher._pseudonymize(uuid, uuid),
    voucher._log_unaudited_export(),
    voucher._audit_customer(jsonb),
    voucher.upsert_customer(text, text, text, jsonb)
TO voucher_definer;
GRANT EXECUTE ON FUNCTION
    voucher.set_consent(text, text, boolean, text),
    voucher.export_customer(text, boolean),
    voucher.forget_customer(text),
    voucher.forget_inactive_customers(integer)
TO voucher_client;
GRANT EXECUTE ON FUNCTION voucher.run_customer_retention(integer) TO voucher_operator;
GRANT SELECT ON voucher.consents TO voucher_client;
-- perf (src/redeem/details.rs, src/redeem/statements.rs; the direct-DML audit triggers' WHEN,
-- src/tenancy/definer.rs)
GRANT EXECUTE ON FUNCTION
    voucher._redemption_details(uuid, uuid, uuid, text, numeric, numeric, numeric, numeric, text),
    voucher._claimable(timestamptz, timestamptz, integer, integer, numeric, integer, text, numeric,
                       text, numeric, numeric, boolean),
    voucher._by_definer()
TO voucher_definer;
