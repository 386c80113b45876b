-- Encrypted customers on the cluster (tests/scale/citus.sh): tenants a and b live on different
-- workers. Their customers are written, found, decrypted, redeemed with, consented, exported
-- and forgotten through the coordinator, which alone holds the master key; neither tenant sees
-- a row of the other's by any way in.
SELECT tenant AS a FROM citus_tenant WHERE name = 'a' \gset
SELECT tenant AS b FROM citus_tenant WHERE name = 'b' \gset
-- Each tenant's first customers are created inside one function call: the tenant's first keys
-- with them (and, for the first, the master key file, which looks at every tenant's keys on
-- the way: the context shipped to the workers must come back to the caller's tenant after it).
CREATE FUNCTION public.setup_customers(who text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    per uuid;
BEGIN
    SELECT * INTO r FROM citus_tenant WHERE name = who;
    PERFORM voucher.authenticate(r.admin);
    PERFORM voucher.upsert_customer(who || '-anna', email => 'anna@' || who || '.example',
                                    name => 'Anna ' || upper(who),
                                    metadata => jsonb_build_object('tier', 'gold'));
    PERFORM voucher.upsert_customer(who || '-ben', email => 'ben@' || who || '.example');
    PERFORM voucher.upsert_customer(who || '-anna', name => 'Anna ' || upper(who) || ' Smith');
    -- at most 3 redemptions per customer over the campaign's 20 codes
    per := voucher.create_campaign('three per customer ' || who, redemption_limit => NULL,
                                   per_customer_limit => 3);
    PERFORM voucher.add_code(per, 'PER-' || upper(who) || '-' || n) FROM generate_series(1, 20) n;
    PERFORM voucher.redeem('PER-' || upper(who) || '-1', customer => who || '-anna',
                           metadata => jsonb_build_object('note', 'first of ' || who));
    PERFORM voucher.set_consent(who || '-anna', 'newsletter', true, source => 'signup form');
END
$$;
GRANT EXECUTE ON FUNCTION public.setup_customers(text) TO PUBLIC;
SET ROLE regress_client;
SELECT setup_customers('a');
SELECT setup_customers('b');

-- tenant a's admin: its own customers, decrypted, and nothing of b's by any way in
BEGIN;
SELECT voucher.authenticate(admin) = tenant AS a_admin FROM citus_tenant WHERE name = 'a';
SELECT source_id, email, name, metadata, forgotten_at IS NULL AS live
  FROM voucher.customers ORDER BY source_id;
SELECT code, customer, metadata FROM voucher.redemptions WHERE customer IS NOT NULL ORDER BY code;
SELECT purpose, granted, source FROM voucher.consents;
SELECT count(*) AS found_own FROM voucher.find_customer(' ANNA@a.example');
SELECT count(*) AS found_of_b FROM voucher.find_customer('anna@b.example');
SELECT voucher.export_customer('b-anna') IS NULL AS export_of_b_customer_is_null;
SELECT voucher.forget_customer('b-ben') IS NULL AS forget_of_b_customer_is_null;
-- b's codes do not exist here, with or without b's customer
SELECT t($$SELECT voucher.redeem('PER-B-2', customer => 'b-anna')$$) AS redeem_b_code;
-- the export of its own customer: profile, consents, redemptions (metadata decrypted), events
SELECT e -> 'customer' ->> 'source_id' AS source_id, e -> 'customer' ->> 'email' AS email,
       e -> 'customer' ->> 'name' AS name, e -> 'customer' -> 'metadata' AS metadata,
       jsonb_array_length(e -> 'consents') AS consents,
       e -> 'redemptions' -> 0 ->> 'code' AS redeemed, e -> 'redemptions' -> 0 -> 'metadata' AS note,
       jsonb_array_length(e -> 'audit_events') > 0 AS audit_events, e ->> 'tenant_id' = :'a' AS own
  FROM voucher.export_customer('a-anna') e;
-- the per-customer limit: a-anna redeemed once in setup; two more, then refused
SELECT t($$SELECT voucher.redeem('PER-A-2', customer => 'a-anna')$$) AS second,
       t($$SELECT voucher.redeem('PER-A-3', customer => 'a-anna')$$) AS third,
       t($$SELECT voucher.redeem('PER-A-4', customer => 'a-anna')$$) AS fourth;
COMMIT;
-- tenant b's admin: the same, mirrored
BEGIN;
SELECT voucher.authenticate(admin) = tenant AS b_admin FROM citus_tenant WHERE name = 'b';
SELECT source_id, email, name FROM voucher.customers ORDER BY source_id;
SELECT code, customer, metadata FROM voucher.redemptions WHERE customer IS NOT NULL ORDER BY code;
SELECT count(*) AS found_of_a FROM voucher.find_customer('anna@a.example');
SELECT voucher.export_customer('a-anna') IS NULL AS export_of_a_customer_is_null;
SELECT e -> 'customer' ->> 'source_id' AS source_id, e -> 'redemptions' -> 0 -> 'metadata' AS note
  FROM voucher.export_customer('b-anna') e;
COMMIT;
-- a context first shipped inside a subtransaction (t() catches errors in one), which Citus
-- forgets for the connections it opens after that subtransaction: shipped again by the next
-- call, so a scan on one new connection per shard still sees every row
BEGIN;
SET LOCAL citus.force_max_query_parallelization = on;
SELECT t($$SELECT voucher.authenticate(admin) FROM citus_tenant WHERE name = 'a'$$) AS authenticated_in_a_subtransaction;
SELECT count(*) AS customers FROM voucher.customers;
SELECT count(*) AS vouchers FROM voucher.vouchers;
COMMIT;
-- key roles that may not read personal data, on the cluster too
BEGIN;
SELECT voucher.authenticate(redeemer) IS NOT NULL AS redeemer FROM citus_tenant WHERE name = 'a';
SELECT t($$SELECT * FROM voucher.customers$$) AS customers_view,
       t($$SELECT voucher.export_customer('a-anna')$$) AS export;
COMMIT;
RESET ROLE;

-- shard queries without a valid context select nothing of the customer tables: no token, a
-- garbage one, and one captured from a real transaction of a and replayed in another
SET ROLE voucher_definer;
SELECT (SELECT count(*) FROM voucher.customer) AS customers,
       (SELECT count(*) FROM voucher.tenant_key) AS tenant_keys, (SELECT count(*) FROM voucher.consent) AS consents,
       (SELECT count(*) FROM voucher.customer_usage) AS usage;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL voucher.cluster_token = 'v1.garbage';
SELECT (SELECT count(*) FROM voucher.customer) AS customers, (SELECT count(*) FROM voucher.tenant_key) AS tenant_keys;
COMMIT;
RESET ROLE;
SET ROLE regress_client;
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS authenticated FROM citus_tenant WHERE name = 'a';
SELECT count(*) AS customers_in_the_real_transaction FROM voucher.customers;
RESET ROLE;
SELECT current_setting('voucher.cluster_token') AS captured \gset
COMMIT;
SET ROLE voucher_definer;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL voucher.cluster_token = :'captured';
SELECT (SELECT count(*) FROM voucher.customer) AS customers,
       (SELECT count(*) FROM voucher.tenant_key) AS tenant_keys, (SELECT count(*) FROM voucher.consent) AS consents;
COMMIT;
RESET ROLE;

-- settings (voucher.configure: INSERT ... ON CONFLICT DO UPDATE on a distributed table), the
-- profile consent they can require, and the brute-force lock-out of a customer
SET ROLE regress_client;
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS b_admin FROM citus_tenant WHERE name = 'b';
SELECT voucher.configure('require_profile_consent', 'true');
SELECT voucher.configure('require_profile_consent', 'true');   -- the update path
SELECT setting, value, updated_at IS NOT NULL AS configured FROM voucher.settings
 WHERE setting = 'require_profile_consent';
SELECT t($$SELECT voucher.upsert_customer('b-carl', email => 'carl@b.example')$$) AS without_consent;
SELECT voucher.configure('require_profile_consent', NULL);
SELECT voucher.configure('customer_lockout_threshold', '3');
COMMIT;
-- the lock-out counters live on the node the client calls: the coordinator
BEGIN;
SELECT voucher.authenticate(redeemer) IS NOT NULL AS b_redeemer FROM citus_tenant WHERE name = 'b';
SELECT t(format($$SELECT voucher.redeem('NOPE-%s', customer => 'b-guesser')$$, n)) AS guesses
  FROM generate_series(1, 3) n;
SELECT t($$SELECT voucher.redeem('PER-B-5', customer => 'b-guesser')$$) AS locked_out;
SELECT t($$SELECT voucher.redeem('PER-B-5', customer => 'b-ben')$$) AS another_customer;
COMMIT;
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS b_admin FROM citus_tenant WHERE name = 'b';
SELECT kind, failures, lockouts FROM voucher.lockouts;
SELECT voucher.unlock('customer', 'b-guesser') AS unlocked;
COMMIT;
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS a_admin FROM citus_tenant WHERE name = 'a';
SELECT count(*) AS lockouts_seen_by_a FROM voucher.lockouts;
COMMIT;

-- a data key rotation: old rows still decrypt, new ones are written under the new key
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS a_admin FROM citus_tenant WHERE name = 'a';
SELECT voucher.rotate_data_key() IS NOT NULL AS rotated;
SELECT voucher.upsert_customer('a-carl', email => 'carl@a.example') IS NOT NULL AS created;
SELECT source_id, email FROM voucher.customers ORDER BY source_id;
SELECT kind, state, superseded_by IS NOT NULL AS superseded FROM voucher.tenant_keys ORDER BY key_id;
COMMIT;

-- forgetting a customer: its profile and key are gone, the audit trail still verifies
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS a_admin FROM citus_tenant WHERE name = 'a';
SELECT voucher.forget_customer('a-ben');
SELECT count(*) FILTER (WHERE forgotten_at IS NOT NULL) AS forgotten,
       count(*) FILTER (WHERE source_id = 'a-ben') AS still_named
  FROM voucher.customers;
SELECT voucher.export_customer('a-ben') IS NULL AS forgotten_customer_not_found;
COMMIT;
BEGIN;
SELECT voucher.authenticate(auditor) IS NOT NULL AS a_auditor FROM citus_tenant WHERE name = 'a';
SELECT ok, rows_checked > 0 AS checked, problem FROM voucher.verify_audit();
COMMIT;
RESET ROLE;

-- a superuser's direct change of a tenant table reaches the shard, where it cannot be audited:
-- refused, nothing changed
SELECT t(format($$UPDATE voucher.campaign SET name = 'renamed' WHERE tenant_id = %L$$, :'a')) AS direct_update;
SELECT t(format($$DELETE FROM voucher.consent WHERE tenant_id = %L$$, :'b')) AS direct_delete;
SELECT count(*) AS renamed FROM voucher.campaign WHERE name = 'renamed';
SELECT count(*) > 0 AS consents_kept FROM voucher.consent WHERE tenant_id = :'b';

-- for the race (citus.sh): one attempt of a customer of a tenant, refusals counted
CREATE FUNCTION public.citus_customer_attempt(code text, customer text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.redeem(code, customer => customer);
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'VC005' THEN
    RETURN SQLSTATE;
END
$$;
GRANT EXECUTE ON FUNCTION public.citus_customer_attempt(text, text) TO PUBLIC;
