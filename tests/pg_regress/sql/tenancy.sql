-- Tenants, API keys and the tenant context: the isolation boundary.
-- Logins and try() come from setup.sql. Keys and ids stay in psql variables, never printed;
-- try() shows an error's SQLSTATE.

-- a client allowed to SET ROLE to another client login
GRANT regress_client2 TO regress_client;
-- this cluster preloads the library, so revocation is checked through shared memory
-- (the cargo pgrx tests cover the fallback without it)
SELECT voucher._preloaded() AS revocation_from_shared_memory;

------------------------------------------------------------------------------------------------
-- Operators create tenants and issue their first keys
------------------------------------------------------------------------------------------------
\c - regress_op
SELECT voucher.create_tenant('tenant a') AS tenant_a \gset
SELECT voucher.create_tenant('tenant b') AS tenant_b \gset
SELECT voucher.create_api_key('admin', 'a admin', tenant => :'tenant_a') AS a_admin \gset
SELECT voucher.create_api_key('admin', 'b admin', tenant => :'tenant_b') AS b_admin \gset
-- an operator is not in any tenant by default
SELECT voucher.current_tenant() IS NULL AS no_context;
-- bad input: a clear error, nothing created
SELECT try($$SELECT voucher.create_tenant('')$$) AS empty_name,
       try($$SELECT voucher.create_tenant(NULL)$$) AS null_name,
       try($$SELECT voucher.create_tenant(E'a\nb')$$) AS control_chars;
SELECT try(format('SELECT voucher.create_api_key(%L, tenant => %L)', 'root', :'tenant_a')) AS unknown_role;
SELECT try(format('SELECT voucher.create_api_key(NULL, tenant => %L)', :'tenant_a')) AS null_role;
SELECT try($$SELECT voucher.create_api_key('admin', tenant => '00000000-0000-0000-0000-000000000000')$$) AS unknown_tenant;
SELECT try(format('SELECT voucher.create_api_key(%L, expires_at => now() - interval ''1 day'', tenant => %L)', 'admin', :'tenant_a')) AS expired;
SELECT try(format('SELECT voucher.create_api_key(%L, repeat(''x'', 201), tenant => %L)', 'admin', :'tenant_a')) AS long_label;

-- keys look like vk_<12>_<52> and differ
SELECT :'a_admin' ~ '^vk_[0-9a-hjkmnp-tv-z]{12}_[0-9a-hjkmnp-tv-z]{52}$' AS well_formed,
       :'a_admin' <> :'b_admin' AS distinct_keys;

-- the admin of each tenant issues one key of every role
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'a_admin') = :'tenant_a' AS authenticated_as_a;
SELECT voucher.create_api_key('manager', 'a manager') AS a_manager \gset
SELECT voucher.create_api_key('redeemer', 'a redeemer') AS a_redeemer \gset
SELECT voucher.create_api_key('auditor', 'a auditor') AS a_auditor \gset
SELECT voucher.create_api_key('auditor', 'a short-lived', now() + interval '1 second') AS a_brief \gset
SELECT id AS a_admin_id FROM voucher.api_keys WHERE label = 'a admin' \gset
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'b_admin') = :'tenant_b' AS authenticated_as_b;
SELECT voucher.create_api_key('redeemer', 'b redeemer') AS b_redeemer \gset
SELECT id AS b_admin_id FROM voucher.api_keys WHERE label = 'b admin' \gset
SELECT prefix AS b_admin_prefix FROM voucher.api_keys WHERE label = 'b admin' \gset
COMMIT;

-- the plaintext key is stored nowhere; only its SHA-256
\c - postgres
SELECT count(*) AS plaintext_stored FROM voucher.credential
 WHERE prefix = left(:'a_admin', 15) AND key_hash <> sha256(convert_to(:'a_admin', 'UTF8'));
SELECT count(*) AS rows_holding_the_key FROM voucher.credential c
 WHERE position(:'a_admin' IN c::text) > 0;
-- the refused calls above left nothing behind
SELECT count(*) AS bad_tenants FROM voucher.tenant WHERE name = '' OR name ~ E'\n';
SELECT count(*) AS keys_per_tenant FROM voucher.credential GROUP BY tenant_id ORDER BY 1;

------------------------------------------------------------------------------------------------
-- Without a context a client sees nothing and can do nothing but authenticate
------------------------------------------------------------------------------------------------
\c - regress_client
SELECT voucher.current_tenant() IS NULL AS no_context;
SELECT count(*) AS keys_visible FROM voucher.api_keys;
SELECT try($$SELECT voucher.create_api_key('admin')$$) AS create_key,
       try(format('SELECT voucher.revoke_api_key(%L)', :'b_admin_id')) AS revoke_key;

