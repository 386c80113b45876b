-- Kept statements planned while their tables were small keep probing by index when the tables
-- grow (issue 17, notes/issue-17-seqscan). The plan cache makes 5 custom plans of a kept
-- statement, then keeps a generic one until the table is analyzed again; planned on tables
-- analyzed while small, the look-ups below kept sequential scans of their whole tables.
--
-- In a database of its own: its tables start physically empty (no other test's rows) and
-- autovacuum leaves them alone. One session plans (8 calls of each path on small, analyzed
-- tables); the tables then grow by direct INSERTs (no ANALYZE, nothing that resets the plan
-- cache); the 9th call of each path must read its tables by index only.
\set regress_db :DBNAME
\c - postgres
SET client_min_messages = warning;
DROP DATABASE IF EXISTS voucher_plans WITH (FORCE);
CREATE DATABASE voucher_plans;
\c voucher_plans
SET client_min_messages = warning;
CREATE EXTENSION voucher_ext;
RESET client_min_messages;
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['campaign', 'code', 'code_use', 'consent', 'credential', 'customer',
                             'customer_usage', 'redemption'] LOOP
        EXECUTE format('ALTER TABLE voucher.%I SET (autovacuum_enabled = off)', t);
    END LOOP;
END
$$;
-- this transaction's scans of each table: snap() notes them, delta(tables) compares
CREATE FUNCTION scans(OUT relname name, OUT seq bigint, OUT idx bigint) RETURNS SETOF record
LANGUAGE sql AS $$
    SELECT relname, seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables
     WHERE schemaname = 'voucher'
$$;
CREATE FUNCTION snap() RETURNS void LANGUAGE sql AS $$
    SELECT set_config('plans.before',
                      (SELECT string_agg(format('%s:%s:%s', relname, seq, idx), ',') FROM scans()),
                      false)
$$;
CREATE FUNCTION delta(read name[], OUT relname name, OUT seq_scans bigint, OUT by_index boolean)
RETURNS SETOF record LANGUAGE sql AS $$
    SELECT s.relname, s.seq - b.seq, s.idx > b.idx
      FROM scans() s
      JOIN (SELECT split_part(e, ':', 1) AS relname, split_part(e, ':', 2)::bigint AS seq,
                   split_part(e, ':', 3)::bigint AS idx
              FROM unnest(string_to_array(current_setting('plans.before'), ',')) e) b
     USING (relname)
     WHERE s.relname = ANY (read)
     ORDER BY 1
$$;

-- small: a tenant, three campaigns (per-customer limit, single use, no limit), 8 customers,
-- 9 redemptions to roll back later; then ANALYZE, as autovacuum does after the first rows
SELECT voucher.create_api_key('admin', tenant => voucher.create_tenant('plans')) AS key \gset
SELECT voucher.authenticate(:'key', session => true) IS NOT NULL AS ok;
SELECT voucher.generate_codes(voucher.create_campaign('pc', per_customer_limit => 100,
                                                      redemption_limit => 1000), 10)
     + voucher.generate_codes(voucher.create_campaign('lim'), 20)
     + voucher.generate_codes(voucher.create_campaign('hot', redemption_limit => NULL), 1)
       AS codes;
SELECT count(voucher.upsert_customer('c' || i)) AS customers FROM generate_series(1, 8) i;
SELECT array_agg(code ORDER BY code) AS pcs FROM voucher.vouchers WHERE campaign = 'pc' \gset
SELECT array_agg(code ORDER BY code) AS lims FROM voucher.vouchers WHERE campaign = 'lim' \gset
SELECT code AS hot FROM voucher.vouchers WHERE campaign = 'hot' \gset
SELECT count(*) AS redeemed
  FROM generate_series(1, 9) n,
       voucher.redeem((:'pcs'::text[])[n], customer => 'c' || n, order_amount => 10);
SELECT array_agg(id ORDER BY redeemed_at, id) AS rids FROM voucher.redemptions \gset
-- for the administrative paths (PL/pgSQL, notes/issue-17-traps): keys to revoke, customers to
-- forget, consents
SELECT count(voucher.create_api_key('redeemer')) AS spare_keys FROM generate_series(1, 10);
SELECT array_agg(id ORDER BY created_at, id) AS keys FROM voucher.api_keys WHERE role = 'redeemer' \gset
SELECT count(voucher.upsert_customer('f' || i)) AS to_forget FROM generate_series(1, 9) i;
SELECT count(voucher.set_consent('c' || i, 'news', true)) AS consents FROM generate_series(1, 9) i;
SELECT campaign_id AS pc FROM voucher.campaign WHERE name = 'pc' \gset
ANALYZE;

-- a new session (no statement planned yet): every path 8 times on the small tables
\c voucher_plans
SELECT voucher.authenticate(:'key', session => true) IS NOT NULL AS ok;
SELECT count(*) AS fast
  FROM generate_series(1, 8) n, voucher.redeem((:'lims'::text[])[n], customer => 'c' || n);
SELECT count(*) AS keyed
  FROM generate_series(1, 8) n,
       voucher.redeem((:'lims'::text[])[8 + n], idempotency_key => 'k' || n);
SELECT count(*) AS per_customer
  FROM generate_series(1, 8) n,
       voucher.redeem((:'pcs'::text[])[10], customer => 'c1', order_amount => 10);
SELECT count(*) AS spread FROM generate_series(1, 8) n, voucher.redeem(:'hot', customer => 'c2');
SELECT count(*) FILTER (WHERE valid) AS validated
  FROM generate_series(1, 8), voucher.validate((:'pcs'::text[])[10], customer => 'c1');
SELECT count(voucher.upsert_customer('c3')) AS upserted FROM generate_series(1, 8);
SELECT count(*) AS rolled_back
  FROM generate_series(1, 8) n, voucher.rollback_redemption((:'rids'::uuid[])[n]);
SELECT count(voucher.set_voucher_active((:'lims'::text[])[20], n % 2 = 0)) AS toggled
  FROM generate_series(1, 8) n;
SELECT count(voucher.set_campaign_active(:'pc', true)) AS enabled FROM generate_series(1, 8);
SELECT count(voucher.set_consent('c' || n, 'news', n % 2 = 0)) AS consented
  FROM generate_series(1, 8) n;
SELECT count(voucher.export_customer('c' || n)) AS exported FROM generate_series(1, 8) n;
SELECT count(voucher.forget_customer('f' || n)) AS forgotten FROM generate_series(1, 8) n;
-- each revocation commits a credential change, so the next call re-reads its own key (the key
-- check, a kept statement of src/tenancy/context.rs): here validate, a call without a SET clause
-- of its own (revoke_api_key's would plan the key check without sequential scans anyway)
SELECT voucher.revoke_api_key((:'keys'::uuid[])[1]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[2]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[3]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[4]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[5]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[6]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[7]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT voucher.revoke_api_key((:'keys'::uuid[])[8]) IS NOT NULL AS revoked;
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);

-- the tables grow, without an ANALYZE
SELECT campaign_id AS lim FROM voucher.campaign WHERE name = 'lim' \gset
SELECT campaign_id AS pc FROM voucher.campaign WHERE name = 'pc' \gset
INSERT INTO voucher.customer (tenant_id, customer_id, source_id, source_index, key_id,
                              created_at, updated_at)
SELECT tenant_id, gen_random_uuid(), source_id, sha256(('fill' || i)::bytea), key_id, now(), now()
  FROM (SELECT * FROM voucher.customer LIMIT 1) c, generate_series(1, 50000) i;
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code, active, redeemed_count,
                          created_at)
SELECT voucher.current_tenant(), gen_random_uuid(), :'lim', 'FILL' || i, true, 0, now()
  FROM generate_series(1, 50000) i;
INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id, discount,
                                redeemed_at, redeemed_by)
