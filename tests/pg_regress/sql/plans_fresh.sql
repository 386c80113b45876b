-- Kept statements planned on tables NEVER analyzed (a fresh install before autovacuum's first
-- ANALYZE) keep probing by their key when the tables grow (issue 17, notes/issue-17-traps).
-- Without statistics every tenant-led index estimates one row for a probe while the table is
-- small, and the newest index wins the tie: plans kept then walked all the tenant's
-- redemptions by redemption_time_idx, customers by customer_tenant_id_source_index_key,
-- campaigns by campaign_shape_idx, with the key as a filter. Sequential scans are not the issue
-- here (plans covers them): this file counts the rows each table's index scans fetched.
--
-- In a database of its own, nothing analyzed, autovacuum off for the tables it grows.
\set regress_db :DBNAME
\c - postgres
SET client_min_messages = warning;
DROP DATABASE IF EXISTS voucher_plans_fresh WITH (FORCE);
CREATE DATABASE voucher_plans_fresh;
\c voucher_plans_fresh
SET client_min_messages = warning;
CREATE EXTENSION voucher_ext;
RESET client_min_messages;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['campaign', 'consent', 'customer', 'redemption'] LOOP
        EXECUTE format('ALTER TABLE voucher.%I SET (autovacuum_enabled = off)', t);
    END LOOP;
END
$$;
-- this transaction's scans of each table and the rows its index scans fetched
CREATE FUNCTION snap() RETURNS void LANGUAGE sql AS $$
    SELECT set_config('plans.before',
                      (SELECT string_agg(format('%s:%s:%s:%s', relname, seq_scan,
                                                coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0)),
                                         ',')
                         FROM pg_stat_xact_user_tables WHERE schemaname = 'voucher'),
                      false)
$$;
CREATE FUNCTION delta(read name[], OUT relname name, OUT seq_scans bigint, OUT by_index boolean,
                      OUT few_rows_fetched boolean)
RETURNS SETOF record LANGUAGE sql AS $$
    SELECT s.relname, s.seq_scan - b.seq, coalesce(s.idx_scan, 0) > b.idx,
           coalesce(s.idx_tup_fetch, 0) - b.fetched < 10
      FROM pg_stat_xact_user_tables s
      JOIN (SELECT split_part(e, ':', 1) AS relname, split_part(e, ':', 2)::bigint AS seq,
                   split_part(e, ':', 3)::bigint AS idx, split_part(e, ':', 4)::bigint AS fetched
              FROM unnest(string_to_array(current_setting('plans.before'), ',')) e) b
     USING (relname)
     WHERE s.schemaname = 'voucher' AND s.relname = ANY (read)
     ORDER BY 1
$$;

-- small: a tenant, a campaign, 30 codes, 10 redemptions to roll back, 9 customers with a
-- redemption each, 9 to forget; no ANALYZE
SELECT voucher.create_api_key('admin', tenant => voucher.create_tenant('fresh')) AS key \gset
SELECT voucher.authenticate(:'key', session => true) IS NOT NULL AS ok;
SELECT voucher.create_campaign('lim') AS lim \gset
SELECT voucher.generate_codes(:'lim', 30) AS codes;
SELECT array_agg(code ORDER BY code) AS codes FROM voucher.vouchers \gset
SELECT count(*) AS redeemed FROM generate_series(1, 10) n, voucher.redeem((:'codes'::text[])[n]);
SELECT array_agg(id ORDER BY redeemed_at, id) AS rids FROM voucher.redemptions \gset
SELECT count(*) AS redeemed
  FROM generate_series(1, 9) n,
       voucher.redeem((:'codes'::text[])[10 + n], customer => 'c' || n);
SELECT count(voucher.upsert_customer('f' || n)) AS to_forget FROM generate_series(1, 9) n;
-- a campaign with a per-customer limit: each customer's first redemption adds its counter row
SELECT voucher.create_campaign('per customer', per_customer_limit => 1) AS pc \gset
SELECT voucher.generate_codes(:'pc', 20) AS codes;
SELECT array_agg(code ORDER BY code) AS pcs FROM voucher.vouchers WHERE campaign_id = :'pc' \gset
SELECT count(*) AS analyzed FROM pg_stat_user_tables
 WHERE schemaname = 'voucher' AND relname = 'redemption'
   AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL);

-- a new session: 8 rollbacks plan rollback_redemption's statements on the small table
\c voucher_plans_fresh
SELECT voucher.authenticate(:'key', session => true) IS NOT NULL AS ok;
SELECT count(*) AS rolled_back
  FROM generate_series(1, 8) n, voucher.rollback_redemption((:'rids'::uuid[])[n]);
