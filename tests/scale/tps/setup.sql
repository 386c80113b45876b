-- Throughput set-up (tests/scale/tps.sh), the same on one node and on a Citus coordinator: two
-- tenants with 20,000 single-use codes each; their redeemer keys and codes in local tables.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_key, bench_code;
CREATE TABLE bench_key (t int PRIMARY KEY, tenant uuid, admin text, redeemer text);
CREATE TABLE bench_code (t int, i int, code text, PRIMARY KEY (t, i));
INSERT INTO bench_key (t, tenant) SELECT n, voucher.create_tenant('bench ' || n) FROM generate_series(1, 2) n;
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
