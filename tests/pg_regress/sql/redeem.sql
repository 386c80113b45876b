-- Campaigns, customers, validation, redemption and rollback: every rule, every SQLSTATE,
-- every kind and discount type with exact amounts.

\c - regress_op
SELECT voucher.create_tenant('shop') AS shop \gset
SELECT voucher.create_tenant('other shop') AS other \gset
SELECT voucher.create_api_key('admin', tenant => :'shop') AS admin \gset
SELECT voucher.create_api_key('admin', tenant => :'other') AS other_admin \gset

\c - regress_client
-- the shop's admin creates the keys and campaigns used below
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('manager') AS manager \gset
SELECT voucher.create_api_key('redeemer') AS redeemer \gset
SELECT voucher.create_api_key('auditor') AS auditor \gset
SELECT voucher.create_campaign('ten percent', discount_type => 'percent', discount_value => 10,
                               currency => 'EUR') AS pct \gset
SELECT voucher.create_campaign('capped', discount_type => 'percent', discount_value => 33.3333,
                               max_discount => 20, currency => 'usd') AS capped \gset
SELECT voucher.create_campaign('yen', discount_type => 'percent', discount_value => 15,
                               currency => 'JPY') AS yen \gset
SELECT voucher.create_campaign('dinar', discount_type => 'percent', discount_value => 12.5,
                               currency => 'KWD') AS dinar \gset
SELECT voucher.create_campaign('five off', discount_type => 'amount', discount_value => 5) AS five \gset
SELECT voucher.create_campaign('flat 49', discount_type => 'fixed', discount_value => 49) AS fixed \gset
SELECT voucher.create_campaign('no discount') AS plain \gset
SELECT voucher.create_campaign('gift 100', kind => 'gift_card', gift_balance => 100,
                               redemption_limit => NULL, currency => 'EUR') AS gift \gset
SELECT voucher.create_campaign('min 50', discount_type => 'amount', discount_value => 10,
                               min_order_amount => 50) AS min50 \gset
SELECT voucher.create_campaign('twice each', discount_type => 'amount', discount_value => 1,
                               redemption_limit => NULL, per_customer_limit => 2) AS per_cust \gset
SELECT voucher.create_campaign('three uses', redemption_limit => 3) AS three \gset
SELECT voucher.create_campaign('unlimited', redemption_limit => NULL) AS unlimited \gset
SELECT voucher.create_campaign('later', starts_at => now() + interval '1 day') AS later \gset
SELECT voucher.create_campaign('past', starts_at => now() - interval '2 days',
                               expires_at => now() - interval '1 day') AS past \gset
SELECT voucher.add_code(c.id, c.code) IS NOT NULL AS added
  FROM (VALUES (:'pct'::uuid, 'PCT-1'), (:'pct', 'PCT-2'), (:'capped', 'CAP-1'), (:'yen', 'YEN-1'),
               (:'dinar', 'KWD-1'), (:'five', 'FIVE-1'), (:'five', 'FIVE-2'), (:'fixed', 'FIX-1'),
               (:'fixed', 'FIX-2'), (:'plain', 'PLAIN-1'), (:'gift', 'GIFT-1'), (:'gift', 'GIFT-2'),
               (:'min50', 'MIN-1'), (:'min50', 'MIN-2'), (:'per_cust', 'PC-1'), (:'per_cust', 'PC-2'), (:'per_cust', 'PC-3'),
               (:'three', 'THREE-1'), (:'unlimited', 'UNL-1'), (:'later', 'LATER-1'),
               (:'past', 'PAST-1'), (:'pct', 'OFF-1')) c(id, code);
COMMIT;

------------------------------------------------------------------------------------------------
-- validate: the verdict, never an error for a business rule
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT voucher.set_voucher_active('off-1', false);
ROLLBACK;
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT voucher.set_voucher_active('off-1', false);
SELECT try($$SELECT voucher.set_voucher_active('no-such', false)$$) AS unknown_code;
COMMIT;

BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT v.code, v.order_amount, x.valid, x.reason, x.sqlstate, x.voucher_id IS NOT NULL AS found,
       x.discount, x.balance
  FROM (VALUES ('pct-1', 80.00), ('Pct 1', 19.99), ('pct-1', NULL), ('cap-1', 100), ('cap-1', 50),
               ('yen-1', 1999), ('kwd-1', 10.005), ('five-1', 3), ('five-1', 80), ('five-1', NULL),
               ('fix-1', 80), ('fix-1', 30), ('plain-1', 10), ('gift-1', 30), ('gift-1', 130),
               ('gift-1', NULL), ('min-1', 49.99), ('min-1', 50), ('min-1', NULL),
               ('nope', 10), ('later-1', 10), ('past-1', 10), ('off-1', 10)) v(code, order_amount),
       LATERAL voucher.validate(v.code, order_amount => v.order_amount) x;
COMMIT;
-- validate wrote nothing (a redeemer key may not read redemptions: ask the manager key)
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT count(*) AS redemptions FROM voucher.redemptions;
SELECT try('SELECT count(*) FROM voucher.redemptions') AS redeemer_cannot_read
  FROM (SELECT voucher.authenticate(:'redeemer')) x;
COMMIT;

------------------------------------------------------------------------------------------------
-- redeem: exact amounts for every kind and discount type
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT v.code, v.order_amount, v.amount, r.discount, r.balance_after, r.replayed,
       r.redemption_id IS NOT NULL AS has_id
  FROM (VALUES (1, 'pct-1', 80.00, NULL::numeric), (2, 'cap-1', 100, NULL), (3, 'yen-1', 1999, NULL),
               (4, 'kwd-1', 10.005, NULL), (5, 'five-1', 3, NULL), (6, 'five-2', NULL, NULL),
               (7, 'fix-1', 80, NULL), (8, 'fix-2', 30, NULL), (9, 'plain-1', 10, NULL),
               (10, 'gift-1', NULL, 30), (11, 'gift-1', 50, NULL), (12, 'gift-1', 25, 20),
               (13, 'min-1', 50, NULL)) v(n, code, order_amount, amount),
       LATERAL voucher.redeem(v.code, order_amount => v.order_amount, amount => v.amount) r
 ORDER BY v.n;
COMMIT;

-- every business-rule failure raises its VC code, and changes nothing
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT v.what, try(v.sql) AS outcome
  FROM (VALUES
    ('unknown code',         $$SELECT voucher.redeem('NOPE', order_amount => 10)$$),
    ('expired',              $$SELECT voucher.redeem('past-1')$$),
    ('not active yet',       $$SELECT voucher.redeem('later-1')$$),
    ('used up',              $$SELECT voucher.redeem('pct-1', order_amount => 10)$$),
    ('gift balance',         $$SELECT voucher.redeem('gift-1', amount => 0.01)$$),
    ('below the minimum',    $$SELECT voucher.redeem('min-2', order_amount => 49.99)$$),
    ('voucher disabled',     $$SELECT voucher.redeem('off-1', order_amount => 10)$$)) v(what, sql);
COMMIT;

-- bad input: a clear error with its SQLSTATE, nothing written
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT v.what, try(v.sql) AS outcome
  FROM (VALUES
    ('null code',              $$SELECT voucher.redeem(NULL)$$),
    ('empty code',             $$SELECT voucher.redeem(' - ')$$),
    ('negative order',         $$SELECT voucher.redeem('pct-2', order_amount => -1)$$),
    ('NaN order',              $$SELECT voucher.redeem('pct-2', order_amount => 'NaN')$$),
    ('infinite order',         $$SELECT voucher.redeem('pct-2', order_amount => 'Infinity')$$),
    ('absurd scale',           $$SELECT voucher.redeem('pct-2', order_amount => 1.000001)$$),
    ('absurd size',            $$SELECT voucher.redeem('pct-2', order_amount => 1e20)$$),
    ('percent without order',  $$SELECT voucher.redeem('pct-2')$$),
    ('amount on a discount',   $$SELECT voucher.redeem('pct-2', order_amount => 10, amount => 5)$$),
    ('gift without amount',    $$SELECT voucher.redeem('gift-2')$$),
    ('zero amount',            $$SELECT voucher.redeem('gift-2', amount => 0)$$),
    ('amount above order',     $$SELECT voucher.redeem('gift-2', order_amount => 5, amount => 6)$$),
    ('minimum without order',  $$SELECT voucher.redeem('min-2')$$),
    ('per customer, no customer', $$SELECT voucher.redeem('pc-1')$$),
    ('empty customer',         $$SELECT voucher.redeem('pc-1', customer => '')$$),
    ('metadata not an object', $$SELECT voucher.redeem('unl-1', metadata => '[1]')$$),
    ('empty idempotency key',  $$SELECT voucher.redeem('unl-1', idempotency_key => '')$$),
    ('long order id',          $$SELECT voucher.redeem('unl-1', order_id => repeat('x', 201))$$)) v(what, sql);