SELECT count(voucher.set_consent('c' || n, 'news', true)) AS consented FROM generate_series(1, 8) n;
SELECT count(voucher.set_campaign_active(:'lim', true)) AS enabled FROM generate_series(1, 8);
SELECT count(voucher.export_customer('c' || n)) AS exported FROM generate_series(1, 8) n;
SELECT count(voucher.forget_customer('f' || n)) AS forgotten FROM generate_series(1, 8) n;
SELECT count(voucher.upsert_customer('c' || n, email => 'c' || n || '@x.example')) AS updated
  FROM generate_series(1, 8) n;
SELECT count(*) AS first_uses
  FROM generate_series(1, 8) n,
       voucher.redeem((:'pcs'::text[])[n], customer => 'c' || n, order_amount => 10);

-- the tables grow, without an ANALYZE
INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id, discount,
                                redeemed_at, redeemed_by)
SELECT r.tenant_id, gen_random_uuid(), r.voucher_id, r.campaign_id, 1, now(), 'fill'
  FROM (SELECT * FROM voucher.redemption LIMIT 1) r, generate_series(1, 50000);
INSERT INTO voucher.customer (tenant_id, customer_id, source_id, source_index, key_id,
                              created_at, updated_at)
SELECT tenant_id, gen_random_uuid(), source_id, sha256(('fill' || i)::bytea), key_id, now(), now()
  FROM (SELECT * FROM voucher.customer LIMIT 1) c, generate_series(1, 50000) i;
INSERT INTO voucher.campaign (tenant_id, campaign_id, name, kind, code_pattern, code_charset,
                              code_shape, created_by)
SELECT voucher.current_tenant(), gen_random_uuid(), 'fill' || i, 'discount', '########',
       'unambiguous', 'fill', 'fill'
  FROM generate_series(1, 20000) i;

-- the 9th rollback: the redemption by its primary key (one row fetched), then the 10th, rolled
-- back twice: the second finds it by key too, and refuses (VC010)
BEGIN;
SELECT snap();
SELECT restored FROM voucher.rollback_redemption((:'rids'::uuid[])[9]);
SELECT * FROM delta('{redemption}');
COMMIT;
SELECT restored FROM voucher.rollback_redemption((:'rids'::uuid[])[10]);
BEGIN;
SELECT snap();
SAVEPOINT s;
SELECT restored FROM voucher.rollback_redemption((:'rids'::uuid[])[10]);
ROLLBACK TO s;
SELECT * FROM delta('{redemption}');
COMMIT;

-- a customer's first redemption in a per-customer campaign: its counter row is new, and no
-- foreign key's check (planned by PostgreSQL while voucher.customer was small, it walked the
-- tenant's customers by the blind index's prefix) reads the customers (issue 17). (Not shown:
-- voucher.campaign, which the code's evaluation still reads by the tenant prefix of an index
-- until the first ANALYZE, README "Performance".)
BEGIN;
SELECT snap();
SELECT discount IS NOT NULL AS ok
  FROM voucher.redeem((:'pcs'::text[])[9], customer => 'c9', order_amount => 10);
SELECT * FROM delta('{customer,customer_usage}');
COMMIT;

-- set_consent: the customer's lock by its primary key, the consent (no foreign key check)
BEGIN;
SELECT snap();
SELECT voucher.set_consent('c9', 'news', true);
SELECT * FROM delta('{consent,customer}');
COMMIT;

-- set_campaign_active: the campaign by its primary key
BEGIN;
SELECT snap();
SELECT voucher.set_campaign_active(:'lim', true);
SELECT * FROM delta('{campaign}');
COMMIT;

-- export_customer: the profile by the customer's primary key, its redemptions
BEGIN;
SELECT snap();
SELECT voucher.export_customer('c9') IS NOT NULL AS exported;
SELECT * FROM delta('{consent,customer,redemption}');
COMMIT;

-- forget_customer: the customer's lock by its primary key, its pseudonymization
BEGIN;
SELECT snap();
SELECT voucher.forget_customer('f9') IS NOT NULL AS forgotten;
SELECT * FROM delta('{customer,redemption}');
COMMIT;

-- upsert_customer of an existing customer with a new email: the UPDATE by its keys (Rust)
BEGIN;
SELECT snap();
SELECT voucher.upsert_customer('c9', email => 'c9@y.example') IS NOT NULL AS ok;
SELECT * FROM delta('{customer}');
COMMIT;

\c :regress_db
DROP DATABASE voucher_plans_fresh WITH (FORCE);
