-- Throughput set-up (tests/scale/tps.sh), the same on one node and on a Citus coordinator: two
-- tenants with 20,000 single-use codes each, and a shop: 500 customers and 100 multi-use codes
-- each; their redeemer keys and codes in local tables.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_key, bench_code;
CREATE TABLE bench_key (t int PRIMARY KEY, tenant uuid, admin text, redeemer text);
CREATE TABLE bench_code (t int, i int, code text, PRIMARY KEY (t, i));
-- on a Citus cluster the two tenants are placed on different workers (tenants are made until
-- the second one's shard is on another node than the first's)
DO $$
DECLARE
    t uuid;
    first_node int;
    node int;
BEGIN
    FOR i IN 1..64 LOOP
        t := voucher.create_tenant('bench ' || i);
        node := 0;
        IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
            EXECUTE $q$SELECT nodeport FROM pg_dist_shard_placement
                        WHERE shardid = get_shard_id_for_distribution_column('voucher.campaign', $1)$q$
               INTO node USING t;
        END IF;
        IF first_node IS NULL THEN
            INSERT INTO bench_key (t, tenant) VALUES (1, t);
            first_node := node;
        ELSIF node <> first_node OR node = 0 THEN
            INSERT INTO bench_key (t, tenant) VALUES (2, t);
            EXIT;
        END IF;
    END LOOP;
END
$$;
UPDATE bench_key SET admin = voucher.create_api_key('admin', tenant => tenant) WHERE t = 1;
UPDATE bench_key SET admin = voucher.create_api_key('admin', tenant => tenant) WHERE t = 2;
UPDATE bench_key SET redeemer = voucher.create_api_key('redeemer', tenant => tenant) WHERE t = 1;
UPDATE bench_key SET redeemer = voucher.create_api_key('redeemer', tenant => tenant) WHERE t = 2;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM bench_key ORDER BY t LOOP
        PERFORM voucher.authenticate(r.admin);
        PERFORM voucher.generate_codes(voucher.create_campaign('single use', redemption_limit => 1), 20000);
        INSERT INTO bench_code SELECT r.t, row_number() OVER (ORDER BY code), code
          FROM voucher.vouchers WHERE campaign = 'single use';
        -- the shop: 500 known customers (encrypted e-mail), 100 multi-use codes of a campaign
        -- that counts every customer's uses (per_customer_limit)
        PERFORM voucher.upsert_customer('customer-' || n, email => 'customer-' || n || '@shop.example')
           FROM generate_series(1, 500) n;
        PERFORM voucher.add_code(c, 'SHOP-' || r.t || '-' || n)
           FROM voucher.create_campaign('shop', discount_type => 'percent', discount_value => 10,
                                        redemption_limit => NULL, per_customer_limit => 1000000) c,
                generate_series(1, 100) n;
        PERFORM voucher.logout();
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION bench_redeem(tn int, n int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.redeem((SELECT code FROM bench_code WHERE t = tn AND i = n));
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'VC004' THEN
    RETURN SQLSTATE;
END
$$;
SELECT t, count(*) AS codes FROM bench_code GROUP BY t ORDER BY t;
CREATE OR REPLACE FUNCTION bench_shop(tn int, code int, customer int, amount numeric) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.redeem('SHOP-' || tn || '-' || code, customer => 'customer-' || customer,
                           order_id => 'order-' || pg_backend_pid() || '-' || clock_timestamp(),
                           order_amount => amount);
    RETURN 'ok';
END
$$;