COMMIT;
-- none of the refused calls above wrote anything: still the 13 redemptions of the exact-amounts
-- table, and no customer
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT count(*) AS redemptions, (SELECT count(*) FROM voucher.customers) AS customers
  FROM voucher.redemptions;
COMMIT;

------------------------------------------------------------------------------------------------
-- limits: per voucher, per customer across vouchers of a campaign
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT n, try($$SELECT voucher.redeem('three-1')$$) AS outcome FROM generate_series(1, 4) n;
SELECT n, try($$SELECT voucher.redeem('unl-1')$$) AS outcome FROM generate_series(1, 3) n;
-- customer c1 may redeem vouchers of 'twice each' twice in all, whichever vouchers
SELECT v.code, v.customer, try(format('SELECT voucher.redeem(%L, customer => %L)', v.code, v.customer)) AS outcome
  FROM (VALUES (1, 'pc-1', 'c1'), (2, 'pc-2', 'c1'), (3, 'pc-3', 'c1'), (4, 'pc-3', 'c2'),
               (5, 'pc-1', 'c2'), (6, 'pc-2', 'c2')) v(n, code, customer) ORDER BY v.n;
SELECT valid, reason, sqlstate, voucher_id IS NOT NULL AS found FROM voucher.validate('pc-3', customer => 'c1');
COMMIT;
-- unknown customers are created on first use
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT source_id FROM voucher.customers ORDER BY 1;
SELECT id AS three_redemption FROM voucher.redemptions WHERE code = 'THREE-1' LIMIT 1 \gset
SELECT id AS pc1_redemption FROM voucher.redemptions WHERE code = 'PC-1' AND customer = 'c1' \gset
COMMIT;

------------------------------------------------------------------------------------------------
-- idempotency
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT redemption_id AS first_id, discount, balance_after, replayed
  FROM voucher.redeem('gift-2', customer => 'c9', amount => 40, order_id => 'o-1',
                      idempotency_key => 'order-o-1', metadata => '{"channel": "web"}') \gset
SELECT :'first_id' IS NOT NULL AS redeemed, :'discount' AS discount, :'balance_after' AS balance_after, :'replayed' AS replayed;
-- the same call again: the first result, replayed, nothing changed
SELECT redemption_id = :'first_id' AS same_id, discount, balance_after, replayed
  FROM voucher.redeem('gift-2', customer => 'c9', amount => 40, order_id => 'o-1',
                      idempotency_key => 'order-o-1', metadata => '{"channel": "web"}');
-- numerically equal amounts and re-ordered JSON are the same request
SELECT replayed FROM voucher.redeem('GIFT 2', customer => 'c9', amount => 40.00, order_id => 'o-1',
                                    idempotency_key => 'order-o-1', metadata => '{ "channel":"web" }');
-- anything else under the same key: VC009
SELECT try($$SELECT voucher.redeem('gift-2', customer => 'c9', amount => 41, order_id => 'o-1',
                                   idempotency_key => 'order-o-1', metadata => '{"channel": "web"}')$$) AS other_amount,
       try($$SELECT voucher.redeem('gift-2', amount => 40, order_id => 'o-1', idempotency_key => 'order-o-1')$$) AS other_args;
