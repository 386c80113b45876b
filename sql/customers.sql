-- Customers, known by the application's own id (source_id).

CREATE TABLE voucher.customer (
    tenant_id    uuid        NOT NULL REFERENCES voucher.tenant ON DELETE CASCADE,
    customer_id  uuid        NOT NULL,
    source_id    text        NOT NULL CHECK (source_id <> ''),
    email        text,
    name         text,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id),
    UNIQUE (tenant_id, source_id)
);
COMMENT ON TABLE voucher.customer IS 'Customers; source_id is the application''s own customer id.';

SELECT voucher._isolate_tenant('voucher.customer');

CREATE FUNCTION voucher.upsert_customer(
    source_id  text,
    email      text  DEFAULT NULL,
    name       text  DEFAULT NULL,
    metadata   jsonb DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t        uuid := voucher._authorize('write_customers');
    id       uuid;
    old      record;
    now_row  record;
    changed  text[];
BEGIN
    PERFORM voucher._check_customer(upsert_customer.source_id, upsert_customer.email,
                                    upsert_customer.name, upsert_customer.metadata);
    SELECT c.email, c.name, c.metadata INTO old FROM voucher.customer c
     WHERE c.tenant_id = t AND c.source_id = upsert_customer.source_id FOR NO KEY UPDATE;
    INSERT INTO voucher.customer AS c (tenant_id, customer_id, source_id, email, name, metadata)
    VALUES (t, voucher._uuid_v7(), upsert_customer.source_id, upsert_customer.email,
            upsert_customer.name, coalesce(upsert_customer.metadata, '{}'))
    ON CONFLICT ON CONSTRAINT customer_tenant_id_source_id_key DO UPDATE
       SET email      = coalesce(excluded.email, c.email),
           name       = coalesce(excluded.name, c.name),
           metadata   = CASE WHEN upsert_customer.metadata IS NULL THEN c.metadata
                             ELSE excluded.metadata END,
           updated_at = now()
    RETURNING c.customer_id, c.email, c.name, c.metadata INTO now_row;
    id := now_row.customer_id;
    -- the audit row names the fields that changed, never their values (personal data)
    IF old IS NULL THEN
        PERFORM voucher._audit('customer.created', 'customer', id::text, '{}');
    ELSE
        changed := array_remove(ARRAY[
            CASE WHEN now_row.email IS DISTINCT FROM old.email THEN 'email' END,
            CASE WHEN now_row.name IS DISTINCT FROM old.name THEN 'name' END,
            CASE WHEN now_row.metadata IS DISTINCT FROM old.metadata THEN 'metadata' END], NULL);
        IF cardinality(changed) > 0 THEN
            PERFORM voucher._audit('customer.updated', 'customer', id::text,
                                   jsonb_build_object('changed', to_jsonb(changed)));
        END IF;
    END IF;
    RETURN id;
END
$$;
COMMENT ON FUNCTION voucher.upsert_customer(text, text, text, jsonb) IS
    'Creates or updates a customer by source_id; NULL arguments leave a field unchanged.';

CREATE VIEW voucher.customers WITH (security_barrier) AS
SELECT c.customer_id AS id, c.source_id, c.email, c.name, c.metadata, c.created_at, c.updated_at
  FROM voucher.customer c
 WHERE voucher._can_read('read_customers');
COMMENT ON VIEW voucher.customers IS 'The tenant''s customers.';
