-- The tenancy attack matrix on the cluster: a context sees its own tenant's rows on whichever
-- worker they live, and no row of the other tenant (on the other worker); forged and replayed
-- context tokens select nothing.
SET ROLE regress_client;
-- each tenant's admin: its own rows through every view, none of the other's
BEGIN;
SELECT voucher.authenticate(admin) = tenant AS a_authenticated FROM citus_tenant WHERE name = 'a';
SELECT (SELECT count(*) FROM voucher.campaigns) AS campaigns,
       (SELECT count(*) FROM voucher.vouchers) AS vouchers,
       (SELECT count(*) FROM voucher.redemptions) AS redemptions,
       (SELECT count(*) FROM voucher.api_keys) AS api_keys,
       (SELECT count(*) > 0 FROM voucher.audit_log) AS audit_rows,
       (SELECT count(*) FROM voucher.audit_log
         WHERE tenant_id <> (SELECT tenant FROM citus_tenant WHERE name = 'a')) AS others_audit_rows;
SELECT string_agg(code, ',' ORDER BY code) AS codes_seen FROM voucher.vouchers WHERE campaign NOT LIKE 'bulk%';
SELECT count(*) AS bulk_codes_seen FROM voucher.vouchers WHERE campaign LIKE 'bulk%';
-- the other tenant's code does not exist for this one
SELECT valid, sqlstate FROM voucher.validate('B-2', order_amount => 30);
SELECT t($$SELECT * FROM voucher.redeem('B-2', order_amount => 30)$$) AS redeem_other_tenants_code;
SELECT t($$SELECT voucher.set_voucher_active('B-2', false)$$) AS disable_other_tenants_code;
SELECT valid, discount FROM voucher.validate('A-2', order_amount => 30);
COMMIT;
BEGIN;
SELECT voucher.authenticate(admin) = tenant AS b_authenticated FROM citus_tenant WHERE name = 'b';
SELECT string_agg(code, ',' ORDER BY code) AS codes_seen FROM voucher.vouchers WHERE campaign NOT LIKE 'bulk%';
SELECT count(*) AS bulk_codes_seen FROM voucher.vouchers WHERE campaign LIKE 'bulk%';
SELECT (SELECT count(*) FROM voucher.audit_log
         WHERE tenant_id <> (SELECT tenant FROM citus_tenant WHERE name = 'b')) AS others_audit_rows;
SELECT t($$SELECT * FROM voucher.redeem('A-3', order_amount => 30)$$) AS redeem_other_tenants_code;
SELECT discount, replayed FROM voucher.redeem('B-2', order_amount => 30);
COMMIT;
-- no context: nothing; clients hold no table privileges on any node
SELECT count(*) AS vouchers_without_context FROM voucher.vouchers;
SELECT t($$SELECT * FROM voucher.code$$) AS direct_table_read;
SELECT t($$SET voucher.context_token = 'x'$$) AS set_context_token;
RESET ROLE;

-- a context token captured from a real transaction (as a superuser could), then replayed
SET ROLE regress_client;
BEGIN;
SELECT voucher.authenticate(admin) IS NOT NULL AS authenticated FROM citus_tenant WHERE name = 'a';
SELECT count(*) AS codes_in_the_real_transaction FROM voucher.vouchers;
-- the client itself cannot read the token its transaction shipped
SELECT t($$SELECT current_setting('voucher.cluster_token')$$) AS client_reads_token;
RESET ROLE;
SELECT current_setting('voucher.cluster_token') AS captured \gset
COMMIT;
SELECT :'captured' ~ '^v1\.[0-9a-f]{32}\.' AS captured_a_token;
-- voucher_definer is the role shard queries of our functions run as: give it the token by hand
SET ROLE voucher_definer;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL voucher.cluster_token = :'captured';
SELECT (SELECT count(*) FROM voucher.code) AS codes, (SELECT count(*) FROM voucher.campaign) AS campaigns,
       (SELECT count(*) FROM voucher.tenant) AS tenants, (SELECT count(*) FROM voucher.credential) AS keys,
       (SELECT count(*) FROM voucher.audit_event) AS audit_rows;
COMMIT;
-- forged: the same token naming the other tenant (the MAC no longer matches)
SELECT regexp_replace(:'captured', '^v1\.[0-9a-f]{32}',
                      'v1.' || replace((SELECT tenant FROM citus_tenant WHERE name = 'b')::text, '-', ''))
       AS forged \gset
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL voucher.cluster_token = :'forged';
SELECT (SELECT count(*) FROM voucher.code) AS codes, (SELECT count(*) FROM voucher.customer) AS customers;
COMMIT;
-- garbage
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL voucher.cluster_token = 'v1.garbage';
SELECT count(*) AS codes FROM voucher.code;
COMMIT;
RESET ROLE;
