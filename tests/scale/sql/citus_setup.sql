-- The Citus layer's data (tests/scale/citus.sh), on the coordinator of a coordinator and two
-- workers: login roles, two tenants placed on different workers, their keys and vouchers.
SET client_min_messages = warning;
SELECT count(*) AS workers FROM pg_dist_node WHERE groupid > 0;
-- every extension table is a Citus table: two reference tables, the rest co-located by tenant_id
SELECT logicalrelid::regclass AS table_name, partmethod,
       CASE WHEN partmethod = 'h' THEN column_to_column_name(logicalrelid, partkey) END AS distributed_by,
       colocationid = (SELECT colocationid FROM pg_dist_partition
                        WHERE logicalrelid = 'voucher.campaign'::regclass) AS colocated
  FROM pg_dist_partition WHERE logicalrelid::regclass::text LIKE 'voucher.%' ORDER BY 1::text;
SELECT voucher.distribute() AS distributing_again_does_nothing;
CREATE ROLE regress_op LOGIN IN ROLE voucher_operator;
CREATE ROLE regress_client LOGIN IN ROLE voucher_client;
-- t(sql): 'ok (N rows)' or 'SQLSTATE: message' of the error it raised
CREATE FUNCTION public.t(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE sql;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN 'ok (' || n || ' rows)';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION public.t(text) TO PUBLIC;
-- the node (port) holding a tenant's shard of the co-located group
CREATE FUNCTION public.tenant_port(tenant uuid) RETURNS int LANGUAGE sql AS $$
    SELECT nodeport FROM pg_dist_shard_placement
     WHERE shardid = get_shard_id_for_distribution_column('voucher.campaign', tenant)
$$;
CREATE TABLE public.citus_tenant (name text PRIMARY KEY, tenant uuid NOT NULL, port int NOT NULL,
                                  admin text, redeemer text, auditor text);
GRANT SELECT ON public.citus_tenant TO PUBLIC;
-- create tenants until two of them sit on different workers: call them a and b
DO $$
DECLARE
    t uuid;
BEGIN
    FOR i IN 1..64 LOOP
        t := voucher.create_tenant('tenant ' || i);
        IF NOT EXISTS (SELECT 1 FROM citus_tenant) THEN
            INSERT INTO citus_tenant (name, tenant, port) VALUES ('a', t, tenant_port(t));
        ELSIF NOT EXISTS (SELECT 1 FROM citus_tenant WHERE port = tenant_port(t)) THEN
            INSERT INTO citus_tenant (name, tenant, port) VALUES ('b', t, tenant_port(t));
            EXIT;
        END IF;
    END LOOP;
END
$$;
SELECT count(DISTINCT port) AS workers_holding_a_and_b FROM citus_tenant;
UPDATE citus_tenant SET admin = voucher.create_api_key('admin', tenant => tenant),
                        redeemer = voucher.create_api_key('redeemer', tenant => tenant),
                        auditor = voucher.create_api_key('auditor', tenant => tenant);
-- each tenant: a hot voucher (limit 100), a few codes and one redemption (customers:
-- citus_customers.sql)
CREATE FUNCTION public.setup_tenant(who text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    c uuid;
BEGIN
    SELECT * INTO r FROM citus_tenant WHERE name = who;
    PERFORM voucher.authenticate(r.admin);
    c := voucher.create_campaign('ten off ' || r.name, discount_type => 'amount',
                                 discount_value => 10, redemption_limit => 1);
    PERFORM voucher.add_code(c, upper(r.name) || '-' || n) FROM generate_series(1, 5) n;
    PERFORM voucher.add_code(voucher.create_campaign('hot ' || r.name, redemption_limit => 100),
                             'HOT-' || upper(r.name));
    PERFORM voucher.generate_codes(voucher.create_campaign('bulk ' || r.name), 2500);
    PERFORM voucher.redeem(upper(r.name) || '-1', order_amount => 30);
END
$$;
GRANT EXECUTE ON FUNCTION public.setup_tenant(text) TO PUBLIC;
SET ROLE regress_client;
SELECT setup_tenant('a');
SELECT setup_tenant('b');
RESET ROLE;
SELECT tenant AS a FROM citus_tenant WHERE name = 'a' \gset
SELECT tenant AS b FROM citus_tenant WHERE name = 'b' \gset
SELECT tenant_id = :'a' AS tenant_a, count(*) AS codes FROM voucher.code
 WHERE tenant_id IN (:'a', :'b') GROUP BY 1 ORDER BY 1 DESC;
-- one attempt of the race (tests/scale/citus_race.pgbench): VC004 under contention is counted
CREATE FUNCTION public.citus_attempt(code text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.redeem(code);
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'VC004' THEN
    RETURN SQLSTATE;
END
$$;
GRANT EXECUTE ON FUNCTION public.citus_attempt(text) TO PUBLIC;
