-- Run by voucher.distribute() (src/scale/cluster.rs), on the coordinator only: every view that
-- checks voucher._can_read is re-pointed at a SECURITY DEFINER function owned by
-- voucher_definer. Citus runs shard queries as the current user, and a client reading a view is
-- the current user there (the view owner lends its privileges on the coordinator only): the
-- workers would refuse it the shard tables, on which clients hold no privilege. The function
-- checks _can_read first (on the coordinator, which also ships the tenant context to the
-- workers), then runs the view's own query with that check replaced by true (PostgreSQL 15
-- cannot distribute an outer join with a pseudo-constant qual).
DO $views$
DECLARE
    v record;
    action text;
    body text;
    cols text;
    list text;
    fn text;
BEGIN
    FOR v IN SELECT c.oid, c.relname FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'v'
                AND pg_catalog.pg_get_viewdef(c.oid) ~ '_can_read' ORDER BY c.relname LOOP
        action := substring(pg_catalog.pg_get_viewdef(v.oid) FROM '_can_read\(''(\w+)''');
        body := regexp_replace(pg_catalog.pg_get_viewdef(v.oid),
                               'voucher\._can_read\(''\w+''::text\)', 'true', 'g');
        body := regexp_replace(body, ';\s*$', '');
        SELECT string_agg(format('%I %s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)),
                          ', ' ORDER BY a.attnum)
          INTO cols FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped;
        -- a function's result columns carry no collation: the view puts the column's back
        SELECT string_agg(CASE WHEN a.attcollation <> t.typcollation
                               THEN format('%I COLLATE %I.%I AS %I', a.attname, n.nspname, co.collname, a.attname)
                               ELSE quote_ident(a.attname) END, ', ' ORDER BY a.attnum)
          INTO list FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
          LEFT JOIN pg_catalog.pg_namespace n ON n.oid = co.collnamespace
         WHERE a.attrelid = v.oid AND a.attnum > 0 AND NOT a.attisdropped;
        fn := format('voucher.%I()', '_rows_' || v.relname);
        EXECUTE format($f$CREATE FUNCTION %s RETURNS TABLE (%s) LANGUAGE plpgsql STABLE
                          SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
                          #variable_conflict use_column
                          BEGIN
                              IF NOT voucher._can_read(%L) THEN
                                  RETURN;
                              END IF;
                              RETURN QUERY %s;
                          END
                          $body$$f$, fn, cols, action, body);
        EXECUTE format('ALTER EXTENSION voucher_ext ADD FUNCTION %s', fn);
        EXECUTE format('ALTER FUNCTION %s OWNER TO voucher_definer', fn);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO voucher_client, voucher_operator', fn);
        EXECUTE format('CREATE OR REPLACE VIEW voucher.%I WITH (security_barrier) AS SELECT %s FROM %s',
                       v.relname, list, fn);
    END LOOP;
END
$views$
