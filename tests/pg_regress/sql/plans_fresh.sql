-- Kept statements planned on tables NEVER analyzed (a fresh install before autovacuum's first
-- ANALYZE) keep probing by the primary key when the tables grow (issue 17,
-- notes/issue-17-traps). Without statistics every index of voucher.redemption (all lead with
-- tenant_id) estimates one row for a probe while the table is small; a plan kept then walked
-- all the tenant's redemptions by redemption_time_idx. Sequential scans are not the issue here
-- (plans covers them); this file counts the rows each table gave its index scans.
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
ALTER TABLE voucher.redemption SET (autovacuum_enabled = off);
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
                      OUT rows_fetched_at_most_2 boolean)
RETURNS SETOF record LANGUAGE sql AS $$
    SELECT s.relname, s.seq_scan - b.seq, coalesce(s.idx_scan, 0) > b.idx,
           coalesce(s.idx_tup_fetch, 0) - b.fetched <= 2
      FROM pg_stat_xact_user_tables s
      JOIN (SELECT split_part(e, ':', 1) AS relname, split_part(e, ':', 2)::bigint AS seq,
                   split_part(e, ':', 3)::bigint AS idx, split_part(e, ':', 4)::bigint AS fetched
              FROM unnest(string_to_array(current_setting('plans.before'), ',')) e) b
     USING (relname)
     WHERE s.schemaname = 'voucher' AND s.relname = ANY (read)
     ORDER BY 1
$$;

-- small: a tenant, a campaign, 20 codes, 10 redemptions to roll back; no ANALYZE
SELECT voucher.create_api_key('admin', tenant => voucher.create_tenant('fresh')) AS key \gset
SELECT voucher.authenticate(:'key', session => true) IS NOT NULL AS ok;
SELECT voucher.generate_codes(voucher.create_campaign('lim'), 20) AS codes;
SELECT count(*) AS redeemed
  FROM (SELECT code FROM voucher.vouchers ORDER BY code LIMIT 10) v, voucher.redeem(v.code);
SELECT array_agg(id ORDER BY redeemed_at, id) AS rids FROM voucher.redemptions \gset
SELECT count(*) AS analyzed FROM pg_stat_user_tables
 WHERE schemaname = 'voucher' AND relname = 'redemption'
   AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL);

-- a new session: 8 rollbacks plan rollback_redemption's statements on the small table
\c voucher_plans_fresh
SELECT voucher.authenticate(:'key', session => true) IS NOT NULL AS ok;
SELECT count(*) AS rolled_back
  FROM generate_series(1, 8) n, voucher.rollback_redemption((:'rids'::uuid[])[n]);

-- the table grows, without an ANALYZE
INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id, discount,
                                redeemed_at, redeemed_by)
SELECT r.tenant_id, gen_random_uuid(), r.voucher_id, r.campaign_id, 1, now(), 'fill'
  FROM (SELECT * FROM voucher.redemption LIMIT 1) r, generate_series(1, 50000);

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

\c :regress_db
DROP DATABASE voucher_plans_fresh WITH (FORCE);
