-- The extension's roles, schema and privileges. PUBLIC can do nothing; clients can call the
-- tenant API and read its views, never touch a table; functions and views that touch tenant
-- data run as voucher_definer, which row-level security applies to.

-- \dx shows the version from Cargo.toml
SELECT extname, extversion, extnamespace::regnamespace AS schema
  FROM pg_extension WHERE extname = 'voucher_ext';

-- the group roles, none of them able to log in, bypass RLS or act as superuser
SELECT rolname, rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb
  FROM pg_roles WHERE rolname LIKE 'voucher\_%' ORDER BY rolname;

-- operators can do what clients can
SELECT pg_has_role('voucher_operator', 'voucher_client', 'MEMBER') AS operator_is_client,
       pg_has_role('voucher_client', 'voucher_operator', 'MEMBER') AS client_is_operator;

-- nobody may act as voucher_definer
SELECT count(*) AS definer_members FROM pg_auth_members WHERE roleid = 'voucher_definer'::regrole;

-- schema: usage for our roles, nothing for PUBLIC
SELECT r AS role, has_schema_privilege(r, 'voucher', 'USAGE') AS usage,
       has_schema_privilege(r, 'voucher', 'CREATE') AS "create"
  FROM unnest(ARRAY['voucher_client', 'voucher_operator', 'voucher_definer']) r;
SELECT count(*) AS public_schema_grants
  FROM pg_namespace n, aclexplode(n.nspacl) a
 WHERE n.nspname = 'voucher' AND a.grantee = 0;

-- no function, table, view or sequence of the extension is granted to PUBLIC
SELECT count(*) AS public_functions FROM pg_proc p
 WHERE p.pronamespace = 'voucher'::regnamespace
   AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0));
SELECT count(*) AS public_relations FROM pg_class c
 WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'm')
   AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0);

-- who may execute what: the whole function surface, one row per function
SELECT p.proname AS function, p.pronargs AS args,
       has_function_privilege('voucher_client', p.oid, 'EXECUTE') AS client,
       has_function_privilege('voucher_operator', p.oid, 'EXECUTE') AS operator,
       has_function_privilege('voucher_definer', p.oid, 'EXECUTE') AS definer,
       p.prosecdef AS secdef, p.proowner::regrole AS owner
  FROM pg_proc p WHERE p.pronamespace = 'voucher'::regnamespace
 ORDER BY p.proname::text COLLATE "C", p.pronargs;

-- tables: clients and operators get nothing; every table has RLS enabled and forced
SELECT c.relname AS table_name, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced,
       has_table_privilege('voucher_client', c.oid, 'SELECT') AS client_select,
       has_table_privilege('voucher_operator', c.oid, 'SELECT') AS operator_select,
       has_table_privilege('voucher_definer', c.oid, 'DELETE') AS definer_delete
  FROM pg_class c WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'r'
 ORDER BY 1;

-- every primary key and unique constraint starts with tenant_id
SELECT con.conrelid::regclass AS table_name, con.conname
  FROM pg_constraint con
 WHERE con.connamespace = 'voucher'::regnamespace AND con.contype IN ('p', 'u')
   AND (SELECT attname FROM pg_attribute
         WHERE attrelid = con.conrelid AND attnum = con.conkey[1]) <> 'tenant_id';

-- views run as voucher_definer, so RLS applies to what they read; clients may read them
SELECT c.relname AS view_name, c.relowner::regrole AS owner,
       has_table_privilege('voucher_client', c.oid, 'SELECT') AS client_select
  FROM pg_class c WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'v'
 ORDER BY 1;

-- a customer created in this session takes an event id for its audit row (the sequence's oid
-- is cached per backend): after the extension is created anew below, the new sequence is used
-- (that transaction rolled back: the tests after this one count the tenants' keys)
BEGIN;
SELECT voucher.authenticate(voucher.create_api_key('admin',
           tenant => voucher.create_tenant('before the drop'))) IS NOT NULL AS ok;
SELECT voucher.upsert_customer('cached') IS NOT NULL AS created;
COMMIT;

-- drop and create again: the roles (cluster-wide) and the schema (created by CREATE EXTENSION
-- from the control file, so not a member) survive, empty; everything else is rebuilt
DROP EXTENSION voucher_ext;
SELECT count(*) AS roles_left FROM pg_roles WHERE rolname LIKE 'voucher\_%';
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'voucher'::regnamespace)
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'voucher'::regnamespace) AS objects_left;
CREATE EXTENSION voucher_ext;
SELECT extversion FROM pg_extension WHERE extname = 'voucher_ext';
BEGIN;
SELECT voucher.authenticate(voucher.create_api_key('admin',
           tenant => voucher.create_tenant('after the drop'))) IS NOT NULL AS ok;
SELECT voucher.upsert_customer('cached') IS NOT NULL AS created;
SELECT action, event_id FROM voucher.audit_event WHERE action = 'customer.created';
ROLLBACK;

-- a role that can log in but holds no voucher role can do nothing at all
CREATE ROLE regress_nobody LOGIN;
\c - regress_nobody
SELECT try('SELECT voucher.current_tenant()') AS current_tenant,
       try('SELECT voucher.authenticate(''vk_000000000000_0000000000000000000000000000000000000000000000000000'')') AS authenticate;
\c - postgres
DROP ROLE regress_nobody;
