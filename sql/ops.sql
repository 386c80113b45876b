-- Operations: backups (src/ops/mod.rs explains the rest).
--
-- pg_dump leaves out the data of an extension's tables unless the extension marks them: every
-- table of the extension and its sequences are marked here, so a dump restores every row and the
-- next audit event id. The install script inserts no rows, so no filter is needed (nothing would
-- be restored twice). The order of the restored data follows the foreign keys between these
-- tables (pg_dump sorts marked tables by them; there is no cycle).
--
-- sql/finalize.sql, which runs after every other file, calls voucher._ops_mark_for_dump(), so
-- a table added by any capability is marked without further ado; upgrade scripts call it after
-- their DDL (it is idempotent). The ops_backup regression test lists any table or sequence of the
-- extension that is not marked, and tests/ops/dump_restore.sh proves the round trip.
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
