-- Row counts of every table of the extension and the value of every sequence, one line each,
-- sorted (superuser: row-level security does not filter). The backup and upgrade tests compare
-- this output before and after.
\set ON_ERROR_STOP on
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
    SELECT c.relname || ' ' || (xpath('/row/n/text()',
               query_to_xml(format(CASE c.relkind WHEN 'S'
                                   THEN 'SELECT last_value AS n FROM %s'
                                   ELSE 'SELECT count(*) AS n FROM %s' END, c.oid::regclass),
                            false, true, '')))[1]::text AS line
      FROM pg_class c
      JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
      JOIN pg_extension x ON x.oid = d.refobjid AND x.extname = 'voucher_ext'
     WHERE c.relkind IN ('r', 'p', 'S')) s;
