-- Per-tenant settings (src/settings/): voucher.configure(setting, value) stores a known setting's
-- value in canonical form; a tenant without a row uses the setting's default.

CREATE TABLE voucher.tenant_setting (
    tenant_id   uuid        NOT NULL,
    setting     text        NOT NULL,
    value       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL,
    PRIMARY KEY (tenant_id, setting)
);
COMMENT ON TABLE voucher.tenant_setting IS
    'A tenant''s settings that differ from the defaults; written by voucher.configure.';

SELECT voucher._isolate_tenant('voucher.tenant_setting');
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.tenant_setting
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();   -- no foreign key: see sql/tenancy.sql

-- Every committed change tells the other backends to re-read their cached settings.
CREATE FUNCTION voucher._setting_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher._settings_changed();
    RETURN NULL;
END
$$;
CREATE TRIGGER setting_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON voucher.tenant_setting FOR EACH STATEMENT EXECUTE FUNCTION voucher._setting_trigger();

-- Direct changes by a DBA are audited like those of the other tables.
CREATE TRIGGER audit_direct_dml AFTER UPDATE OR DELETE ON voucher.tenant_setting FOR EACH ROW
    WHEN (NOT voucher._by_definer()) EXECUTE FUNCTION voucher._audit_direct_dml();
CREATE TRIGGER audit_direct_truncate BEFORE TRUNCATE ON voucher.tenant_setting
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._audit_direct_truncate();

CREATE VIEW voucher.settings WITH (security_barrier) AS
SELECT r.setting, coalesce(s.value, r.default_value) AS value, r.default_value,
       s.updated_at, s.updated_by, r.description
  FROM voucher._setting_registry() r
  LEFT JOIN voucher.tenant_setting s ON s.setting = r.setting
 WHERE voucher._can_read('administer');
COMMENT ON VIEW voucher.settings IS
    'The tenant''s settings, configured or default (admin keys); change them with voucher.configure.';