SELECT balance FROM voucher.validate('gift-2');
COMMIT;
-- a voucher without a limit (its uses spread over slot rows) under a key: replayed in the
-- backend that redeemed it (it remembers that the code spreads) and in a new one (it does not)
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT redemption_id AS unl_id, replayed
  FROM voucher.redeem('unl-1', order_id => 'o-2', idempotency_key => 'order-o-2') \gset
SELECT :'replayed' AS replayed,
       (SELECT redemption_id = :'unl_id' FROM voucher.redeem('unl-1', order_id => 'o-2',
                                                             idempotency_key => 'order-o-2')) AS same_id;
COMMIT;
\c
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT redemption_id = :'unl_id' AS same_id, replayed
  FROM voucher.redeem('unl-1', order_id => 'o-2', idempotency_key => 'order-o-2');
SELECT try($$SELECT voucher.redeem('unl-1', order_id => 'o-3', idempotency_key => 'order-o-2')$$) AS other_order;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT count(*) AS redemptions_under_the_key FROM voucher.redemptions WHERE idempotency_key = 'order-o-2';
COMMIT;

------------------------------------------------------------------------------------------------
-- rollback: gives back the use and the amount, once
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT redemption_id AS gift_redemption FROM voucher.redeem('gift-2', amount => 10) \gset
SELECT balance AS before_rollback FROM voucher.validate('gift-2');
SELECT redemption_id = :'gift_redemption' AS same_id, voucher_id IS NOT NULL AS has_voucher, restored
  FROM voucher.rollback_redemption(:'gift_redemption', 'customer returned the goods');
SELECT balance AS after_rollback FROM voucher.validate('gift-2');
SELECT try(format('SELECT voucher.rollback_redemption(%L)', :'gift_redemption')) AS second_rollback,
       try($$SELECT voucher.rollback_redemption('00000000-0000-0000-0000-000000000000')$$) AS unknown,
       try('SELECT voucher.rollback_redemption(NULL)') AS null_id;
-- a used-up voucher is usable again after its redemption is rolled back
SELECT valid FROM voucher.validate('three-1');
SELECT restored FROM voucher.rollback_redemption(:'three_redemption');
SELECT valid FROM voucher.validate('three-1');
-- and so is a customer's per-campaign allowance
SELECT valid FROM voucher.validate('pc-3', customer => 'c1');
SELECT restored FROM voucher.rollback_redemption(:'pc1_redemption', 'test');
SELECT valid FROM voucher.validate('pc-3', customer => 'c1');
COMMIT;

------------------------------------------------------------------------------------------------
-- what admins and managers see; what other key roles and tenants cannot do
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT code, status, order_amount, amount, discount, balance_after, rollback_reason
  FROM voucher.redemptions ORDER BY code, redeemed_at, status, amount, order_amount;
SELECT code, redeemed_count, redemption_limit, remaining_uses, balance
  FROM voucher.vouchers WHERE campaign IN ('gift 100', 'three uses', 'twice each') ORDER BY code;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT try($$SELECT * FROM voucher.redeem('unl-1')$$) AS manager_redeems,
       try($$SELECT * FROM voucher.validate('unl-1')$$) AS manager_validates;
ROLLBACK;
BEGIN;
SELECT voucher.authenticate(:'auditor') IS NOT NULL AS ok;
SELECT try($$SELECT * FROM voucher.redeem('unl-1')$$) AS auditor_redeems,
       try($$SELECT voucher.upsert_customer('x')$$) AS auditor_writes,
       try('SELECT count(*) FROM voucher.redemptions') AS auditor_reads;
ROLLBACK;
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT try('SELECT count(*) FROM voucher.redemptions') AS redeemer_reads,
       try('SELECT count(*) FROM voucher.customers') AS redeemer_reads_customers,
       try($$SELECT voucher.upsert_customer('c1', 'c1@example.com', 'Cee One')$$) AS redeemer_upserts;
