-- Run by voucher.distribute() (src/scale/cluster.rs), on the coordinator only: every view that
-- checks voucher._can_read is re-pointed at a SECURITY DEFINER function owned by
-- voucher_definer. Citus runs shard queries as the current user, and a client reading a view is
-- the current user there (the view owner lends its privileges on the coordinator only): the
-- workers would refuse it the shard tables, on which clients hold no privilege. The function
-- checks _can_read first (on the coordinator, which also ships the tenant context to the
-- workers), then runs the view's own query with that check replaced by true (PostgreSQL 15
-- cannot distribute an outer join with a pseudo-constant qual).
--
-- The views that decrypt (customers, redemptions) read the ciphertexts from the shards and
-- decrypt them here, row by row: Citus sends the functions of a query's target list to the
-- shards with it, and a worker can neither decrypt (the master key stays on the coordinator)
-- nor read the tenant's keys from inside a shard query.
DO $views$
DECLARE
    v record;
    action text;
    body text;
    cols text;
    list text;
    fn text;
    -- the views whose query cannot run as it is on a cluster, with the body that replaces it
    replaced constant jsonb := jsonb_build_object(
        'customers', $b$
            FOR x IN SELECT c.customer_id, c.source_id, c.email, c.name, c.metadata,
                            c.created_at, c.updated_at, c.forgotten_at
                       FROM voucher.customer c LOOP
                RETURN QUERY SELECT x.customer_id,
                    voucher._decrypt('customer', 'source_id', x.customer_id, x.source_id),
                    voucher._decrypt('customer', 'email', x.customer_id, x.email),
                    voucher._decrypt('customer', 'name', x.customer_id, x.name),
                    coalesce(voucher._decrypt('customer', 'metadata', x.customer_id,
                                              x.metadata)::jsonb, '{}'::jsonb),
                    x.created_at, x.updated_at, x.forgotten_at;
            END LOOP;$b$,
        'redemptions', $b$
            FOR x IN SELECT r.redemption_id, r.voucher_id, coalesce(v.display, v.code) AS code,
                            r.campaign_id, cu.customer_id AS cu_id, cu.source_id AS cu_source,
                            r.order_id, r.order_amount, r.amount, r.discount, r.balance_after,
                            r.redeemed_at, r.redeemed_by, r.rolled_back_at, r.rollback_reason,
                            r.rolled_back_by, r.idempotency_key, r.metadata, r.customer_id
                       FROM voucher.redemption r
                       JOIN voucher.code v ON v.tenant_id = r.tenant_id AND v.voucher_id = r.voucher_id
                       LEFT JOIN voucher.customer cu
                         ON cu.tenant_id = r.tenant_id AND cu.customer_id = r.customer_id LOOP
                RETURN QUERY SELECT x.redemption_id, x.voucher_id, x.code, x.campaign_id,
                    voucher._decrypt('customer', 'source_id', x.cu_id, x.cu_source),
                    x.order_id, x.order_amount, x.amount, x.discount, x.balance_after,
                    CASE WHEN x.rolled_back_at IS NULL THEN 'redeemed' ELSE 'rolled back' END,
                    x.redeemed_at, x.redeemed_by, x.rolled_back_at, x.rollback_reason,
                    x.rolled_back_by, x.idempotency_key,
                    voucher._decrypt('redemption', 'metadata', x.redemption_id, x.metadata)::jsonb,
                    x.customer_id;
            END LOOP;$b$,
        -- a set-returning function outer-joined with a distributed table: Citus pulls the
        -- table to a sub-plan and runs the join on another node, where it fails; here the
        -- tenant's settings are read first, then joined with the registry locally
        'settings', $b$
            SELECT coalesce(jsonb_object_agg(s.setting, jsonb_build_object(
                       'value', s.value, 'updated_at', s.updated_at, 'updated_by', s.updated_by)),
                       '{}') INTO j
              FROM voucher.tenant_setting s;
            RETURN QUERY SELECT r.setting, coalesce(j -> r.setting ->> 'value', r.default_value),
                   r.default_value, (j -> r.setting ->> 'updated_at')::timestamptz,
                   j -> r.setting ->> 'updated_by', r.description
              FROM voucher._setting_registry() r;$b$);
BEGIN
    FOR v IN SELECT c.oid, c.relname FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'v'
                AND pg_catalog.pg_get_viewdef(c.oid) ~ '_can_read' ORDER BY c.relname LOOP
        action := substring(pg_catalog.pg_get_viewdef(v.oid) FROM '_can_read\(''(\w+)''');
        body := regexp_replace(pg_catalog.pg_get_viewdef(v.oid),
                               'voucher\._can_read\(''\w+''::text\)', 'true', 'g');
        body := 'RETURN QUERY ' || regexp_replace(body, ';\s*$', '') || ';';
        IF replaced ? v.relname::text THEN
            body := replaced ->> v.relname::text;
        ELSIF body ~ '_decrypt' THEN
            RAISE EXCEPTION 'view voucher.% decrypts: it needs a body in src/scale/views.sql',
                v.relname;
        END IF;
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
                          DECLARE
                              x record;
                              j jsonb;
                          BEGIN
                              IF NOT voucher._can_read(%L) THEN
                                  RETURN;
                              END IF;
                              %s
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
