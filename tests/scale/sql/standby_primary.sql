-- On the primary after tests/scale/standby_reads.sql ran on its standby: nothing the standby
-- refused happened, and a read-only transaction here refuses writes the same way (25006).
SELECT (SELECT count(*) FROM voucher.redemption) AS redemptions,
       (SELECT count(*) FROM voucher.tenant) AS tenants,
       (SELECT count(*) FROM voucher.campaign) AS campaigns;
SET ROLE regress_client;
BEGIN READ ONLY;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'admin';
SELECT valid, discount FROM voucher.validate('SB-2', order_amount => 40);
SELECT t($$SELECT * FROM voucher.redeem('SB-2', order_amount => 40)$$) AS redeem;
SELECT t($$SELECT voucher.create_campaign('x')$$) AS create_campaign;
SELECT ok FROM voucher.verify_audit();
-- export_customer: as on a standby (privacy)
SELECT t($$SELECT voucher.export_customer('cust-1', allow_unaudited => false)$$) AS export_audited;
SELECT e -> 'audited' AS audited, e -> 'customer' ->> 'email' AS email
  FROM voucher.export_customer('cust-1') e;
COMMIT;
-- none of those exports left an audit row; a read-write export does, whatever allow_unaudited says
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'admin';
SELECT count(*) AS exports_audited FROM voucher.audit_log WHERE action = 'customer.exported';
SELECT voucher.export_customer('cust-1', allow_unaudited => true) -> 'audited' AS audited;
SELECT count(*) AS exports_audited FROM voucher.audit_log WHERE action = 'customer.exported';
COMMIT;
-- the same calls in a read-write transaction work
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'redeemer';
SELECT discount, replayed FROM voucher.redeem('SB-2', order_amount => 40);
COMMIT;
RESET ROLE;
-- a PostgreSQL error raised inside the extension's Rust code (the statement timeout cancels code
-- generation in one of its SPI statements), the server started with RUST_BACKTRACE=1: the error
-- reaches the client without a DETAIL (no Rust backtrace, no file paths)
\set SHOW_CONTEXT never
SET ROLE regress_client;
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS authenticated FROM standby_key WHERE name = 'admin';
SET LOCAL statement_timeout = '300ms';
SELECT voucher.generate_codes(id, 3000000) FROM voucher.campaigns WHERE name = 'ten off';
ROLLBACK;
RESET ROLE;
