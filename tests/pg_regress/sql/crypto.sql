-- Personal data encrypted at rest (src/crypto/, README "Encryption at rest"): upsert, the view
-- by key role, find_customer, redemptions with a customer, both rotations with every row still
-- readable after each step, tampered and moved ciphertexts, the master key's errors.

\c - regress_op
SELECT voucher.create_tenant('crypto shop') AS shop \gset
SELECT voucher.create_tenant('crypto other') AS other \gset
SELECT voucher.create_api_key('admin', tenant => :'shop') AS admin \gset
SELECT voucher.create_api_key('admin', tenant => :'other') AS other_admin \gset

\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('manager') AS manager \gset
SELECT voucher.create_api_key('redeemer') AS redeemer \gset
SELECT voucher.create_api_key('auditor') AS auditor \gset
SELECT voucher.create_campaign('crypto', redemption_limit => NULL) AS camp \gset
SELECT voucher.create_campaign('once each', redemption_limit => NULL, per_customer_limit => 1) AS once \gset
SELECT voucher.add_code(:'camp', 'CRYPTO-1') IS NOT NULL AS added,
       voucher.add_code(:'once', 'ONCE-1') IS NOT NULL AS added_once;
SELECT voucher.upsert_customer('cust-anna', 'Anna.Example@Example.COM', 'Anna Example',
                               '{"tier": "gold"}') AS anna \gset
SELECT voucher.upsert_customer('cust-bob', 'bob@example.com', 'Bob') AS bob \gset
-- the same source_id is the same customer; NULL arguments leave a field as it is
SELECT voucher.upsert_customer('cust-anna', name => 'Anna E.') = :'anna' AS same_customer;
SELECT source_id, email, name, metadata, forgotten_at IS NULL AS not_forgotten
  FROM voucher.customers ORDER BY source_id;
-- find_customer: the trimmed, lower-case email through its blind index
SELECT voucher.find_customer('anna.example@example.com') = :'anna' AS found_anna,
       voucher.find_customer('  BOB@example.com') = :'bob' AS found_bob;
SELECT count(*) AS unknown_email FROM voucher.find_customer('nobody@example.com');
-- redemptions find the customer by the blind index of source_id; an unknown one is created
SELECT discount FROM voucher.redeem('crypto-1', customer => 'cust-anna',
                                    metadata => '{"phone": "+49 30 1234567"}');
SELECT discount FROM voucher.redeem('crypto-1', customer => 'cust-new');
SELECT valid, reason, sqlstate, discount FROM voucher.validate('once-1', customer => 'cust-anna');
SELECT discount FROM voucher.redeem('once-1', customer => 'cust-anna');
SELECT valid, sqlstate FROM voucher.validate('once-1', customer => 'cust-anna');
SELECT code, customer, metadata, customer_id = :'anna' AS anna FROM voucher.redemptions
 ORDER BY redeemed_at, code;
SELECT source_id FROM voucher.customers ORDER BY 1;
COMMIT;
-- a refused redemption's audit row names a known customer only encrypted, under its own key
SELECT try($$SELECT voucher.authenticate('$$ || :'admin' || $$');
             SELECT voucher.redeem('once-1', customer => 'cust-anna')$$) AS refused;

-- key roles: admin and manager read personal data; others get 42501 (and see no customer in
-- the redemptions view)
SELECT r.role,
       try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', r.key)) AS customers_view,
       try(format($$SELECT voucher.authenticate(%L); SELECT voucher.find_customer('bob@example.com')$$, r.key)) AS find_customer
  FROM (VALUES ('admin', :'admin'), ('manager', :'manager'), ('redeemer', :'redeemer'),
               ('auditor', :'auditor')) r(role, key);
BEGIN;
SELECT voucher.authenticate(:'auditor') IS NOT NULL AS ok;
SELECT code, customer, metadata FROM voucher.redemptions ORDER BY redeemed_at, code;
ROLLBACK;
-- another tenant: nothing to find, nothing to read
BEGIN;
SELECT voucher.authenticate(:'other_admin') IS NOT NULL AS ok;
SELECT count(*) AS found FROM voucher.find_customer('bob@example.com');
SELECT voucher.upsert_customer('cust-bob', 'carol@example.com', 'Carol') AS carol \gset
SELECT source_id, email, name FROM voucher.customers;
COMMIT;

