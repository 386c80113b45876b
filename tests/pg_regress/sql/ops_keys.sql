-- Key fingerprints: voucher.key_fingerprints() names the key file and its fingerprint (never
-- the key), and counts the tenants whose log was sealed with it; with another key file,
-- verify_audit says the key does not match instead of naming a row, for sealed logs (the
-- stored fingerprint) and for logs never sealed (every row fails its HMAC).
\c - regress_op
SELECT voucher.create_tenant('keyed') AS t \gset
SELECT voucher.create_api_key('admin', tenant => :'t') AS admin \gset
SELECT key, file ~ 'voucher_audit\.key$' AS default_file, fingerprint ~ '^[0-9a-f]{16}$' AS fingerprint_shape
  FROM voucher.key_fingerprints();
SELECT voucher.seal_audit() >= 0 AS sealed, voucher.seal_audit() >= 0 AS sealed_again;
SELECT matching > 0 AS matching, other FROM voucher.key_fingerprints();
SELECT voucher.create_tenant('never sealed') AS u \gset
SELECT voucher.create_api_key('admin', tenant => :'u') AS u_admin \gset
-- the fingerprint is not a piece of the key's hex
\c - postgres
SELECT position(fingerprint IN encode(pg_read_binary_file('voucher_audit.key'), 'hex')) = 0 AS not_a_key_prefix
  FROM voucher.key_fingerprints();
\c - regress_client
SELECT try('SELECT * FROM voucher.key_fingerprints()') AS client_may_not;
-- the tenant never sealed gets one more event, so it has two rows
BEGIN;
SELECT voucher.authenticate(:'u_admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('auditor') IS NOT NULL AS ok;
COMMIT;

-- another key file: a new session reads it
\c - postgres
ALTER SYSTEM SET voucher.audit_key_file = 'regress_other_audit.key';
SELECT pg_reload_conf();
SELECT pg_sleep(1);
\c - regress_op
SELECT file ~ 'regress_other_audit\.key$' AS other_file, matching, other > 0 AS other
  FROM voucher.key_fingerprints();
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT ok, rows_checked, first_bad_id, problem FROM voucher.verify_audit();
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'u_admin') IS NOT NULL AS ok;
SELECT ok, rows_checked, first_bad_id, problem FROM voucher.verify_audit();
COMMIT;

-- back to the right key
\c - postgres
ALTER SYSTEM RESET voucher.audit_key_file;
SELECT pg_reload_conf();
SELECT pg_sleep(1);
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT ok, problem FROM voucher.verify_audit();
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'u_admin') IS NOT NULL AS ok;
SELECT ok, problem FROM voucher.verify_audit();
COMMIT;