COMMIT;
-- another tenant: the codes do not exist there, its redemptions are not there
BEGIN;
SELECT voucher.authenticate(:'other_admin') IS NOT NULL AS ok;
SELECT * FROM voucher.validate('unl-1');
SELECT try($$SELECT voucher.redeem('unl-1')$$) AS redeem_foreign,
       try(format('SELECT voucher.rollback_redemption(%L)', :'gift_redemption')) AS rollback_foreign,
       try($$SELECT voucher.set_voucher_active('unl-1', false)$$) AS disable_foreign,
       try(format('SELECT voucher.set_campaign_active(%L, false)', :'unlimited')) AS disable_foreign_campaign;
SELECT count(*) AS redemptions, (SELECT count(*) FROM voucher.customers) AS customers,
       (SELECT count(*) FROM voucher.vouchers) AS vouchers
  FROM voucher.redemptions;
COMMIT;

------------------------------------------------------------------------------------------------
-- customers; campaigns on and off; campaign arguments
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('c1', name => 'Cee') = voucher.upsert_customer('c1') AS same_customer;
SELECT source_id, email, name, metadata FROM voucher.customers WHERE source_id = 'c1';
SELECT v.args, try('SELECT voucher.upsert_customer(' || v.args || ')') AS outcome
  FROM (VALUES ('NULL'), (''''''), (quote_literal(repeat('x', 201))), ('''c2'', ''not-an-email'''),
               ('''c2'', metadata => ''"x"''')) v(args);
SELECT voucher.set_campaign_active(:'unlimited', false);
SELECT sqlstate, reason FROM voucher.validate('unl-1');
SELECT voucher.set_campaign_active(:'unlimited', true);
SELECT sqlstate, reason FROM voucher.validate('unl-1');
SELECT v.args, try('SELECT voucher.create_campaign(''bad'', ' || v.args || ')') AS outcome
  FROM (VALUES ('kind => ''coupon'''), ('discount_type => ''bogo'', discount_value => 1'),
               ('discount_type => ''percent'''), ('discount_type => ''percent'', discount_value => 101'),
               ('discount_type => ''percent'', discount_value => 0'),
               ('discount_type => ''amount'', discount_value => -5'),
               ('discount_value => 5'),
               ('discount_type => ''amount'', discount_value => 5, max_discount => 1'),
               ('kind => ''gift_card'''), ('kind => ''gift_card'', gift_balance => 10, discount_type => ''amount'', discount_value => 1'),
               ('gift_balance => 10'), ('currency => ''EURO'''),
               ('starts_at => now(), expires_at => now() - interval ''1 day'''),
               ('redemption_limit => 0'), ('per_customer_limit => -1'),
               ('min_order_amount => ''NaN'''), ('metadata => ''[]''')) v(args);
SELECT try($$SELECT voucher.create_campaign('')$$) AS empty_name,
       try('SELECT voucher.create_campaign(NULL)') AS null_name;
SELECT count(*) AS bad_campaigns FROM voucher.campaigns WHERE name IN ('bad', '');
COMMIT;

\c - postgres
-- the ledger balances: every gift card = initial balance - non-rolled-back spends
SELECT v.code, v.balance,
       c.gift_balance - coalesce(sum(r.amount) FILTER (WHERE r.rolled_back_at IS NULL), 0) AS expected
  FROM voucher.code v JOIN voucher.campaign c USING (tenant_id, campaign_id)
  LEFT JOIN voucher.redemption r USING (tenant_id, voucher_id)
 WHERE c.kind = 'gift_card' AND v.tenant_id = :'shop'
 GROUP BY v.code, v.balance, c.gift_balance ORDER BY 1;
-- and every voucher's uses (its redeemed_count, plus its slots for a voucher without a limit)
-- = non-rolled-back redemptions
SELECT count(*) AS mismatched_counts FROM voucher.code v
 WHERE v.tenant_id = :'shop'
   AND v.redeemed_count + (SELECT coalesce(sum(u.used), 0) FROM voucher.code_use u
                            WHERE u.tenant_id = v.tenant_id AND u.voucher_id = v.voucher_id)
       <> (SELECT count(*) FROM voucher.redemption r
                             WHERE r.tenant_id = v.tenant_id AND r.voucher_id = v.voucher_id
                               AND r.rolled_back_at IS NULL);

