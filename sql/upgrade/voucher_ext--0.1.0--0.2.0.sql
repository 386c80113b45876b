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
