-- A walk through voucher_ext, run by `make demo` as the superuser of a private cluster.
\pset footer off
CREATE EXTENSION voucher_ext;

-- The platform: an operator creates a tenant and its first (admin) key.
SELECT voucher.create_tenant('Acme Shop') AS tenant \gset
SELECT voucher.create_api_key('admin', 'Acme admin', tenant => :'tenant') AS admin_key \gset
\echo the admin key, shown once: :admin_key

-- The shop's back office authenticates with it and issues a key for its checkout.
BEGIN;
SELECT voucher.authenticate(:'admin_key') AS tenant_id;
SELECT voucher.create_api_key('redeemer', 'checkout') AS checkout_key \gset
SELECT label, role, prefix, last_used_at IS NOT NULL AS used FROM voucher.api_keys ORDER BY label;
COMMIT;

-- Outside a transaction that authenticated, nothing is visible.
SELECT count(*) AS keys_visible_without_context FROM voucher.api_keys;
