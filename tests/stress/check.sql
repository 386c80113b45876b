-- After the storm: exactly the limits were used, and every ledger balances.
\set ON_ERROR_STOP on
SELECT voucher.authenticate((SELECT key FROM stress_key), session => true) IS NOT NULL AS authenticated;
SELECT v.code, v.redeemed_count,
       (SELECT count(*) FROM voucher.redemptions r WHERE r.voucher_id = v.id AND r.status = 'redeemed') AS redemptions,
       v.balance,
       (SELECT 1000 - coalesce(sum(r.amount), 0) FROM voucher.redemptions r
         WHERE r.voucher_id = v.id AND r.status = 'redeemed') AS balance_from_ledger
  FROM voucher.vouchers v WHERE v.code IN ('HOT', 'CARD');
SELECT count(*) AS the_customers_redemptions FROM voucher.redemptions WHERE customer = 'the-customer';
DO $$
DECLARE
    hot int; hot_ledger bigint; card numeric; card_ledger numeric; per bigint; per_sum bigint;
BEGIN
    SELECT redeemed_count INTO hot FROM voucher.vouchers WHERE code = 'HOT';
    SELECT count(*) INTO hot_ledger FROM voucher.redemptions WHERE code = 'HOT';
    SELECT balance INTO card FROM voucher.vouchers WHERE code = 'CARD';
    SELECT 1000 - coalesce(sum(amount), 0) INTO card_ledger FROM voucher.redemptions WHERE code = 'CARD';
    SELECT count(*) INTO per FROM voucher.redemptions WHERE customer = 'the-customer';
    SELECT sum(redeemed_count) INTO per_sum FROM voucher.vouchers WHERE campaign = 'five per customer';
    IF hot <> 100 OR hot_ledger <> 100 THEN
        RAISE EXCEPTION 'hot voucher: % uses counted, % redemptions, expected exactly 100', hot, hot_ledger;
    END IF;
    IF card < 0 OR card <> card_ledger THEN
        RAISE EXCEPTION 'gift card: balance % but the ledger says %', card, card_ledger;
    END IF;
    IF card > 8 THEN
        RAISE EXCEPTION 'gift card: % left, the storm should have spent it down', card;
    END IF;
    IF per <> 5 OR per_sum <> 5 THEN
        RAISE EXCEPTION 'per-customer limit: % redemptions (% counted), expected exactly 5', per, per_sum;
    END IF;
    RAISE NOTICE 'stress check passed: hot 100/100, card balance % = ledger, customer 5/5', card;
END
$$;
