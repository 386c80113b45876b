-- Brute-force protection: settings, lock-outs per customer, client and key, expiry, unlock,
-- the lockouts view, the audit rows, and authenticate floods per source address.
-- Times in hints are replaced by <time>/<n>: they depend on the clock.

\c - regress_op
SELECT voucher.create_tenant('guarded shop') AS shop \gset
SELECT voucher.create_api_key('admin', tenant => :'shop') AS admin \gset

\c - regress_client
CREATE FUNCTION pg_temp.t(sql text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(try(sql), 'retry after [^)]*\)', 'retry after <time> (in <n> s)')
$$;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('redeemer', 'shop front') AS redeemer \gset
SELECT voucher.create_api_key('redeemer', 'kiosk') AS kiosk \gset
SELECT voucher.create_campaign('ten off', discount_type => 'amount', discount_value => 10,
                               redemption_limit => NULL) AS c \gset
SELECT voucher.create_campaign('over', expires_at => now() - interval '1 day') AS old \gset
SELECT voucher.add_code(:'c', 'REAL-1') IS NOT NULL AS a, voucher.add_code(:'c', 'REAL-2') IS NOT NULL AS b,
       voucher.add_code(:'old', 'OLD-1') IS NOT NULL AS c;
COMMIT;

------------------------------------------------------------------------------------------------
-- settings: the registry, configure, validation (22023), admin keys only (42501)
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT setting, value, default_value FROM voucher.settings ORDER BY setting;
SELECT voucher.configure('customer_lockout_threshold', ' 3 ');
SELECT voucher.configure('customer_lockout_period', '8s');
SELECT voucher.configure('client_lockout_threshold', '4');
SELECT voucher.configure('key_lockout_threshold', '5');
SELECT voucher.configure('lockout_max_period', '12 s');
SELECT try($$SELECT voucher.configure('customer_lockout_treshold', '3')$$) AS unknown,
       try($$SELECT voucher.configure('customer_lockout_threshold', '0')$$) AS too_small,
       try($$SELECT voucher.configure('client_lockout_window', '15 fortnights')$$) AS bad_unit,
       try($$SELECT voucher.configure('brute_force_protection', 'maybe')$$) AS not_bool,
       try($$SELECT voucher.configure(NULL, '1')$$) AS no_setting;
SELECT setting, value, default_value, updated_by LIKE 'key:%' AS by_key
  FROM voucher.settings WHERE value <> default_value ORDER BY setting;
-- NULL goes back to the default
SELECT voucher.configure('client_lockout_window', '1h');
SELECT voucher.configure('client_lockout_window', NULL);
SELECT value FROM voucher.settings WHERE setting = 'client_lockout_window';
SELECT details FROM voucher.audit_log WHERE action = 'tenant.configured' ORDER BY id;
COMMIT;
SELECT try($$SELECT voucher.configure('customer_lockout_threshold', '1')$$) AS redeemer_cannot
  FROM (SELECT voucher.authenticate(:'redeemer')) x;

------------------------------------------------------------------------------------------------
-- a customer: locked out at the threshold, also for codes that exist; validate reports it
------------------------------------------------------------------------------------------------
SELECT voucher.authenticate(:'redeemer', session => true) IS NOT NULL AS ok;
-- each failing redeem rolls back (try() runs it in a subtransaction): the counter is kept
SELECT n, pg_temp.t(format($$SELECT * FROM voucher.redeem('GUESS-%s', customer => 'mallory')$$, n))
  FROM generate_series(1, 2) n;
SELECT valid, reason, sqlstate FROM voucher.validate('GUESS-3', customer => 'mallory');
-- the third failure locked mallory out: existing codes too, in redeem and validate
SELECT pg_temp.t($$SELECT * FROM voucher.redeem('REAL-1', customer => 'mallory')$$) AS real_code;
SELECT valid, regexp_replace(reason, 'retry after .*', 'retry after <time>') AS reason, sqlstate,
       voucher_id IS NULL AS nothing_revealed
  FROM voucher.validate('REAL-1', customer => 'mallory');
SELECT pg_temp.t($$SELECT * FROM voucher.redeem('GUESS-4', customer => 'mallory')$$) AS guess;
-- other customers of the same key are not affected, nor is mallory's client
SELECT discount FROM voucher.redeem('REAL-1', customer => 'alice');
SELECT discount FROM voucher.redeem('REAL-1', customer => 'carol', client => '198.51.100.1');
SELECT pg_temp.t($$SELECT * FROM voucher.redeem('REAL-1', customer => 'mallory', client => '198.51.100.1')$$)
    AS mallory_from_that_client;
-- not counted: codes that exist but fail a rule (the caller knew the code), bad input
SELECT n, x.sqlstate FROM generate_series(1, 4) n, voucher.validate('OLD-1', customer => 'dave') x;
SELECT try($$SELECT * FROM voucher.redeem('OLD-1', customer => 'dave')$$) AS expired;
SELECT try($$SELECT * FROM voucher.redeem('', customer => 'dave')$$) AS empty_code,
       try($$SELECT * FROM voucher.redeem('REAL-1', customer => 'dave', client => '')$$) AS empty_client,
       try($$SELECT * FROM voucher.redeem('REAL-1', customer => 'dave', client => repeat('x', 201))$$) AS long_client;

------------------------------------------------------------------------------------------------
-- a client: its own counter, whatever customers it names
------------------------------------------------------------------------------------------------
SELECT n, pg_temp.t(format($$SELECT * FROM voucher.redeem('GUESS-C%s', customer => 'cust-%s', client => '203.0.113.7')$$, n, n))
  FROM generate_series(1, 5) n;
SELECT pg_temp.t($$SELECT * FROM voucher.redeem('REAL-2', customer => 'bob', client => '203.0.113.7')$$) AS bob_from_locked_client;
SELECT discount FROM voucher.redeem('REAL-2', customer => 'bob', client => '203.0.113.8') AS bob_elsewhere;
SELECT discount FROM voucher.redeem('REAL-2', customer => 'cust-1') AS guessing_customer_not_locked;

------------------------------------------------------------------------------------------------
-- the key: only calls naming neither customer nor client count and are refused
------------------------------------------------------------------------------------------------
SELECT voucher.authenticate(:'kiosk', session => true) IS NOT NULL AS ok;
SELECT n, pg_temp.t(format($$SELECT * FROM voucher.redeem('GUESS-K%s')$$, n))
  FROM generate_series(1, 6) n;
SELECT sqlstate, voucher_id IS NULL AS nothing_revealed FROM voucher.validate('REAL-2');
SELECT discount FROM voucher.redeem('REAL-2', customer => 'erin') AS named_calls_still_work;
SELECT voucher.authenticate(:'redeemer', session => true) IS NOT NULL AS ok;
SELECT discount FROM voucher.redeem('REAL-2') AS other_key_anonymous;

------------------------------------------------------------------------------------------------
-- voucher.lockouts (admin): fingerprints, never identities; unlock; expiry
------------------------------------------------------------------------------------------------
SELECT voucher.authenticate(:'admin', session => true) IS NOT NULL AS ok;
SELECT l.kind, l.failures, l.refused, l.lockouts, l.locked_until > now() AS current,
       l.fingerprint = voucher.lockout_fingerprint(l.kind, CASE l.kind WHEN 'customer' THEN 'mallory'
           WHEN 'client' THEN '203.0.113.7' ELSE (SELECT id::text FROM voucher.api_keys WHERE label = 'kiosk') END)
           AS fingerprint_matches,
       length(l.fingerprint) AS fp_length
  FROM voucher.lockouts l ORDER BY kind;
SELECT count(*) AS plaintext_rows FROM voucher.lockouts l
 WHERE l::text ~ '(mallory|203\.0\.113\.7)';
SELECT voucher.unlock('client', '203.0.113.7') AS lifted, voucher.unlock('client', '203.0.113.7') AS again,
       voucher.unlock('customer', 'nobody') AS unknown;
SELECT try($$SELECT voucher.unlock('ip', 'x')$$) AS bad_kind,
       try($$SELECT voucher.unlock('client', NULL)$$) AS no_identity,
       try($$SELECT voucher.unlock('address', '10.0.0.1')$$) AS addresses_are_for_operators;
SELECT try($$SELECT voucher.unlock('customer', 'mallory')$$) AS redeemer_cannot,
       try($$SELECT count(*) FROM voucher.lockouts$$) AS nor_read
  FROM (SELECT voucher.authenticate(:'redeemer')) x;
SELECT voucher.authenticate(:'redeemer', session => true) IS NOT NULL AS ok;
SELECT discount FROM voucher.redeem('REAL-2', customer => 'bob', client => '203.0.113.7') AS client_unlocked;
SELECT valid AS dave_not_locked FROM voucher.validate('REAL-2', customer => 'dave');
-- mallory's lock-out (8 s) expires
SELECT voucher.authenticate(:'admin', session => true) IS NOT NULL AS ok;
SELECT pg_sleep(coalesce((SELECT greatest(0, extract(epoch FROM locked_until - clock_timestamp())::float8 + 0.2)
                            FROM voucher.lockouts WHERE kind = 'customer'), 0));
SELECT voucher.authenticate(:'redeemer', session => true) IS NOT NULL AS ok;
SELECT discount FROM voucher.redeem('REAL-2', customer => 'mallory') AS mallory_after_expiry;
-- a second lock-out would last twice as long (growing waits), capped by lockout_max_period
SELECT n, pg_temp.t(format($$SELECT * FROM voucher.redeem('AGAIN-%s', customer => 'mallory')$$, n))
  FROM generate_series(1, 4) n;
SELECT voucher.authenticate(:'admin', session => true) IS NOT NULL AS ok;
SELECT kind, lockouts, round(extract(epoch FROM locked_until - locked_at)) AS seconds
  FROM voucher.lockouts WHERE kind = 'customer';
SELECT voucher.unlock('customer', 'mallory') AS lifted;

------------------------------------------------------------------------------------------------
-- the audit trail: a row per failed look-up before a lock-out, none after; one event when an
-- identity is locked out and one when it is unlocked, with the refused attempts summed up;
-- fingerprints only
------------------------------------------------------------------------------------------------
SELECT action, details ->> 'kind' AS kind, details ->> 'reason' AS reason,
       details ->> 'failures' AS failures, details ->> 'refused_while_locked' AS refused,
       details ->> 'fingerprint' = voucher.lockout_fingerprint(details ->> 'kind',
           CASE details ->> 'kind' WHEN 'customer' THEN 'mallory' WHEN 'client' THEN '203.0.113.7'
           ELSE (SELECT id::text FROM voucher.api_keys WHERE label = 'kiosk') END) AS fingerprint_matches
  FROM voucher.audit_log WHERE action LIKE 'throttle.%' ORDER BY id;
SELECT count(*) AS plaintext_identities FROM voucher.audit_log
 WHERE action LIKE 'throttle.%' AND details::text ~ '(mallory|203\.0\.113\.7)';
-- (mallory's: the customer id in them is encrypted, so they are told apart by their codes)
SELECT details ->> 'code' AS code, details ->> 'sqlstate' AS sqlstate,
       details::text !~ 'mallory' AS no_plaintext_customer
  FROM voucher.audit_log
 WHERE action = 'redemption.failed' AND details ->> 'code' ~ '^(GUESS|AGAIN)[0-9]+$'
 ORDER BY id;
-- protection off: nothing is counted, nobody is locked out
SELECT voucher.configure('brute_force_protection', 'off');
SELECT n, pg_temp.t(format($$SELECT * FROM voucher.redeem('OFF-%s', customer => 'zed')$$, n))
  FROM generate_series(1, 4) n;
SELECT count(*) AS customer_lockouts FROM voucher.lockouts WHERE kind = 'customer';
SELECT voucher.configure('brute_force_protection', 'on');
SELECT voucher.logout();

------------------------------------------------------------------------------------------------
-- authenticate: bad keys per source address (here a Unix socket: the database role)
------------------------------------------------------------------------------------------------
\c - postgres
CREATE ROLE regress_flood LOGIN IN ROLE voucher_client;
\c - regress_op
SELECT voucher.create_api_key('auditor', 'revoked soon', tenant => :'shop') AS revoked \gset
\c - regress_client
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok,
       voucher.revoke_api_key((SELECT id FROM voucher.api_keys WHERE label = 'revoked soon'));
\c - regress_flood
-- the revoked key leaves a key.refused row (one) while the source is not locked out
SELECT try(format('SELECT voucher.authenticate(%L)', :'revoked')) AS revoked_key;
-- 25 bad keys: 19 more reach the threshold of 20, then VC012
SELECT regexp_replace(try(format('SELECT voucher.authenticate(%L)', 'vk_' || md5(n::text))),
                      'retry after [^)]*\)', 'retry after <time> (in <n> s)') AS outcome, count(*)
  FROM generate_series(1, 25) n GROUP BY 1 ORDER BY 1;
-- the revoked key again: VC012, and no row per attempt
SELECT regexp_replace(try(format('SELECT voucher.authenticate(%L)', :'revoked')),
                      'retry after [^)]*\)', 'retry after <time> (in <n> s)') AS revoked_key
  FROM generate_series(1, 3);
-- a valid key is still accepted
SELECT voucher.authenticate(:'admin', session => true) IS NOT NULL AS valid_key_accepted;
SELECT count(*) AS key_refused_rows FROM voucher.audit_log WHERE action = 'key.refused';
SELECT voucher.logout();
-- operators see and lift source-address lock-outs
\c - regress_op
-- preloaded: the counters are in shared memory
SELECT entries, shared FROM voucher._throttle_capacity();
SELECT kind, fingerprint = voucher.lockout_fingerprint('address', 'regress_flood') AS is_flood,
       failures, refused
  FROM voucher.lockouts;
SELECT voucher.unlock('address', 'regress_flood') AS lifted;
SELECT count(*) AS address_lockouts FROM voucher.lockouts;
\c - regress_flood
SELECT try(format('SELECT voucher.authenticate(%L)', 'vk_nope')) AS after_unlock;
\c - postgres
DROP ROLE regress_flood;
