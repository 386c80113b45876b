-- Encryption at rest of personal data (src/crypto/, README "Encryption at rest"): the tenant
-- keys, the per-customer keys, and the views that decrypt.

CREATE SEQUENCE voucher.tenant_key_id_seq AS integer;

-- Tenant keys, stored only wrapped (AES-256-GCM) under the master key, which lives outside the
-- database. kind 'data' encrypts personal fields; kind 'index' is the root of the blind-index
-- keys. A data key superseded by rotate_data_key still decrypts but never encrypts again; it is
-- retired once no row uses it; a destroyed key has no wrapped bytes left.
CREATE TABLE voucher.tenant_key (
    tenant_id      uuid        NOT NULL,
    key_id         integer     NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('data', 'index')),
    state          text        NOT NULL DEFAULT 'active'
                               CHECK (state IN ('active', 'retired', 'destroyed')),
    superseded_by  integer,
    master_key_id  text,
    wrapped        bytea,
    encryptions    bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    destroyed_at   timestamptz,
    rotated_through uuid,
    PRIMARY KEY (tenant_id, key_id),
    CHECK ((state = 'destroyed') = (wrapped IS NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);
COMMENT ON TABLE voucher.tenant_key IS
    'Per-tenant keys, wrapped under the master key (fingerprint master_key_id); never plaintext.';
COMMENT ON COLUMN voucher.tenant_key.encryptions IS
    'Encryptions reserved under this key; refused past 2^31 (NIST SP 800-38D random nonces: 2^32).';
COMMENT ON COLUMN voucher.tenant_key.rotated_through IS
    'rotate_data_key to this key: the customer_id it has walked through (primary key order).';
CREATE UNIQUE INDEX tenant_key_active_idx ON voucher.tenant_key (tenant_id, kind)
    WHERE state = 'active' AND superseded_by IS NULL;
ALTER SEQUENCE voucher.tenant_key_id_seq OWNED BY voucher.tenant_key.key_id;
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.tenant_key
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();   -- no foreign key: see sql/tenancy.sql

-- Each customer's own key (for its personal data in audit rows) is the column
-- voucher.customer.audit_key (sql/customers.sql), wrapped under the row's data key.

SELECT voucher._isolate_tenant('voucher.tenant_key');

-- Decrypted for admin and manager keys; 42501 for other key roles (the WHERE raises).
CREATE VIEW voucher.customers WITH (security_barrier) AS
SELECT c.customer_id,
       voucher._decrypt('customer', 'source_id', c.customer_id, c.source_id) AS source_id,
       voucher._decrypt('customer', 'email', c.customer_id, c.email) AS email,
       voucher._decrypt('customer', 'name', c.customer_id, c.name) AS name,
       coalesce(voucher._decrypt('customer', 'metadata', c.customer_id, c.metadata)::jsonb,
                '{}'::jsonb) AS metadata,
       c.created_at, c.updated_at, c.forgotten_at
  FROM voucher.customer c
 WHERE voucher._can_read('read_customers');
COMMENT ON VIEW voucher.customers IS 'The tenant''s customers, decrypted (admin and manager keys).';

-- The tenant's keys, without key material: id, kind, state, encryptions, dates (admin keys).
CREATE VIEW voucher.tenant_keys WITH (security_barrier) AS
SELECT k.key_id, k.kind, k.state, k.superseded_by, k.master_key_id, k.encryptions,
       k.created_at, k.retired_at, k.destroyed_at
  FROM voucher.tenant_key k
 WHERE voucher._can_read('administer');
COMMENT ON VIEW voucher.tenant_keys IS
    'The tenant''s keys: ids, states and counters, never key material.';
