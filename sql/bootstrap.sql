-- Roles are cluster-wide and outlive the extension: created once here, never dropped by
-- DROP EXTENSION (another database may still use them).
--
--   voucher_operator  runs the platform: creates tenants, issues their first keys, acts as a tenant
--   voucher_client    calls voucher.authenticate and, once authenticated, the tenant API
--   voucher_definer   internal: the role our functions run as. Not a superuser, no BYPASSRLS, no
--                     LOGIN and no members, so row-level security holds inside our own code.
DO $bootstrap$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['voucher_operator', 'voucher_client', 'voucher_definer'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format(
                'CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', r);
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles
               WHERE rolname IN ('voucher_operator', 'voucher_client', 'voucher_definer')
                 AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'voucher roles must not be superusers or have BYPASSRLS'
            USING ERRCODE = '42501',
                  HINT = 'ALTER ROLE ... NOSUPERUSER NOBYPASSRLS, then create the extension again';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'voucher_definer' AND rolcanlogin)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members
                  WHERE roleid = 'voucher_definer'::regrole) THEN
        RAISE EXCEPTION 'voucher_definer must have no LOGIN and no members'
            USING ERRCODE = '42501',
                  HINT = 'it is the role the extension''s functions run as; nobody may act as it';
    END IF;

    IF NOT pg_catalog.pg_has_role('voucher_operator', 'voucher_client', 'MEMBER') THEN
        GRANT voucher_client TO voucher_operator;
    END IF;
END
$bootstrap$;

COMMENT ON SCHEMA voucher IS 'voucher_ext: codes, validation, atomic redemption, tenant isolation, audit';