------------------------------------------------------------------------------------------------
-- what is stored: ciphertexts only, in the envelope format; keys only wrapped
------------------------------------------------------------------------------------------------
\c - postgres
SELECT count(*) AS customers,
       bool_or(position(convert_to('anna', 'UTF8') IN c.source_id || coalesce(c.email, '')) > 0
               OR position(convert_to('Anna', 'UTF8') IN coalesce(c.name, '')) > 0
               OR position(convert_to('gold', 'UTF8') IN coalesce(c.metadata, '')) > 0) AS plaintext_anna,
       bool_or(position(convert_to('Bob', 'UTF8') IN coalesce(c.name, '')) > 0) AS plaintext_bob,
       min(get_byte(c.source_id, 0)) AS format_version,
       min(length(c.source_id) - octet_length(CASE c.customer_id WHEN :'anna' THEN 'cust-anna'
           WHEN :'bob' THEN 'cust-bob' ELSE 'cust-new' END)) AS overhead
  FROM voucher.customer c WHERE c.tenant_id = :'shop';
-- the same source_id in two tenants: different blind indexes, different ciphertexts
SELECT a.source_index <> b.source_index AS indexes_differ, a.source_id <> b.source_id AS ciphertexts_differ
  FROM voucher.customer a, voucher.customer b
 WHERE a.customer_id = :'bob' AND b.customer_id = :'carol';
SELECT position(convert_to('+49', 'UTF8') IN metadata) AS plaintext_phone, key_id IS NOT NULL AS keyed
  FROM voucher.redemption WHERE tenant_id = :'shop' AND metadata IS NOT NULL;
-- the failed redemption's audit row: the customer only as ciphertext
SELECT details ? 'customer' AS has_customer,
       details -> 'customer' ? 'personal' AS encrypted,
       details -> 'customer' ->> 'customer_id' = :'anna' AS names_customer_id,
       position('cust-anna' IN details::text) AS plaintext
  FROM voucher.audit_event WHERE tenant_id = :'shop' AND action = 'redemption.failed';
SELECT kind, state, master_key_id ~ '^[0-9a-f]{16}$' AS wrapped_under_master, length(wrapped) AS wrapped_bytes,
       encryptions > 0 AS counted
  FROM voucher.tenant_key WHERE tenant_id = :'shop' ORDER BY key_id;
-- every customer has its own key, wrapped under its row's data key (envelope bytes 2-5)
SELECT count(*) AS customer_keys, bool_and(substr(audit_key, 2, 4) = int4send(key_id)) AS all_wrapped,
       bool_and(length(audit_key) = 32 + 33) AS wrapped_bytes
  FROM voucher.customer WHERE tenant_id = :'shop';