------------------------------------------------------------------------------------------------
-- Authenticated as tenant A, against tenant B's data
------------------------------------------------------------------------------------------------
SELECT voucher.authenticate(:'a_admin', session => true) = :'tenant_a' AS session_as_a;

-- the views show A's rows only
SELECT label, role FROM voucher.api_keys ORDER BY label;
SELECT count(*) AS b_rows_visible FROM voucher.api_keys
 WHERE id = :'b_admin_id' OR prefix = :'b_admin_prefix' OR label LIKE 'b %';

-- every table, every DML statement: refused outright (no client holds any table privilege)
SELECT c.relname AS table_name,
       try(format('SELECT * FROM voucher.%I', c.relname)) AS "select",
       try(format('UPDATE voucher.%I SET tenant_id = tenant_id', c.relname)) AS "update",
       try(format('DELETE FROM voucher.%I', c.relname)) AS "delete",
       try(format('INSERT INTO voucher.%I (tenant_id) VALUES (%L)', c.relname, :'tenant_b')) AS "insert",
       try(format('TRUNCATE voucher.%I', c.relname)) AS "truncate"
  FROM pg_class c
 WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;

-- every function, with B's ids
SELECT try(format('SELECT voucher.revoke_api_key(%L)', :'b_admin_id')) AS revoke_b_key;
SELECT try(format('SELECT voucher.create_api_key(%L, %L, tenant => %L)', 'admin', 'planted', :'tenant_b')) AS key_for_b;
SELECT try(format('SELECT voucher.act_as(%L)', :'tenant_b')) AS act_as_b;
SELECT try($$SELECT voucher.create_tenant('mine now')$$) AS create_tenant;
-- internal functions are not callable, or reveal nothing beyond the caller's own context
SELECT try($$SELECT voucher._authorize('manage_keys')$$) AS authorize;
SELECT voucher._key_probe() IS NULL AS probe_is_empty;
SELECT voucher._can_read('read_keys') AS can_read_own_keys;

-- forging a context by plain SQL
SET voucher.context_token = 'forged';
SELECT set_config('voucher.context_token', 'forged', false);
SET LOCAL voucher.context_token = 'forged';
RESET voucher.context_token;
SET voucher.tenant = :'tenant_b';
SELECT set_config('voucher.tenant', :'tenant_b', false);
ALTER ROLE regress_client SET voucher.context_token = 'forged';
ALTER ROLE regress_client IN DATABASE voucher_regress SET voucher.context_token = 'forged';
SHOW voucher.context_token;
SELECT current_setting('voucher.context_token');
-- SET ROLE changes the database role, not the tenant context
SET ROLE regress_client2;
SELECT current_user, voucher.current_tenant() = :'tenant_a' AS still_a;
RESET ROLE;
-- still tenant A after all that, and still nothing of B's
SELECT voucher.current_tenant() = :'tenant_a' AS still_a;
SELECT count(*) AS b_rows_visible FROM voucher.api_keys WHERE label LIKE 'b %';

-- even a superuser who copies the token cannot hand a context to another session
\c - postgres
ALTER ROLE regress_client2 SET voucher.context_token = 'forged';
\c - regress_client2
SELECT voucher.current_tenant() IS NULL AS no_context;
SELECT count(*) AS keys_visible FROM voucher.api_keys;
\c - postgres
ALTER ROLE regress_client2 RESET voucher.context_token;
SET voucher.context_token = 'forged';
SELECT voucher.current_tenant() IS NULL AS superuser_has_no_context;
RESET voucher.context_token;