SELECT tenant_id, gen_random_uuid(), voucher_id, campaign_id, 1, now(), 'fill'
  FROM voucher.code WHERE code LIKE 'FILL%';
-- fewer rows of the tables a foreign key's check (also a kept plan) ran for per row, before
-- their keys went (issue 17)
INSERT INTO voucher.customer_usage
SELECT tenant_id, :'pc', customer_id, 1
  FROM voucher.customer c
 WHERE NOT EXISTS (SELECT FROM voucher.customer_usage u WHERE u.customer_id = c.customer_id)
 LIMIT 2000;
INSERT INTO voucher.code_use
SELECT tenant_id, voucher_id, s, 1
  FROM (SELECT tenant_id, voucher_id FROM voucher.code WHERE code LIKE 'FILL%' LIMIT 100) v,
       generate_series(0, 15) s;
-- (no foreign key check from these three to a grown table)
INSERT INTO voucher.credential (tenant_id, key_id, prefix, key_hash, role, created_by)
SELECT voucher.current_tenant(), gen_random_uuid(), 'vk_fill' || i, sha256(i::text::bytea),
       'redeemer', 'fill'
  FROM generate_series(1, 50000) i;
INSERT INTO voucher.campaign (tenant_id, campaign_id, name, kind, code_pattern, code_charset,
                              code_shape, created_by)
