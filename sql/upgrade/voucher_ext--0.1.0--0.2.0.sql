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
    tenant_id   uuid        NOT NULL REFERENCES voucher.tenant ON DELETE CASCADE,
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
GRANT EXECUTE ON FUNCTION
    voucher.validate(text, text, numeric, text),
    voucher.redeem(text, text, numeric, numeric, text, text, jsonb, text),
    voucher.configure(text, text),
    voucher.unlock(text, text),
    voucher.lockout_fingerprint(text, text)
TO voucher_client;
GRANT SELECT ON voucher.settings, voucher.lockouts TO voucher_client;
GRANT EXECUTE ON FUNCTION voucher._throttle_capacity(), voucher.key_fingerprints() TO voucher_operator;
GRANT EXECUTE ON FUNCTION voucher._settings_changed() TO voucher_definer;
GRANT EXECUTE ON FUNCTION voucher._setting_registry(), voucher._lockouts()
    TO voucher_client, voucher_operator, voucher_definer;