------------------------------------------------------------------------------------------------
-- Scope of the context
------------------------------------------------------------------------------------------------
\c - regress_client
-- default: the current transaction only
BEGIN;
SELECT voucher.authenticate(:'a_admin') IS NOT NULL AS ok;
SELECT voucher.current_tenant() = :'tenant_a' AS in_transaction;
COMMIT;
SELECT voucher.current_tenant() IS NULL AS gone_after_commit;
BEGIN;
SELECT voucher.authenticate(:'a_admin') IS NOT NULL AS ok;
ROLLBACK;
SELECT voucher.current_tenant() IS NULL AS gone_after_rollback;
-- in autocommit mode the context ends with the statement that set it
SELECT voucher.authenticate(:'a_admin') IS NOT NULL AS ok;
SELECT voucher.current_tenant() IS NULL AS gone;
-- a savepoint rolled back restores the context that was there before
BEGIN;
SELECT voucher.authenticate(:'a_admin') IS NOT NULL AS ok;
SAVEPOINT s;
SELECT voucher.authenticate(:'b_admin') IS NOT NULL AS ok;
SELECT voucher.current_tenant() = :'tenant_b' AS now_b;
ROLLBACK TO SAVEPOINT s;
SELECT voucher.current_tenant() = :'tenant_a' AS a_again;
COMMIT;
-- session scope lasts until logout, RESET ALL or DISCARD ALL (what a pooler runs)
SELECT voucher.authenticate(:'a_admin', session => true) IS NOT NULL AS ok;
SELECT voucher.current_tenant() = :'tenant_a' AS session_a;
SELECT voucher.logout();
SELECT voucher.current_tenant() IS NULL AS logged_out;
SELECT voucher.authenticate(:'a_admin', session => true) IS NOT NULL AS ok;
RESET ALL;
SELECT voucher.current_tenant() IS NULL AS reset_all_clears;
SELECT voucher.authenticate(:'a_admin', session => true) IS NOT NULL AS ok;
DISCARD ALL;
SELECT voucher.current_tenant() IS NULL AS discard_all_clears;
-- a transaction-scoped context inside a session-scoped one ends with its transaction
SELECT voucher.authenticate(:'a_admin', session => true) IS NOT NULL AS ok;
BEGIN;
SELECT voucher.authenticate(:'b_admin') IS NOT NULL AS ok;
SELECT voucher.current_tenant() = :'tenant_b' AS b_inside;
COMMIT;
SELECT voucher.current_tenant() = :'tenant_a' AS a_after;
SELECT voucher.logout();

------------------------------------------------------------------------------------------------
-- Key roles: each allowed exactly what the contract says, the rest refused with 42501
------------------------------------------------------------------------------------------------
CREATE TEMP TABLE role_keys (role text, key text);
INSERT INTO role_keys VALUES ('admin', :'a_admin'), ('manager', :'a_manager'),
                             ('redeemer', :'a_redeemer'), ('auditor', :'a_auditor');
BEGIN;
SELECT k.role,
       try(format('SELECT voucher.authenticate(%L); SELECT voucher.create_api_key(''auditor'', ''matrix'')', k.key)) AS create_key,
       try(format('SELECT voucher.authenticate(%L); SELECT * FROM voucher.api_keys', k.key)) AS list_keys,
       try(format('SELECT voucher.authenticate(%L); SELECT voucher.revoke_api_key(%L)', k.key, '00000000-0000-0000-0000-000000000000')) AS revoke_key
  FROM role_keys k ORDER BY k.role;
ROLLBACK;

------------------------------------------------------------------------------------------------
-- Bad, revoked and expired keys: 28000, one message for all
------------------------------------------------------------------------------------------------
SELECT try($$SELECT voucher.authenticate('not a key')$$) AS garbage,
       try('SELECT voucher.authenticate(NULL)') AS null_key;
-- a NULL session flag is bad input (22004), for a good key too, and opens no context
SELECT try(format('SELECT voucher.authenticate(%L, NULL)', :'a_admin')) AS null_session,
       try(format('SELECT voucher.authenticate(%L, session => NULL)', :'a_admin')) AS null_session_named,
       voucher.current_tenant() IS NULL AS no_context;
SELECT try(format('SELECT voucher.authenticate(%L)', left(:'a_admin', 67) || 'x')) AS one_char_off,
       try(format('SELECT voucher.authenticate(%L)', upper(:'a_admin'))) AS upper_case;
SELECT try(format('SELECT voucher.authenticate(%L)', replace(:'a_admin', left(:'a_admin', 15), left(:'b_admin', 15)))) AS other_prefix;

-- last_used_at is recorded
BEGIN;
SELECT voucher.authenticate(:'a_admin') IS NOT NULL AS ok;
SELECT last_used_at IS NOT NULL AS used FROM voucher.api_keys WHERE label = 'a admin';
SELECT last_used_at IS NULL AS never_used FROM voucher.api_keys WHERE label = 'a manager';
COMMIT;

-- revocation: at once, also for a session already authenticated with the key
SELECT voucher.authenticate(:'a_auditor', session => true) IS NOT NULL AS ok;
SELECT count(*) > 0 AS auditor_reads_keys FROM voucher.api_keys;
BEGIN;
SELECT voucher.authenticate(:'a_admin') IS NOT NULL AS ok;
SELECT voucher.revoke_api_key(id) FROM voucher.api_keys WHERE label = 'a auditor';
SELECT voucher.revoke_api_key(id) FROM voucher.api_keys WHERE label = 'a auditor';
SELECT revoked_at IS NOT NULL AS revoked FROM voucher.api_keys WHERE label = 'a auditor';
COMMIT;
-- back in the auditor's session context: its next call fails
SELECT try('SELECT count(*) FROM voucher.api_keys') AS next_call;
SELECT voucher.current_tenant() IS NULL AS context_dropped;
SELECT try(format('SELECT voucher.authenticate(%L)', :'a_auditor')) AS revoked_key;

