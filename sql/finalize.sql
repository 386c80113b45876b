-- Privileges, applied after every other object exists.

-- pg_dump: every table and sequence of the extension is marked as configuration data, so dumps
-- carry their rows (sql/ops.sql).
SELECT voucher._ops_mark_for_dump() > 0 AS marked;

-- PUBLIC gets nothing.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA voucher FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA voucher FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA voucher FROM PUBLIC;
REVOKE ALL ON SCHEMA voucher FROM PUBLIC;
GRANT USAGE ON SCHEMA voucher TO voucher_client, voucher_operator, voucher_definer;

-- voucher_definer: the table access our functions need, nothing more. Clients have none.
GRANT SELECT, INSERT ON voucher.tenant TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (revoked_at, last_used_at) ON voucher.credential TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (active) ON voucher.campaign TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (active, redeemed_count, balance) ON voucher.code TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (used) ON voucher.code_use TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (key_id, source_id, email, email_index, name, metadata, updated_at,
                               audit_key)
    ON voucher.customer TO voucher_definer;
-- crypto: tenant keys (wrapped); the rotations re-wrap and re-encrypt
GRANT SELECT, INSERT, UPDATE (superseded_by, state, master_key_id, wrapped, encryptions, retired_at,
                               destroyed_at, rotated_through)
    ON voucher.tenant_key TO voucher_definer;
GRANT USAGE ON SEQUENCE voucher.tenant_key_id_seq TO voucher_definer;
GRANT UPDATE (key_id, metadata) ON voucher.redemption TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (used) ON voucher.customer_usage TO voucher_definer;
GRANT SELECT, INSERT, UPDATE (rolled_back_at, rollback_reason, rolled_back_by)
    ON voucher.redemption TO voucher_definer;
GRANT UPDATE (audit_retention) ON voucher.tenant TO voucher_definer;
-- privacy: consent history; forgetting replaces the customer's blind index, destroys its key
GRANT SELECT, INSERT, DELETE ON voucher.consent TO voucher_definer;
GRANT UPDATE (source_index, forgotten_at) ON voucher.customer TO voucher_definer;
-- the audit log: insert-only for our functions (DELETE only through purge_audit, which the
-- append-only trigger recognizes); the state row is updated by seal_audit and purge_audit
GRANT SELECT, INSERT, DELETE ON voucher.audit_event, voucher.audit_chain TO voucher_definer;
GRANT SELECT, INSERT, UPDATE ON voucher.audit_state TO voucher_definer;
GRANT USAGE, SELECT ON SEQUENCE voucher.audit_event_id_seq TO voucher_definer;
GRANT SELECT, INSERT, DELETE, UPDATE (value, updated_at, updated_by) ON voucher.tenant_setting
    TO voucher_definer;

-- SECURITY DEFINER functions and views run as voucher_definer, so RLS applies inside them
-- (the extension owner is usually a superuser, and superusers bypass RLS).
GRANT CREATE ON SCHEMA voucher TO voucher_definer;
DO $own$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS f FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'voucher'::regnamespace AND p.prosecdef
                -- the integrity triggers that replace the foreign keys among our tables see every
                -- tenant's rows, as the keys' checks did (sql/redeem.sql, sql/codes.sql,
                -- sql/tenancy.sql, sql/privacy.sql): they stay the extension owner's (a superuser)
                AND p.oid <> ALL (ARRAY['voucher._redemptions_keep_refs()',
                                        'voucher._codes_keep_refs()',
                                        'voucher._tenant_keep_refs()',
                                        'voucher._consent_keep_refs()']::pg_catalog.regprocedure[]) LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO voucher_definer', r.f);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS v FROM pg_catalog.pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'v' LOOP
        EXECUTE pg_catalog.format('ALTER VIEW %s OWNER TO voucher_definer', r.v);
    END LOOP;
END
$own$;
REVOKE CREATE ON SCHEMA voucher FROM voucher_definer;