------------------------------------------------------------------------------------------------
-- tampered and moved ciphertexts: XX001 naming table, column and row, never a value
------------------------------------------------------------------------------------------------
UPDATE voucher.customer SET name = set_byte(name, length(name) - 1, get_byte(name, length(name) - 1) # 1)
 WHERE customer_id = :'bob';
\c - regress_client
SELECT replace(try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')),
               :'bob', '<bob>') AS tampered_name;
\c - postgres
UPDATE voucher.customer SET name = set_byte(name, length(name) - 1, get_byte(name, length(name) - 1) # 1)
 WHERE customer_id = :'bob';
-- Anna's email copied into Bob's row (same tenant, other row)
UPDATE voucher.customer SET email = (SELECT email FROM voucher.customer WHERE customer_id = :'anna')
 WHERE customer_id = :'bob';
\c - regress_client
SELECT replace(try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')),
               :'bob', '<bob>') AS moved_within_tenant;
\c - postgres
-- the other tenant's Carol copied into Bob's row, all of it, with her key id
UPDATE voucher.customer b SET email = c.email, name = c.name, key_id = c.key_id
  FROM voucher.customer c WHERE b.customer_id = :'bob' AND c.customer_id = :'carol';
\c - regress_client
SELECT replace(try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')),
               :'bob', '<bob>') AS moved_across_tenants;
-- repaired: the broken fields cleared by hand, then written again through the API
\c - postgres
UPDATE voucher.customer b SET email = NULL, name = NULL, key_id = (SELECT key_id FROM voucher.customer WHERE customer_id = :'anna')
 WHERE b.customer_id = :'bob';
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('cust-bob', 'bob@example.com', 'Bob') = :'bob' AS bob_repaired;
SELECT source_id, email, name FROM voucher.customers WHERE customer_id = :'bob';
COMMIT;

------------------------------------------------------------------------------------------------
-- data key rotation: a bounded batch per call, every row readable after each step, 0 when done
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.rotate_data_key(1) AS moved;
SELECT count(*) AS readable, count(email) AS emails FROM voucher.customers;
SELECT voucher.rotate_data_key(2) AS moved;
SELECT count(*) AS readable, count(email) AS emails FROM voucher.customers;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.rotate_data_key(1000) AS moved;
SELECT voucher.rotate_data_key() AS moved_when_done;
SELECT source_id, email, name, metadata FROM voucher.customers ORDER BY source_id;
SELECT code, customer, metadata FROM voucher.redemptions WHERE metadata IS NOT NULL;
SELECT key_id IS NOT NULL AS has_id, kind, state, superseded_by IS NOT NULL AS superseded
  FROM voucher.tenant_keys ORDER BY key_id;
SELECT action, details ? 'rows' AS counted FROM voucher.audit_log
 WHERE action LIKE 'data_key.%' ORDER BY id;
-- the batch size is bounded; only admin keys rotate
SELECT try('SELECT voucher.rotate_data_key(0)') AS zero_batch;
COMMIT;
SELECT try(format('SELECT voucher.authenticate(%L); SELECT voucher.rotate_data_key()', :'manager')) AS manager_rotates;
-- still findable and redeemable with the same blind indexes (the index key does not rotate)
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.find_customer('anna.example@example.com') = :'anna' AS found_anna;
SELECT discount FROM voucher.redeem('crypto-1', customer => 'cust-anna');
SELECT count(*) AS anna_redemptions FROM voucher.redemptions WHERE customer = 'cust-anna';
COMMIT;

------------------------------------------------------------------------------------------------
-- master key rotation: superuser only; every tenant key re-wrapped, no data rewritten
------------------------------------------------------------------------------------------------
SELECT try('SELECT voucher.rotate_master_key()') AS client_rotates;
\c - postgres
SELECT DISTINCT master_key_id AS old_master FROM voucher.tenant_key WHERE wrapped IS NOT NULL \gset
SELECT sum(length(source_id)) AS bytes_before FROM voucher.customer \gset
SELECT voucher.rotate_master_key() = (SELECT count(*) FROM voucher.tenant_key WHERE wrapped IS NOT NULL)
       AS every_key_rewrapped;
SELECT count(DISTINCT master_key_id) AS masters, bool_and(master_key_id <> :'old_master') AS new_master
  FROM voucher.tenant_key WHERE wrapped IS NOT NULL;
SELECT action, details ->> 'master_key' <> :'old_master' AS new_master FROM voucher.audit_event
 WHERE tenant_id = :'shop' AND action = 'master_key.rotated';
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT source_id, email, name FROM voucher.customers ORDER BY source_id;
SELECT voucher.upsert_customer('cust-dora', 'dora@example.com') IS NOT NULL AS created_after;
COMMIT;

------------------------------------------------------------------------------------------------
-- the encryption counter: a data key refuses past 2^31 encryptions until rotated
------------------------------------------------------------------------------------------------
\c - postgres
UPDATE voucher.tenant_key SET encryptions = 2147483647
 WHERE tenant_id = :'shop' AND kind = 'data' AND state = 'active' AND superseded_by IS NULL;
\c - regress_client
SELECT regexp_replace(try(format($$SELECT voucher.authenticate(%L); SELECT voucher.upsert_customer('cust-eve', 'eve@example.com')$$, :'admin')),
                      'data key [0-9]+', 'data key N') AS over_the_limit;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.rotate_data_key() > 0 AS moved;
SELECT voucher.rotate_data_key() AS done;
SELECT voucher.upsert_customer('cust-eve', 'eve@example.com') IS NOT NULL AS created_after_rotation;
COMMIT;

------------------------------------------------------------------------------------------------
-- retired data keys are destroyed (wrapped bytes erased, audited) once retired for older_than
-- and used by no row; a retired key a row still uses is kept
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT state, count(*) FROM voucher.tenant_keys WHERE kind = 'data' GROUP BY state ORDER BY state;
-- retired less than a day ago (the default): kept
SELECT count(*) AS destroyed_at_once FROM voucher.destroy_retired_keys();
SELECT try($$SELECT * FROM voucher.destroy_retired_keys(NULL)$$) AS null_age,
       try($$SELECT * FROM voucher.destroy_retired_keys(interval '-1 hour')$$) AS negative_age;
COMMIT;
SELECT try(format($$SELECT voucher.authenticate(%L); SELECT * FROM voucher.destroy_retired_keys(interval '0')$$,
                  :'manager')) AS manager_destroys;
-- a row still under one of the retired keys (as a backend that reserved before the rotation
-- may leave): that key stays
\c - postgres
SELECT min(key_id) AS straggler_key FROM voucher.tenant_key
 WHERE tenant_id = :'shop' AND kind = 'data' AND state = 'retired' \gset
UPDATE voucher.customer SET key_id = :straggler_key
 WHERE tenant_id = :'shop' AND customer_id = :'bob' RETURNING key_id AS straggler \gset
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT count(*) AS destroyed, bool_and(key_id <> :straggler_key) AS straggler_kept
  FROM voucher.destroy_retired_keys(interval '0');
COMMIT;
\c - postgres
UPDATE voucher.customer c SET key_id = (SELECT key_id FROM voucher.tenant_key k
                                          WHERE k.tenant_id = c.tenant_id AND k.kind = 'data'
                                            AND k.state = 'active' AND k.superseded_by IS NULL)
 WHERE tenant_id = :'shop' AND customer_id = :'bob';
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT array_agg(key_id) = ARRAY[:straggler_key] AS destroyed_now
  FROM voucher.destroy_retired_keys(interval '0');
SELECT state, count(*), bool_and(destroyed_at IS NOT NULL) = (state = 'destroyed') AS dated,
       bool_and(master_key_id IS NULL) AS no_master
  FROM voucher.tenant_keys WHERE kind = 'data' GROUP BY state ORDER BY state;
SELECT action, jsonb_array_length(details -> 'key_ids') AS keys FROM voucher.audit_log
 WHERE action = 'data_key.destroyed' ORDER BY id;
-- every customer still reads (all under the active key)
SELECT count(*) AS readable, count(email) AS emails FROM voucher.customers;
COMMIT;
\c - postgres
SELECT count(*) AS destroyed_keys, bool_and(wrapped IS NULL) AS bytes_erased
  FROM voucher.tenant_key WHERE tenant_id = :'shop' AND state = 'destroyed';

------------------------------------------------------------------------------------------------
-- idempotency fingerprints (redemption.request_hash) are keyed per tenant: the same request
-- (code, customer, order, key) in two tenants hashes differently; a replay still matches and a
-- changed request is still refused
------------------------------------------------------------------------------------------------
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'other_admin') IS NOT NULL AS ok;
SELECT voucher.add_code(voucher.create_campaign('other', redemption_limit => NULL), 'CRYPTO-1') IS NOT NULL AS added;
SELECT discount FROM voucher.redeem('crypto-1', customer => 'cust-same', order_id => 'o-same',
                                    idempotency_key => 'same-request');
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT discount, replayed FROM voucher.redeem('crypto-1', customer => 'cust-same', order_id => 'o-same',
                                              idempotency_key => 'same-request');
SELECT discount, replayed FROM voucher.redeem('crypto-1', customer => 'cust-same', order_id => 'o-same',
                                              idempotency_key => 'same-request');
COMMIT;
SELECT try(format($$SELECT voucher.authenticate(%L);
                    SELECT voucher.redeem('crypto-1', customer => 'cust-other', order_id => 'o-same',
                                          idempotency_key => 'same-request')$$, :'admin')) AS changed_request;
\c - postgres
SELECT count(*) AS redemptions, count(DISTINCT request_hash) AS hashes,
       bool_and(length(request_hash) = 32) AS hmac_sha256
  FROM voucher.redemption WHERE idempotency_key = 'same-request';
\c - regress_client

-- every audit row written above (customer.created in the customer's own statement, the refused
-- redemption with its encrypted customer, the rotations) verifies
\c - regress_op
SELECT voucher.seal_audit() >= 0 AS sealed;
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT ok, first_bad_id, problem FROM voucher.verify_audit();
SELECT action, count(*) FROM voucher.audit_log
 WHERE action IN ('customer.created', 'customer.updated', 'redemption.failed') GROUP BY action ORDER BY action;
COMMIT;

------------------------------------------------------------------------------------------------
-- the master key: a file others may read, a command printing another key, a missing file are
-- said plainly (and a missing file is not replaced by a new key while keys are wrapped under it)
------------------------------------------------------------------------------------------------
\c - postgres
SELECT current_setting('data_directory') || '/voucher_regress_other.key' AS other_file \gset
COPY (SELECT repeat('ab', 32)) TO :'other_file';
ALTER SYSTEM SET voucher.master_key_file = :'other_file';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
\c - regress_client
SELECT regexp_replace(regexp_replace(try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')),
                      '"[^"]*"', '"..."'), 'master key [0-9a-f]{16}', 'master key <fingerprint>') AS loose_mode;
\c - postgres
ALTER SYSTEM RESET voucher.master_key_file;
ALTER SYSTEM SET voucher.master_key_command = 'echo abababababababababababababababababababababababababababababababab';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
\c - regress_client
SELECT regexp_replace(try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')),
                      'master key [0-9a-f]{16}, which tenant key [0-9]+', 'master key <fingerprint>, which tenant key N') AS wrong_key;
\c - postgres
ALTER SYSTEM RESET voucher.master_key_command;
\c - postgres
ALTER SYSTEM SET voucher.master_key_file = '/nonexistent/voucher_master.key';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
\c - regress_client
SELECT regexp_replace(try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')),
                      'master key [0-9a-f]{16}', 'master key <fingerprint>') AS missing_file;
\c - postgres
ALTER SYSTEM RESET voucher.master_key_file;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
\c - regress_client
SELECT try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.customers', :'admin')) AS restored;

------------------------------------------------------------------------------------------------
-- a setting that would log bound values: one warning per session at the first key use, naming
-- the setting, never a value
------------------------------------------------------------------------------------------------
\c - postgres
SET log_min_duration_statement = 0;
BEGIN;
SELECT voucher.act_as(:'shop');
SELECT count(email) AS emails FROM voucher.customers;
SELECT count(name) AS again_without_warning FROM voucher.customers;
COMMIT;
RESET log_min_duration_statement;

------------------------------------------------------------------------------------------------
-- rotate_data_key walks the customers in primary-key order from a stored position (there is no
-- index on key_id): a rolled-back batch leaves the position, a row left under the old key behind
-- the walk sends it back to the start, the old key retires only once no row uses it
------------------------------------------------------------------------------------------------
\c - regress_op
SELECT voucher.create_tenant('crypto walk') AS walk \gset
SELECT voucher.create_api_key('admin', tenant => :'walk') AS walk_admin \gset
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'walk_admin') IS NOT NULL AS ok;
SELECT count(voucher.upsert_customer('walk-' || g, 'walk' || g || '@example.com')) AS made
  FROM generate_series(1, 3) g;
