-- The extension's schema as sorted text lines, one object (or one property of one) per line,
-- for comparing an upgraded database with a fresh install (tests/ops/upgrade.sh). Covers
-- functions (signature, result, attributes, settings, owner, privileges, body), tables (options,
-- row-level security, owner, privileges), columns (in order), constraints, indexes, policies,
-- triggers, views, sequences, types, comments, membership of the extension and the tables marked
-- for pg_dump. OIDs and names of generated objects never appear, only their definitions.
\set ON_ERROR_STOP on
CREATE FUNCTION pg_temp.acl(a aclitem[]) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), '-') FROM unnest(a) x
$$;
WITH ns AS (SELECT 'voucher'::regnamespace AS oid),
ext AS (SELECT oid, extconfig FROM pg_extension WHERE extname = 'voucher_ext'),
lines AS (
    SELECT format('schema %s owner=%s acl=%s', n.nspname, n.nspowner::regrole, pg_temp.acl(n.nspacl)) AS line
      FROM pg_namespace n, ns WHERE n.oid = ns.oid
    UNION ALL
    SELECT format('function %s returns %s lang=%s vol=%s par=%s secdef=%s strict=%s set=%s owner=%s acl=%s body=%s',
                  p.oid::regprocedure, pg_get_function_result(p.oid), l.lanname, p.provolatile,
                  p.proparallel, p.prosecdef, p.proisstrict, p.proconfig, p.proowner::regrole,
                  pg_temp.acl(p.proacl),
                  CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END) AS line
      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, ns WHERE p.pronamespace = ns.oid
    UNION ALL
    SELECT format('function %s args %s', p.oid::regprocedure, pg_get_function_arguments(p.oid))
      FROM pg_proc p, ns WHERE p.pronamespace = ns.oid
    UNION ALL
    SELECT format('relation %s kind=%s owner=%s acl=%s rls=%s force=%s options=%s',
                  c.relname, c.relkind, c.relowner::regrole, pg_temp.acl(c.relacl),
                  c.relrowsecurity, c.relforcerowsecurity, c.reloptions)
      FROM pg_class c, ns WHERE c.relnamespace = ns.oid AND c.relkind <> 'i'
    UNION ALL
    SELECT format('column %s.%s #%s %s notnull=%s default=%s acl=%s', c.relname, a.attname,
                  row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid), pg_temp.acl(a.attacl))
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum, ns
     WHERE c.relnamespace = ns.oid AND c.relkind IN ('r', 'p', 'v', 'c')
    UNION ALL
    SELECT format('constraint %s %s %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
      FROM pg_constraint c, ns WHERE c.connamespace = ns.oid
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT format('policy %s.%s cmd=%s permissive=%s roles=%s using=%s check=%s', c.relname,
                  p.polname, p.polcmd, p.polpermissive,
                  (SELECT string_agg(CASE r WHEN 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY r)
                     FROM unnest(p.polroles) r),
                  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
      FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid, ns
     WHERE c.relnamespace = ns.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('view %s %s', c.relname, md5(pg_get_viewdef(c.oid)))
      FROM pg_class c, ns WHERE c.relnamespace = ns.oid AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s type=%s start=%s inc=%s cache=%s cycle=%s', s.seqrelid::regclass,
                  format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqcache, s.seqcycle)
      FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT format('type %s kind=%s', t.oid::regtype, t.typtype)
      FROM pg_type t, ns WHERE t.typnamespace = ns.oid AND t.typtype NOT IN ('b')
       AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
       AND t.typelem = 0
    UNION ALL
    SELECT format('comment %s %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), md5(d.description))
      FROM pg_description d
     WHERE (d.classoid = 'pg_proc'::regclass AND d.objoid IN (SELECT p.oid FROM pg_proc p, ns n WHERE p.pronamespace = n.oid))
        OR (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT c.oid FROM pg_class c, ns n WHERE c.relnamespace = n.oid))
        OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = (SELECT oid FROM ns))
    UNION ALL
    SELECT format('not a member of the extension: %s', pg_describe_object(x.classid, x.objid, 0))
      FROM (SELECT 'pg_proc'::regclass AS classid, p.oid AS objid FROM pg_proc p, ns WHERE p.pronamespace = ns.oid
            UNION ALL
            SELECT 'pg_class'::regclass, c.oid FROM pg_class c, ns
             WHERE c.relnamespace = ns.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'S')) x
     WHERE NOT EXISTS (SELECT 1 FROM pg_depend d, ext
                        WHERE d.classid = x.classid AND d.objid = x.objid AND d.deptype = 'e'
                          AND d.refobjid = ext.oid)
    UNION ALL
    SELECT format('marked for pg_dump: %s', r::regclass) FROM ext, unnest(ext.extconfig) r
)
SELECT line FROM lines ORDER BY line COLLATE "C";
