-- After the hot storm: every use is counted exactly once, in the place its redemption names
-- (use_slot: a slot of voucher.code_use; NULL: the voucher's own redeemed_count), and every
-- rollback gave its use back to that place.
\set ON_ERROR_STOP on
DO $$
DECLARE
    t uuid; vid uuid; on_row int; total int; live bigint; live_on_row bigint; bad_slots bigint;
    slots bigint; spread bigint; rolled bigint;
BEGIN
    SELECT tenant_id, voucher_id, redeemed_count INTO t, vid, on_row FROM voucher.code WHERE code = 'UNLIMITED';
    SELECT count(*), count(*) FILTER (WHERE use_slot IS NULL), count(*) FILTER (WHERE use_slot IS NOT NULL)
      INTO live, live_on_row, spread
      FROM voucher.redemption WHERE tenant_id = t AND voucher_id = vid AND rolled_back_at IS NULL;
    SELECT count(*) INTO rolled FROM voucher.redemption
     WHERE tenant_id = t AND voucher_id = vid AND rolled_back_at IS NOT NULL;
    SELECT count(*) INTO bad_slots FROM (
        SELECT s.slot FROM generate_series(0, 15) s(slot)
          LEFT JOIN voucher.code_use u ON u.tenant_id = t AND u.voucher_id = vid AND u.slot = s.slot
         WHERE coalesce(u.used, 0) <> (SELECT count(*) FROM voucher.redemption r
                                        WHERE r.tenant_id = t AND r.voucher_id = vid
                                          AND r.rolled_back_at IS NULL AND r.use_slot = s.slot)) x;
    SELECT count(*) INTO slots FROM voucher.code_use WHERE tenant_id = t AND voucher_id = vid;
    PERFORM voucher.authenticate((SELECT key FROM stress_key));
    SELECT redeemed_count INTO total FROM voucher.vouchers WHERE code = 'UNLIMITED';
    IF on_row <> live_on_row THEN
        RAISE EXCEPTION 'hot voucher: % uses on its row, % live redemptions counted there', on_row, live_on_row;
    ELSIF bad_slots <> 0 THEN
        RAISE EXCEPTION 'hot voucher: % slots disagree with the redemptions counted in them', bad_slots;
    ELSIF total <> live THEN
        RAISE EXCEPTION 'hot voucher: the view counts % uses, % live redemptions', total, live;
    ELSIF live < 100 OR rolled < 10 THEN
        RAISE EXCEPTION 'hot voucher: only % redemptions and % rollbacks: the storm did not happen', live, rolled;
    ELSIF spread = 0 THEN
        RAISE EXCEPTION 'hot voucher: no use was counted in a slot under 32 clients';
    END IF;
    RAISE NOTICE 'hot check passed: % live uses (% in % slots), % rolled back, each in its place',
        live, spread, slots, rolled;
END
$$;