-- The tenant API: voucher_client (and, through membership, voucher_operator).
GRANT EXECUTE ON FUNCTION
    voucher.authenticate(text, boolean),
    voucher.current_tenant(),
    voucher.logout(),
    voucher.create_api_key(text, text, timestamptz, uuid),
    voucher.revoke_api_key(uuid),
    voucher.create_campaign(text, text, text, numeric, numeric, numeric, text, timestamptz,
                            timestamptz, integer, integer, numeric, text, text, text, text,
                            boolean, jsonb),
    voucher.set_voucher_active(text, boolean),
    voucher.generate_codes(uuid, integer),
    voucher.add_code(uuid, text),
    voucher.preview_codes(integer, text, text, text, text, boolean),
    voucher.normalize_code(text),
    voucher.set_campaign_active(uuid, boolean),
    voucher.upsert_customer(text, text, text, jsonb),
    voucher.validate(text, text, numeric, text),
    voucher.redeem(text, text, numeric, numeric, text, text, jsonb, text),
    voucher.configure(text, text),
    voucher.unlock(text, text),
    voucher.lockout_fingerprint(text, text),
    voucher.find_customer(text),
    voucher.rotate_data_key(integer),
    voucher.destroy_retired_keys(interval),
    voucher.rollback_redemption(uuid, text),
    voucher.verify_audit(),
    voucher.purge_audit(interval),
    voucher.set_audit_retention(interval),
    voucher.set_consent(text, text, boolean, text),
    voucher.export_customer(text, boolean),
    voucher.forget_customer(text),
    voucher.forget_inactive_customers(integer)
TO voucher_client;
GRANT SELECT ON voucher.api_keys, voucher.campaigns, voucher.vouchers, voucher.customers,
                voucher.redemptions, voucher.audit_log, voucher.settings, voucher.lockouts,
                voucher.tenant_keys, voucher.consents
TO voucher_client;
-- rotate_master_key checks for a superuser itself; PUBLIC has nothing, so only superusers run it

-- Operators only.
GRANT EXECUTE ON FUNCTION
    voucher.create_tenant(text),
    voucher.act_as(uuid, text, boolean),
    voucher.seal_audit(),
    voucher.run_customer_retention(integer),
    voucher._throttle_capacity(),
    voucher.key_fingerprints()
TO voucher_operator;

-- Internal helpers. Views and policies call some of them with the caller's privileges; they
-- only ever reveal the caller's own context.
GRANT EXECUTE ON FUNCTION
    voucher._authorize(text),
    voucher._actor_label(),
    voucher._audit(text, text, text, jsonb),
    voucher._audit_hash(uuid, bigint, timestamptz, text, text, text, text, text),
    voucher._check_customer(text, text, text, jsonb),
    voucher._credentials_changed(),
    voucher._code_shape(text, text, text, text, boolean),
    voucher._discount(text, numeric, numeric, text, numeric),
    voucher._redemption_details(uuid, uuid, uuid, text, numeric, numeric, numeric, numeric, text),
    voucher._claimable(timestamptz, timestamptz, integer, integer, numeric, integer, text, numeric,
                       text, numeric, numeric, boolean),
    voucher._by_definer(),                             -- the direct-DML audit triggers' WHEN
    voucher._money(numeric, text),
    voucher._raise(text, text),
    voucher._reason(text),
    voucher._settings_changed(),
    voucher._uuid_v7(),
    voucher.normalize_code(text),
    voucher._customer_by_source(uuid, text),
    voucher._open_personal(uuid, uuid, text),
    voucher._pseudonymize(uuid, uuid),
    voucher._log_unaudited_export(),
    voucher._audit_customer(jsonb),                    -- an index key of audit_event
    voucher.upsert_customer(text, text, text, jsonb)   -- set_consent finds or creates with it
TO voucher_definer;
GRANT EXECUTE ON FUNCTION voucher._can_read(text), voucher._key_probe(), voucher._tenant_scan(),
                          voucher._audit_purging(), voucher._setting_registry(), voucher._lockouts(),
                          voucher._decrypt(text, text, uuid, bytea)
    TO voucher_client, voucher_operator, voucher_definer;
GRANT EXECUTE ON FUNCTION voucher.current_tenant() TO voucher_definer;

-- Install-time helpers are not part of the API.
DROP FUNCTION voucher._isolate_tenant(regclass);
