-- The hot-voucher storm (issue 17): one voucher without a limit, in the stress tenant, and the
-- attempt function: a redemption, or the rollback of one earlier redemption picked at random.
SET client_min_messages = warning;
DO $$
BEGIN
    PERFORM voucher.authenticate((SELECT key FROM stress_key));
    PERFORM voucher.add_code(voucher.create_campaign('hot, no limit', discount_type => 'amount',
                                                     discount_value => 5, redemption_limit => NULL),
                             'UNLIMITED');
END
$$;

CREATE OR REPLACE FUNCTION stress_hot_attempt(act int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    victim uuid;
BEGIN
    IF act = 1 THEN
        SELECT r.redemption_id INTO victim FROM voucher.redemption r
          JOIN voucher.code v USING (tenant_id, voucher_id)
         WHERE v.code = 'UNLIMITED' AND r.rolled_back_at IS NULL
         ORDER BY random() LIMIT 1;
        IF victim IS NULL THEN
            RETURN 'none';
        END IF;
        PERFORM voucher.rollback_redemption(victim, 'stress');
        RETURN 'rolled back';
    END IF;
    PERFORM voucher.redeem('UNLIMITED', order_amount => 50);
    RETURN 'ok';
EXCEPTION WHEN SQLSTATE 'VC010' THEN  -- two clients picked the same redemption to roll back
    RETURN SQLSTATE;
END
$$;