SELECT voucher.current_tenant(), gen_random_uuid(), 'fill' || i, 'discount', '########',
       'unambiguous', 'fill', 'fill'
  FROM generate_series(1, 20000) i;
INSERT INTO voucher.consent (tenant_id, customer_id, consent_id, purpose, granted, recorded_by)
SELECT tenant_id, customer_id, gen_random_uuid(), 'news', true, 'fill'
  FROM voucher.customer WHERE customer_id IN (SELECT customer_id FROM voucher.customer_usage);
SELECT (SELECT count(*) FROM voucher.customer) AS customers,
       (SELECT count(*) FROM voucher.code) AS codes,
       (SELECT count(*) FROM voucher.redemption) AS redemptions,
       (SELECT count(*) FROM voucher.customer_usage) AS usages,
       (SELECT count(*) FROM voucher.code_use) AS slots,
       (SELECT count(*) FROM voucher.credential) AS keys,
       (SELECT count(*) FROM voucher.campaign) AS campaigns,
       (SELECT count(*) FROM voucher.consent) AS consents;

-- the 9th call of each path: its tables read by index only
-- redeem's fast claim (the code) and the customer's look-up by its blind index
BEGIN;
SELECT snap();
SELECT discount IS NOT NULL AS ok FROM voucher.redeem((:'lims'::text[])[17], customer => 'c5');
SELECT * FROM delta('{code,customer}');
COMMIT;

-- the idempotency key's look-up (and the fast claim)
BEGIN;
SELECT snap();
SELECT replayed FROM voucher.redeem((:'lims'::text[])[18], idempotency_key => 'k9');
SELECT * FROM delta('{code,redemption}');
COMMIT;

-- a per-customer limit: the code's evaluation, the customer's usage, the claim by voucher id
BEGIN;
SELECT snap();
SELECT discount IS NOT NULL AS ok
  FROM voucher.redeem((:'pcs'::text[])[10], customer => 'c1', order_amount => 10);
SELECT * FROM delta('{code,customer,customer_usage}');
COMMIT;

-- no limit: the spread claim (the code and its slot rows)
BEGIN;
SELECT snap();
SELECT discount IS NOT NULL AS ok FROM voucher.redeem(:'hot', customer => 'c2');
SELECT * FROM delta('{code,code_use,customer}');
COMMIT;

-- validate with a customer: the customer's usage (the code is probed directly, lookup.rs)
BEGIN;
SELECT snap();
SELECT valid FROM voucher.validate((:'pcs'::text[])[10], customer => 'c1');
SELECT * FROM delta('{code,customer,customer_usage}');
COMMIT;

-- upsert_customer of an existing customer: its row found and locked by the blind index
BEGIN;
SELECT snap();
SELECT voucher.upsert_customer('c3') IS NOT NULL AS ok;
SELECT * FROM delta('{customer}');
COMMIT;

-- rollback_redemption (PL/pgSQL keeps its plans too): redemption, usage, code by their keys
BEGIN;
SELECT snap();
SELECT restored FROM voucher.rollback_redemption((:'rids'::uuid[])[9]);
SELECT * FROM delta('{code,customer_usage,redemption}');
COMMIT;

-- the administrative paths (PL/pgSQL functions declared SET enable_seqscan = off)
BEGIN;
SELECT snap();
SELECT voucher.set_voucher_active((:'lims'::text[])[20], true);
SELECT * FROM delta('{code}');
COMMIT;

BEGIN;
SELECT snap();
SELECT voucher.set_campaign_active(:'pc', true);
SELECT * FROM delta('{campaign}');
COMMIT;

BEGIN;
SELECT snap();
SELECT voucher.set_consent('c5', 'news', true);
SELECT * FROM delta('{consent,customer}');
COMMIT;

BEGIN;
SELECT snap();
SELECT voucher.export_customer('c5') IS NOT NULL AS exported;
SELECT * FROM delta('{consent,customer,redemption}');
COMMIT;

BEGIN;
SELECT snap();
SELECT voucher.forget_customer('f9') IS NOT NULL AS forgotten;
SELECT * FROM delta('{consent,customer,redemption}');
COMMIT;

-- a revocation (the UPDATE by key), then the next call re-reads its key (the key check)
BEGIN;
SELECT snap();
SELECT voucher.revoke_api_key((:'keys'::uuid[])[9]) IS NOT NULL AS revoked;
SELECT * FROM delta('{credential}');
COMMIT;
BEGIN;
SELECT snap();
SELECT count(*) AS validated FROM voucher.validate((:'pcs'::text[])[1]);
SELECT * FROM delta('{credential}');
COMMIT;

SHOW enable_seqscan;

\c :regress_db
DROP DATABASE voucher_plans WITH (FORCE);