-- voucher.redemption has no foreign keys (issue 17); triggers keep the same integrity against
-- direct DML: what a redemption names cannot be deleted, re-keyed or truncated away, and a
-- redemption cannot be re-pointed at what does not exist (rolled back: audit.sql counts rows)
BEGIN;
SELECT r.voucher_id AS redeemed_voucher, r.redemption_id AS a_redemption
  FROM voucher.redemption r
 WHERE r.tenant_id = :'shop' AND r.use_slot IS NULL
 ORDER BY r.redeemed_at, r.redemption_id LIMIT 1 \gset
SELECT r.customer_id AS redeeming_customer FROM voucher.redemption r
 WHERE r.tenant_id = :'shop' AND r.customer_id IS NOT NULL
 ORDER BY r.redeemed_at, r.redemption_id LIMIT 1 \gset
-- (its per-customer counters would refuse on their own foreign key first)
DELETE FROM voucher.customer_usage WHERE tenant_id = :'shop' AND customer_id = :'redeeming_customer';
SELECT try(format('DELETE FROM voucher.code WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'redeemed_voucher')) AS delete_redeemed_voucher,
       try(format('UPDATE voucher.code SET voucher_id = gen_random_uuid() WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'redeemed_voucher')) AS rekey_redeemed_voucher,
       try(format('UPDATE voucher.code SET active = active WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'redeemed_voucher')) AS other_update;
SELECT try(format('DELETE FROM voucher.customer WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'redeeming_customer')) AS delete_redeeming_customer,
       try(format('UPDATE voucher.customer SET customer_id = gen_random_uuid() WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'redeeming_customer')) AS rekey_redeeming_customer;
SELECT try(format('UPDATE voucher.redemption SET voucher_id = gen_random_uuid() WHERE tenant_id = %L AND redemption_id = %L',
                  :'shop', :'a_redemption')) AS repoint_to_no_voucher,
       try(format('UPDATE voucher.redemption SET customer_id = gen_random_uuid() WHERE tenant_id = %L AND redemption_id = %L',
                  :'shop', :'a_redemption')) AS repoint_to_no_customer,
       try(format('UPDATE voucher.redemption SET customer_id = %L WHERE tenant_id = %L AND redemption_id = %L',
                  :'redeeming_customer', :'shop', :'a_redemption')) AS repoint_to_a_customer;
-- a voucher nobody redeemed still goes
SELECT try(format('DELETE FROM voucher.code v WHERE v.tenant_id = %L AND v.code = %L',
                  :'shop', (SELECT v.code FROM voucher.code v WHERE v.tenant_id = :'shop'
                              AND NOT EXISTS (SELECT FROM voucher.redemption r
                                               WHERE r.tenant_id = v.tenant_id AND r.voucher_id = v.voucher_id)
                              AND NOT EXISTS (SELECT FROM voucher.code_use u
                                               WHERE u.tenant_id = v.tenant_id AND u.voucher_id = v.voucher_id)
                            ORDER BY v.code LIMIT 1))) AS delete_unredeemed_voucher;
SELECT try('TRUNCATE voucher.code CASCADE') AS truncate_codes,
       try('TRUNCATE voucher.customer CASCADE') AS truncate_customers,
       try('TRUNCATE voucher.code, voucher.customer, voucher.redemption, voucher.code_use CASCADE')
           AS truncate_with_redemptions,
       try('TRUNCATE voucher.code, voucher.customer, voucher.redemption, voucher.code_use, voucher.customer_usage, voucher.consent CASCADE')
           AS truncate_with_counters;
ROLLBACK;

-- a hot voucher's use slots (voucher.code_use) have no foreign key to voucher.code either (a
-- parallel pg_restore ignores the keys' order, sql/tenancy.sql): the voucher they count for
-- cannot be deleted, re-keyed or truncated away, and a slot cannot be re-pointed at a voucher that
-- does not exist (rolled back)
BEGIN;
SELECT u.voucher_id AS slotted_voucher FROM voucher.code_use u WHERE u.tenant_id = :'shop'
 ORDER BY u.voucher_id, u.slot LIMIT 1 \gset
-- without its redemptions, which would refuse first
DELETE FROM voucher.redemption WHERE tenant_id = :'shop' AND voucher_id = :'slotted_voucher';
SELECT try(format('DELETE FROM voucher.code WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'slotted_voucher')) AS delete_slotted_voucher,
       try(format('UPDATE voucher.code SET voucher_id = gen_random_uuid() WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'slotted_voucher')) AS rekey_slotted_voucher,
       try(format('UPDATE voucher.code_use SET voucher_id = gen_random_uuid() WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'slotted_voucher')) AS repoint_to_no_voucher,
       try(format('UPDATE voucher.code_use SET used = used WHERE tenant_id = %L AND voucher_id = %L',
                  :'shop', :'slotted_voucher')) AS count_update;
DELETE FROM voucher.redemption;
SELECT try('TRUNCATE voucher.code CASCADE') AS truncate_codes,
       try('TRUNCATE voucher.code, voucher.code_use CASCADE') AS truncate_with_slots;
ROLLBACK;

-- the per-customer counters (voucher.customer_usage) have no foreign keys either: the customer and
-- campaign a counter names cannot be deleted, re-keyed or truncated away, and a counter cannot be
-- re-pointed at a customer or campaign that does not exist (rolled back)
BEGIN;
SELECT u.customer_id AS counted_customer, u.campaign_id AS counted_campaign
  FROM voucher.customer_usage u WHERE u.tenant_id = :'shop'
 ORDER BY u.campaign_id, u.customer_id LIMIT 1 \gset
-- without the redemptions (and, for the campaign, the codes' own check) that would refuse first
DELETE FROM voucher.redemption WHERE tenant_id = :'shop' AND customer_id = :'counted_customer';
ALTER TABLE voucher.campaign DISABLE TRIGGER keep_refs, DISABLE TRIGGER keep_refs_rekey,
                             DISABLE TRIGGER keep_refs_truncate;
SELECT try(format('DELETE FROM voucher.customer WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'counted_customer')) AS delete_counted_customer,
       try(format('UPDATE voucher.customer SET customer_id = gen_random_uuid() WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'counted_customer')) AS rekey_counted_customer;
SELECT try(format('DELETE FROM voucher.campaign WHERE tenant_id = %L AND campaign_id = %L',
                  :'shop', :'counted_campaign')) AS delete_counted_campaign,
       try(format('UPDATE voucher.campaign SET campaign_id = gen_random_uuid() WHERE tenant_id = %L AND campaign_id = %L',
                  :'shop', :'counted_campaign')) AS rekey_counted_campaign,
       try(format('UPDATE voucher.campaign SET name = name WHERE tenant_id = %L AND campaign_id = %L',
                  :'shop', :'counted_campaign')) AS other_update;
SELECT try(format('UPDATE voucher.customer_usage SET customer_id = gen_random_uuid() WHERE tenant_id = %L AND customer_id = %L AND campaign_id = %L',
                  :'shop', :'counted_customer', :'counted_campaign')) AS repoint_to_no_customer,
       try(format('UPDATE voucher.customer_usage SET campaign_id = gen_random_uuid() WHERE tenant_id = %L AND customer_id = %L AND campaign_id = %L',
                  :'shop', :'counted_customer', :'counted_campaign')) AS repoint_to_no_campaign,
       try(format('UPDATE voucher.customer_usage SET used = used WHERE tenant_id = %L AND customer_id = %L AND campaign_id = %L',
                  :'shop', :'counted_customer', :'counted_campaign')) AS count_update;
SELECT try('TRUNCATE voucher.campaign CASCADE') AS truncate_campaigns,
       try('TRUNCATE voucher.campaign, voucher.customer_usage CASCADE') AS truncate_with_counters;
ROLLBACK;

------------------------------------------------------------------------------------------------
-- validate reads a code and its campaign by index probes keyed by the context's tenant
-- (src/redeem/lookup.rs): the same code in two tenants is each tenant's own: valid in the other
-- tenant, used up (VC004) in the shop (rolled back)
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'other_admin') IS NOT NULL AS ok;
SELECT voucher.add_code(voucher.create_campaign('other twenty', discount_type => 'percent',
                                                discount_value => 20, currency => 'EUR'),
                        'PCT-1') AS other_pct_1 \gset
SELECT valid, sqlstate, discount, voucher_id = :'other_pct_1' AS others_own
  FROM voucher.validate('pct-1', order_amount => 80);
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT valid, sqlstate, discount, voucher_id <> :'other_pct_1' AS shops_own
  FROM voucher.validate('pct-1', order_amount => 80);
ROLLBACK;
-- the probes answer only while each table's one policy is tenant_isolation as installed: a
-- policy a DBA adds is obeyed (validate answers through the statement, which applies it); once
-- dropped, the code is back (rolled back)
\c - postgres
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT v.code, x.valid, x.sqlstate, x.voucher_id IS NOT NULL AS found
  FROM (VALUES ('pct-2'), ('five-2')) v(code), LATERAL voucher.validate(v.code, order_amount => 10) x;
CREATE POLICY hide_pct_2 ON voucher.code AS RESTRICTIVE USING (code <> 'PCT2');
SELECT v.code, x.valid, x.sqlstate, x.voucher_id IS NOT NULL AS found
  FROM (VALUES ('pct-2'), ('five-2')) v(code), LATERAL voucher.validate(v.code, order_amount => 10) x;
DROP POLICY hide_pct_2 ON voucher.code;
SELECT v.code, x.valid, x.sqlstate, x.voucher_id IS NOT NULL AS found
  FROM (VALUES ('pct-2'), ('five-2')) v(code), LATERAL voucher.validate(v.code, order_amount => 10) x;
ROLLBACK;

------------------------------------------------------------------------------------------------
-- A customer named for the first time (issue 17): the one-statement claims find the customer
-- themselves (src/redeem/statements.rs, Customer), match nothing while it does not exist, and
-- the call then creates it and claims again. Whichever path a code takes (the fast claim of a
-- limited voucher, the spread claim of an unlimited one, the per-customer claim), one customer
-- per new source_id, every redemption naming it; a refused call (not started yet, used up)
-- creates no customer (rolled back)
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.add_code(c.id, c.code) IS NOT NULL AS added
  FROM (VALUES (:'three'::uuid, 'FIRST-LIMITED'), (:'unlimited', 'FIRST-UNLIMITED'),
               (:'per_cust', 'FIRST-PER-CUSTOMER'), (:'later', 'FIRST-LATER')) c(id, code);
SELECT v.code, v.customer, try(format('SELECT voucher.redeem(%L, customer => %L)', v.code, v.customer)) AS outcome
  FROM (VALUES (1, 'first-limited', 'fresh-a'), (2, 'first-limited', 'fresh-a'),
               (3, 'first-unlimited', 'fresh-b'), (4, 'first-unlimited', 'fresh-b'),
               (5, 'first-unlimited', 'fresh-c'), (6, 'first-limited', 'fresh-c'),
               (7, 'first-per-customer', 'fresh-d'), (8, 'first-per-customer', 'fresh-d'),
               (9, 'first-later', 'fresh-e'), (10, 'first-limited', 'fresh-f')) v(n, code, customer)
 ORDER BY v.n;
SELECT source_id, count(*) AS rows FROM voucher.customers WHERE source_id LIKE 'fresh-%'
 GROUP BY source_id ORDER BY source_id;
SELECT r.code, r.customer, count(*) AS redemptions,
       bool_and(r.customer_id = c.customer_id) AS names_the_customer
  FROM voucher.redemptions r JOIN voucher.customers c ON c.source_id = r.customer
 WHERE r.customer LIKE 'fresh-%'
 GROUP BY r.code, r.customer ORDER BY r.code, r.customer;
SELECT voucher_code, redeemed_count FROM (
    SELECT code AS voucher_code, redeemed_count FROM voucher.vouchers
     WHERE code IN ('FIRST-LIMITED', 'FIRST-UNLIMITED', 'FIRST-PER-CUSTOMER', 'FIRST-LATER')) v
 ORDER BY voucher_code;
ROLLBACK;
