-- Customers, known by the application's own id (source_id). Every personal field is stored
-- only encrypted (AES-256-GCM, src/crypto/): source_id, email, name and metadata are bytea
-- ciphertexts under the tenant data key key_id; source_id and the normalized email are found
-- through blind indexes (HMAC-SHA256 under per-tenant, per-field keys). upsert_customer is Rust
-- (src/crypto/customers.rs); the view voucher.customers is in sql/crypto.sql.

CREATE TABLE voucher.customer (
    -- no foreign key to voucher.tenant: its check would KEY SHARE-lock the tenant's one row for
    -- every new customer (a multixact per concurrent writer; README "Encryption at rest"). Only
    -- our functions insert, with the authenticated context's tenant, and RLS checks it
    tenant_id     uuid        NOT NULL,
    customer_id   uuid        NOT NULL,
    source_id     bytea       NOT NULL,
    email         bytea,
    name          bytea,
    metadata      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- after the columns of 0.1.0, in the order the upgrade from 0.1.0 adds them
    source_index  bytea       NOT NULL,
    email_index   bytea,
    key_id        integer     NOT NULL,
    forgotten_at  timestamptz,
    audit_key     bytea,
    PRIMARY KEY (tenant_id, customer_id),
    UNIQUE (tenant_id, source_index)
);
COMMENT ON TABLE voucher.customer IS
    'Customers; personal fields encrypted, source_id and email found by blind index.';
COMMENT ON COLUMN voucher.customer.source_index IS
    'HMAC-SHA256 of source_id under the tenant''s source_id index key.';
COMMENT ON COLUMN voucher.customer.email_index IS
    'HMAC-SHA256 of the trimmed, lower-case email under the tenant''s email index key.';
COMMENT ON COLUMN voucher.customer.key_id IS 'The data key every ciphertext of the row is under.';
COMMENT ON COLUMN voucher.customer.audit_key IS
    'The customer''s own key, wrapped under data key key_id: its personal data in audit rows is '
    'encrypted under it. NULL once forgotten (the key is destroyed).';
CREATE INDEX customer_email_idx ON voucher.customer (tenant_id, email_index)
    WHERE email_index IS NOT NULL;
-- No index on key_id: every new customer would pay for it, for the sake of the rare
-- rotate_data_key, which walks the primary key from a stored position instead (src/crypto/rotate.rs).

SELECT voucher._isolate_tenant('voucher.customer');