-- expiry
SELECT voucher.authenticate(:'a_brief', session => true) IS NOT NULL AS ok_before_expiry;
SELECT pg_sleep(1.2);
SELECT try('SELECT count(*) FROM voucher.api_keys') AS next_call;
SELECT try(format('SELECT voucher.authenticate(%L)', :'a_brief')) AS expired_key;

\c - postgres
-- nothing of B's was changed or planted by A, and nobody created a tenant
SELECT count(*) AS planted_keys FROM voucher.credential WHERE label IN ('planted', 'matrix');
SELECT count(*) AS b_keys_revoked FROM voucher.credential
 WHERE tenant_id = :'tenant_b' AND revoked_at IS NOT NULL;
SELECT count(*) AS stray_tenants FROM voucher.tenant WHERE name = 'mine now';
-- an operator acting as a tenant, with a chosen key role
\c - regress_op
BEGIN;
SELECT voucher.act_as(:'tenant_b', 'auditor');
SELECT voucher.current_tenant() = :'tenant_b' AS acting_as_b;
SELECT label, role FROM voucher.api_keys ORDER BY label;
SELECT try($$SELECT voucher.create_api_key('admin')$$) AS auditor_creates_key;
COMMIT;
SELECT try(format('SELECT voucher.act_as(%L, %L)', :'tenant_b', 'superhero')) AS bad_role,
       try($$SELECT voucher.act_as('00000000-0000-0000-0000-000000000000')$$) AS unknown_tenant,
       try('SELECT voucher.act_as(NULL)') AS null_tenant;
SELECT try(format('SELECT voucher.act_as(%L, %L, NULL)', :'tenant_b', 'admin')) AS null_session,
       voucher.current_tenant() IS NULL AS no_context;

\c - postgres

-- No table has a foreign key to voucher.tenant (a parallel pg_restore ignores the order of the
-- keys among an extension's tables, sql/tenancy.sql): triggers do for direct DML what the keys
-- did. Deleting a tenant deletes its keys, settings, tenant keys and campaigns; re-keying it or
-- truncating the tenants is refused while they exist; none of them can be re-pointed at a
-- tenant that does not exist (rolled back)
BEGIN;
SELECT voucher.create_tenant('tenant gone') AS tenant_gone \gset
SELECT voucher.create_api_key('admin', 'gone admin', tenant => :'tenant_gone') AS gone_admin \gset
SELECT voucher.authenticate(:'gone_admin') IS NOT NULL AS ok;
SELECT voucher.configure('customer_retention_days', '30');
SELECT voucher.create_campaign('gone campaign') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('gone-1') IS NOT NULL AS ok;
SELECT voucher.logout();
CREATE TEMP VIEW gone_rows AS
SELECT (SELECT count(*) FROM voucher.credential WHERE tenant_id = :'tenant_gone') AS keys,
       (SELECT count(*) FROM voucher.tenant_setting WHERE tenant_id = :'tenant_gone') AS settings,
       (SELECT count(*) FROM voucher.tenant_key WHERE tenant_id = :'tenant_gone') AS tenant_keys,
       (SELECT count(*) FROM voucher.campaign WHERE tenant_id = :'tenant_gone') AS campaigns;
SELECT * FROM gone_rows;
SELECT try(format('UPDATE voucher.tenant SET tenant_id = gen_random_uuid() WHERE tenant_id = %L',
                  :'tenant_gone')) AS rekey_tenant,
       try(format('UPDATE voucher.tenant SET name = name WHERE tenant_id = %L',
                  :'tenant_gone')) AS other_update;
SELECT try(format('UPDATE voucher.credential SET tenant_id = gen_random_uuid() WHERE tenant_id = %L',
                  :'tenant_gone')) AS repoint_key,
       try(format('UPDATE voucher.tenant_setting SET tenant_id = gen_random_uuid() WHERE tenant_id = %L',
                  :'tenant_gone')) AS repoint_setting;
SELECT try(format('UPDATE voucher.tenant_key SET tenant_id = gen_random_uuid() WHERE tenant_id = %L',
                  :'tenant_gone')) AS repoint_tenant_key,
       try(format('UPDATE voucher.campaign SET tenant_id = gen_random_uuid() WHERE tenant_id = %L',
                  :'tenant_gone')) AS repoint_campaign;
SELECT try('TRUNCATE voucher.tenant CASCADE') AS truncate_tenants;
SELECT try(format('DELETE FROM voucher.tenant WHERE tenant_id = %L', :'tenant_gone')) AS delete_tenant;
SELECT * FROM gone_rows;
ROLLBACK;
