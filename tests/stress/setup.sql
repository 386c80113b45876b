-- Stress test data: one tenant, a voucher with limit 100, a gift card with balance 1000, and a
-- campaign limiting each customer to 5 redemptions over its 50 vouchers.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS voucher_ext;
DROP TABLE IF EXISTS stress_key;
CREATE TABLE stress_key (key text NOT NULL);
DO $$
DECLARE
    t uuid := voucher.create_tenant('stress');
    k text := voucher.create_api_key('admin', tenant => t);
    per uuid;
BEGIN
    INSERT INTO stress_key VALUES (k);
    PERFORM voucher.authenticate(k);
    PERFORM voucher.add_code(voucher.create_campaign('hot', redemption_limit => 100), 'HOT');
    PERFORM voucher.add_code(voucher.create_campaign('card', kind => 'gift_card', gift_balance => 1000,
                                                     redemption_limit => NULL), 'CARD');
    per := voucher.create_campaign('five per customer', redemption_limit => NULL, per_customer_limit => 5);
    PERFORM voucher.add_code(per, 'PER-' || n) FROM generate_series(1, 50) n;
END
$$;

-- One attempt; business-rule refusals are expected under contention and counted, not fatal.
CREATE OR REPLACE FUNCTION stress_attempt(code text, customer text, amount numeric) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM voucher.redeem(code, customer => customer, amount => amount);
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'VC004' OR SQLSTATE 'VC005' OR SQLSTATE 'VC006' THEN
    RETURN SQLSTATE;
END
$$;
