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

GRANT EXECUTE ON FUNCTION voucher.key_fingerprints() TO voucher_operator;
