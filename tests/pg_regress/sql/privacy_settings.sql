-- The privacy capability's tenant settings: require_profile_consent (VC014 without the
-- 'profile' consent, erasure on withdrawal) and customer_retention_days (forget_inactive_customers).

\c - regress_op
SELECT voucher.create_tenant('consent shop') AS shop \gset
SELECT voucher.create_api_key('admin', tenant => :'shop') AS admin \gset

\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('redeemer') AS redeemer \gset
SELECT voucher.add_code(voucher.create_campaign('open', redemption_limit => NULL), 'OPEN-1') IS NOT NULL AS added;
-- off by default: personal fields need no consent
SELECT setting, value FROM voucher.settings
 WHERE setting IN ('require_profile_consent', 'customer_retention_days') ORDER BY 1;
SELECT voucher.upsert_customer('dave', 'dave@example.com', 'Dave') AS dave \gset
SELECT voucher.configure('require_profile_consent', 'true');
SELECT try($$SELECT voucher.configure('require_profile_consent', 'maybe')$$) AS bad_bool,
       try($$SELECT voucher.configure('customer_retention_days', '-1')$$) AS negative_days;
COMMIT;

------------------------------------------------------------------------------------------------
-- require_profile_consent
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
-- without the consent: email, name or metadata refused (VC014), for a new customer and a known one
SELECT try($$SELECT voucher.upsert_customer('erin', 'erin@example.com')$$) AS new_with_email,
       try($$SELECT voucher.upsert_customer('erin', name => 'Erin')$$) AS new_with_name,
       try($$SELECT voucher.upsert_customer('erin', metadata => '{"a": 1}')$$) AS new_with_metadata,
       try($$SELECT voucher.upsert_customer('dave', name => 'David')$$) AS known_without_consent;
-- the id alone needs no consent, nor does a redemption
SELECT voucher.upsert_customer('erin') AS erin \gset
SELECT discount FROM voucher.redeem('OPEN-1', customer => 'erin');
-- another purpose is not the profile consent
SELECT voucher.set_consent('erin', 'newsletter', true, 'signup form');
SELECT try($$SELECT voucher.upsert_customer('erin', 'erin@example.com')$$) AS newsletter_only;
-- granted: stored
SELECT voucher.set_consent('erin', 'profile', true, 'signup form');
SELECT voucher.upsert_customer('erin', 'erin@example.com', 'Erin', '{"tier": "silver"}') = :'erin'
       AS stored;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT c.email, c.name, c.metadata FROM voucher.customers c WHERE c.source_id = 'erin';
COMMIT;
-- withdrawn: the profile is erased; the customer, its redemptions and other consents stay; new
-- personal fields are refused again
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT voucher.set_consent('erin', 'profile', false, 'account settings');
SELECT try($$SELECT voucher.upsert_customer('erin', 'erin@example.com')$$) AS after_withdrawal;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT c.source_id, c.email, c.name, c.metadata FROM voucher.customers c WHERE c.source_id = 'erin';
SELECT count(*) AS erin_redemptions FROM voucher.redemptions WHERE customer = 'erin';
SELECT purpose, granted, source FROM voucher.consents WHERE customer_id = :'erin' ORDER BY purpose;
SELECT action, details FROM voucher.audit_log
 WHERE action = 'consent.withdrawn' AND object_id = :'erin';
-- dave's fields, stored before the setting, stay until a withdrawal or forget
SELECT c.email, c.name FROM voucher.customers c WHERE c.source_id = 'dave';
COMMIT;

------------------------------------------------------------------------------------------------
-- customer_retention_days
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.configure('require_profile_consent', 'false');
SELECT voucher.forget_inactive_customers() AS retention_off;
SELECT voucher.upsert_customer('gina', 'gina@example.com') AS gina \gset
SELECT voucher.upsert_customer('hank', 'hank@example.com') AS hank \gset
SELECT voucher.upsert_customer('ivan', 'ivan@example.com') AS ivan \gset
SELECT redemption_id AS hank_r FROM voucher.redeem('OPEN-1', customer => 'hank') \gset
SELECT voucher.configure('customer_retention_days', '30');
COMMIT;
-- make them look old (as a superuser; direct changes are audited): gina and hank 40 days
-- without activity, ivan 20 days; erin's profile is old but she redeemed today; dave too old
\c - postgres
UPDATE voucher.customer SET updated_at = now() - interval '40 days'
 WHERE customer_id IN (:'gina', :'hank', :'erin', :'dave');
UPDATE voucher.customer SET updated_at = now() - interval '20 days' WHERE customer_id = :'ivan';
UPDATE voucher.redemption SET redeemed_at = now() - interval '40 days' WHERE redemption_id = :'hank_r';
UPDATE voucher.consent SET at = now() - interval '40 days' WHERE customer_id = :'erin';
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
-- bounded batches: one, then the rest, then nothing left
SELECT voucher.forget_inactive_customers(1) AS first_batch;
SELECT voucher.forget_inactive_customers(10) AS second_batch;
SELECT voucher.forget_inactive_customers(10) AS nothing_left;
SELECT s.who, voucher.export_customer(s.who) IS NOT NULL AS kept
  FROM unnest(ARRAY['dave', 'erin', 'gina', 'hank', 'ivan']) s(who) ORDER BY 1;
SELECT details FROM voucher.audit_log WHERE action = 'customer.forgotten' ORDER BY details::text;
SELECT ok FROM voucher.verify_audit();
COMMIT;
