-- Redemptions and rollbacks. validate() and redeem() are Rust (src/redeem/), which also
-- explains the locking; rollback follows the same lock order: redemption -> customer_usage -> code
-- (or the code_use slot the use was counted in).

CREATE TABLE voucher.customer_usage (
    tenant_id    uuid    NOT NULL,
    campaign_id  uuid    NOT NULL,
    customer_id  uuid    NOT NULL,
    used         integer NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, campaign_id, customer_id),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES voucher.campaign,
    FOREIGN KEY (tenant_id, customer_id) REFERENCES voucher.customer
) WITH (fillfactor = 90);
COMMENT ON TABLE voucher.customer_usage IS
    'How often a customer redeemed vouchers of a campaign: the guard of per_customer_limit.';

CREATE TABLE voucher.redemption (
    tenant_id        uuid        NOT NULL,
    redemption_id    uuid        NOT NULL,
    voucher_id       uuid        NOT NULL,
    campaign_id      uuid        NOT NULL,
    customer_id      uuid,
    order_id         text,
    order_amount     numeric,
    amount           numeric,
    discount         numeric     NOT NULL,
    balance_after    numeric,
    idempotency_key  text,
    request_hash     bytea,
    metadata         bytea,
    redeemed_at      timestamptz NOT NULL DEFAULT now(),
    redeemed_by      text        NOT NULL,
    rolled_back_at   timestamptz,
    rollback_reason  text,
    rolled_back_by   text,
    key_id           integer,  -- after the 0.1.0 columns: the upgrade from 0.1.0 adds it
    use_slot         smallint, -- then this (the upgrade's perf section, after crypto's)
    PRIMARY KEY (tenant_id, redemption_id),
    UNIQUE (tenant_id, idempotency_key),
    FOREIGN KEY (tenant_id, voucher_id) REFERENCES voucher.code,
    FOREIGN KEY (tenant_id, customer_id) REFERENCES voucher.customer
);
COMMENT ON TABLE voucher.redemption IS 'Every redemption; a rollback marks its row, once.';
COMMENT ON COLUMN voucher.redemption.amount IS 'What a gift card redemption spent.';
COMMENT ON COLUMN voucher.redemption.use_slot IS
    'The voucher.code_use slot this use was counted in; NULL: the voucher''s own redeemed_count.';
COMMENT ON COLUMN voucher.redemption.request_hash IS
    'With an idempotency key: SHA-256 of the arguments, which a replay must match.';
CREATE INDEX redemption_voucher_idx ON voucher.redemption (tenant_id, voucher_id);
CREATE INDEX redemption_time_idx ON voucher.redemption (tenant_id, redeemed_at);
COMMENT ON COLUMN voucher.redemption.metadata IS
    'Encrypted (AES-256-GCM) under the tenant data key key_id: metadata often holds personal data.';
CREATE INDEX redemption_key_idx ON voucher.redemption (tenant_id, key_id) WHERE key_id IS NOT NULL;

SELECT voucher._isolate_tenant('voucher.customer_usage');

SELECT voucher._isolate_tenant('voucher.redemption');

CREATE FUNCTION voucher.rollback_redemption(
    INOUT redemption_id  uuid,
    reason               text DEFAULT NULL,
    OUT voucher_id       uuid,
    OUT restored         numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t  uuid := voucher._authorize('redeem');
    r  record;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL' USING ERRCODE = '22004';
    ELSIF length(reason) > 500 THEN
        RAISE EXCEPTION 'reason is longer than 500 characters' USING ERRCODE = '22023';
    END IF;
    UPDATE voucher.redemption x
       SET rolled_back_at = now(), rollback_reason = $2, rolled_back_by = voucher._actor_label()
     WHERE x.tenant_id = t AND x.redemption_id = $1 AND x.rolled_back_at IS NULL
    RETURNING x.voucher_id, x.campaign_id, x.customer_id, x.amount, x.use_slot INTO r;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM voucher.redemption x WHERE x.tenant_id = t AND x.redemption_id = $1) THEN
            PERFORM voucher._raise('VC010');
        ELSE
            PERFORM voucher._raise('VC013');
        END IF;
    END IF;
    IF r.customer_id IS NOT NULL THEN
        UPDATE voucher.customer_usage u SET used = u.used - 1
         WHERE u.tenant_id = t AND u.campaign_id = r.campaign_id AND u.customer_id = r.customer_id
           AND u.used > 0;
    END IF;
    IF r.use_slot IS NULL THEN
        UPDATE voucher.code v
           SET redeemed_count = v.redeemed_count - 1, balance = v.balance + r.amount
         WHERE v.tenant_id = t AND v.voucher_id = r.voucher_id;
    ELSE
        -- the use was counted in a slot (a hot voucher without a limit): give it back there
        UPDATE voucher.code_use u SET used = u.used - 1
         WHERE u.tenant_id = t AND u.voucher_id = r.voucher_id AND u.slot = r.use_slot;
    END IF;
    voucher_id := r.voucher_id;
    restored := coalesce(r.amount, 0);
    PERFORM voucher._audit('redemption.rolled_back', 'redemption', $1::text,
        jsonb_build_object('voucher_id', r.voucher_id, 'restored', restored, 'reason', $2));
END
$$;
COMMENT ON FUNCTION voucher.rollback_redemption(uuid, text) IS
    'Gives back a redemption''s use and gift card amount, once (VC010 the second time).';

CREATE FUNCTION voucher.set_campaign_active(campaign uuid, active boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t      uuid := voucher._authorize('manage_campaigns');
    before boolean;
BEGIN
    IF campaign IS NULL OR active IS NULL THEN
        RAISE EXCEPTION 'campaign and active must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT c.active INTO before FROM voucher.campaign c
     WHERE c.tenant_id = t AND c.campaign_id = set_campaign_active.campaign FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such campaign' USING ERRCODE = '22023';
    END IF;
    UPDATE voucher.campaign c SET active = set_campaign_active.active
     WHERE c.tenant_id = t AND c.campaign_id = set_campaign_active.campaign;
    PERFORM voucher._audit(CASE WHEN set_campaign_active.active THEN 'campaign.enabled'
                                ELSE 'campaign.disabled' END, 'campaign', campaign::text,
        jsonb_build_object('before', before, 'after', set_campaign_active.active));
END
$$;
COMMENT ON FUNCTION voucher.set_campaign_active(uuid, boolean) IS
    'Enables or disables every voucher of a campaign at once.';

CREATE VIEW voucher.redemptions WITH (security_barrier) AS
SELECT r.redemption_id AS id, r.voucher_id, coalesce(v.display, v.code) AS code, r.campaign_id,
       voucher._decrypt('customer', 'source_id', cu.customer_id, cu.source_id) AS customer,
       r.order_id, r.order_amount, r.amount, r.discount,
       r.balance_after, CASE WHEN r.rolled_back_at IS NULL THEN 'redeemed' ELSE 'rolled back' END
       AS status, r.redeemed_at, r.redeemed_by, r.rolled_back_at, r.rollback_reason,
       r.rolled_back_by, r.idempotency_key,
       voucher._decrypt('redemption', 'metadata', r.redemption_id, r.metadata)::jsonb AS metadata,
       r.customer_id
  FROM voucher.redemption r
  JOIN voucher.code v ON v.tenant_id = r.tenant_id AND v.voucher_id = r.voucher_id
  LEFT JOIN voucher.customer cu ON cu.tenant_id = r.tenant_id AND cu.customer_id = r.customer_id
 WHERE voucher._can_read('read_redemptions');
COMMENT ON VIEW voucher.redemptions IS 'The tenant''s redemptions and their rollbacks.';
