-- Backups: every table and sequence of the extension is marked for pg_dump (a table added
-- without a mark would silently be left out of every dump: this lists it), with no filter, and
-- the install script inserts no row that a restore would bring back twice. The round trips
-- themselves are in tests/ops/dump_restore.sh.
SELECT c.oid::regclass AS not_marked_for_pg_dump
  FROM pg_class c
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'voucher_ext'
 WHERE c.relkind IN ('r', 'p', 'S') AND c.oid <> ALL (coalesce(x.extconfig, '{}'))
 ORDER BY 1;
SELECT count(*) > 0 AS some_marked,
       bool_and(coalesce(f, '') = '') AS no_filters
  FROM pg_extension x, unnest(x.extconfig, x.extcondition) AS u(r, f)
 WHERE x.extname = 'voucher_ext';
-- every marked table is empty right after CREATE EXTENSION (nothing restored twice; this file
-- runs right after setup, before any test writes)
CREATE FUNCTION pg_temp.rows_in(r regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s', r) INTO n;
    RETURN n;
END
$$;
SELECT r::regclass AS installed_with_rows
  FROM pg_extension x, unnest(x.extconfig) r
 WHERE x.extname = 'voucher_ext' AND (SELECT relkind FROM pg_class WHERE oid = r) = 'r' AND pg_temp.rows_in(r) > 0;