SELECT voucher.rotate_data_key(1) AS first_batch;
COMMIT;
\c - postgres
SELECT customer_id AS walk_first FROM voucher.customer WHERE tenant_id = :'walk'
 ORDER BY customer_id LIMIT 1 \gset
SELECT key_id AS walk_old FROM voucher.tenant_key
 WHERE tenant_id = :'walk' AND kind = 'data' AND superseded_by IS NOT NULL \gset
SELECT rotated_through = :'walk_first' AS at_first_customer FROM voucher.tenant_key
 WHERE tenant_id = :'walk' AND kind = 'data' AND superseded_by IS NULL;
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'walk_admin') IS NOT NULL AS ok;
SELECT voucher.rotate_data_key(1) AS rolled_back;
ROLLBACK;
\c - postgres
SELECT rotated_through = :'walk_first' AS still_at_first_customer FROM voucher.tenant_key
 WHERE tenant_id = :'walk' AND kind = 'data' AND superseded_by IS NULL;
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'walk_admin') IS NOT NULL AS ok;
SELECT voucher.rotate_data_key(1) AS second_batch;
COMMIT;
-- the first customer back under the old key, behind the walk (as a transaction that reserved
-- encryptions before the rotation started may leave it)
\c - postgres
UPDATE voucher.customer SET key_id = :walk_old WHERE tenant_id = :'walk' AND customer_id = :'walk_first';
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'walk_admin') IS NOT NULL AS ok;
SELECT voucher.rotate_data_key(1) AS third_batch;
SELECT voucher.rotate_data_key(1) AS behind_the_walk;
SELECT voucher.rotate_data_key(1) AS done;
SELECT kind, state FROM voucher.tenant_keys WHERE kind = 'data' ORDER BY key_id;
SELECT count(*) AS readable, count(email) AS emails FROM voucher.customers;
COMMIT;
\c - postgres
SELECT count(*) AS rows_under_old_key FROM voucher.customer
 WHERE tenant_id = :'walk' AND key_id = :walk_old;
