-- Redemptions and rollbacks. validate() and redeem() are Rust (src/redeem/), which also
-- explains the locking; rollback follows the same lock order: redemption -> customer_usage -> code
-- (or the code_use slot the use was counted in).

CREATE TABLE voucher.customer_usage (
    tenant_id    uuid    NOT NULL,
    campaign_id  uuid    NOT NULL,
    customer_id  uuid    NOT NULL,
    used         integer NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, campaign_id, customer_id)
    -- no foreign keys to voucher.campaign and voucher.customer: see _redemptions_keep_refs below
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
    PRIMARY KEY (tenant_id, redemption_id)
    -- no foreign keys to voucher.code and voucher.customer: see _redemptions_keep_refs below
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
-- An idempotency key is unique in its tenant. Partial: most redemptions carry none, and then
-- cost this index nothing (issue 17).
CREATE UNIQUE INDEX redemption_idempotency_key_idx ON voucher.redemption (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

SELECT voucher._isolate_tenant('voucher.customer_usage');

SELECT voucher._isolate_tenant('voucher.redemption');

-- No foreign keys from voucher.redemption to voucher.code and voucher.customer, nor from
-- voucher.customer_usage to voucher.campaign and voucher.customer (issue 17): each was one more
-- query per redemption (per first redemption of a customer in a campaign, for the counters), and
-- the voucher's a key-share lock on the voucher row that every concurrent redeemer of a hot
-- voucher took; planned by PostgreSQL before the customer table was ever analyzed, the
-- customer's check walked the tenant's customers by the blind index's prefix (14,698 buffers at
-- 50,000 customers, notes/issue-17-traps). The functions that insert these rows (the only
-- writers: clients have no INSERT right) hold what they name already: the claim updates or reads
-- the voucher in the same statement (and a voucher's codes keep its campaign, sql/codes.sql), and
-- the customer was found under FOR KEY SHARE or created in the same transaction. Nothing in the
-- extension deletes a voucher, a campaign or a customer (forget_customer pseudonymizes). Direct
-- DML keeps the integrity the foreign keys gave, by triggers the redemption path never fires: a
-- voucher, campaign or customer that a redemption or a counter names cannot be deleted, re-keyed
-- or truncated away, and a redemption or counter cannot be re-pointed at one that does not exist
-- (23503, or 0A000 for TRUNCATE, as with the keys). Like the keys' checks it sees every tenant's
-- rows: SECURITY DEFINER, and it stays the extension owner's (a superuser) instead of
-- voucher_definer's (sql/finalize.sql). It also keeps a hot voucher's slots (voucher.code_use)
-- and their voucher, whose key went last (a parallel pg_restore ignores the keys' order, see
-- sql/tenancy.sql): the claim that adds a slot reads the voucher FOR KEY SHARE, as the key's
-- check did (src/redeem/hot.rs).
CREATE FUNCTION voucher._redemptions_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: rows truncated in the same statement are gone by now
        IF TG_TABLE_NAME IN ('code', 'customer')
           AND EXISTS (SELECT FROM voucher.redemption r
                        WHERE TG_TABLE_NAME = 'code' OR r.customer_id IS NOT NULL) THEN
            RAISE EXCEPTION 'cannot truncate voucher.% while voucher.redemption names its rows',
                TG_TABLE_NAME USING ERRCODE = '0A000',
                HINT = 'truncate voucher.redemption in the same statement';
        ELSIF TG_TABLE_NAME = 'code' AND EXISTS (SELECT FROM voucher.code_use) THEN
            RAISE EXCEPTION 'cannot truncate voucher.code while voucher.code_use names its rows'
                USING ERRCODE = '0A000', HINT = 'truncate voucher.code_use in the same statement';
        ELSIF TG_TABLE_NAME IN ('customer', 'campaign')
              AND EXISTS (SELECT FROM voucher.customer_usage) THEN
            RAISE EXCEPTION 'cannot truncate voucher.% while voucher.customer_usage names its rows',
                TG_TABLE_NAME USING ERRCODE = '0A000',
                HINT = 'truncate voucher.customer_usage in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME IN ('redemption', 'code_use') THEN
        -- a redemption, and a hot voucher's use slot, name a voucher; a redemption maybe a customer
        -- (a nested IF: code_use has no customer_id, and NEW.customer_id is resolved when reached)
        IF NOT EXISTS (SELECT FROM voucher.code v WHERE v.tenant_id = NEW.tenant_id
                          AND v.voucher_id = NEW.voucher_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.%: no such voucher', TG_TABLE_NAME USING ERRCODE = '23503';
        ELSIF TG_TABLE_NAME = 'redemption' THEN
            IF NEW.customer_id IS NOT NULL
               AND NOT EXISTS (SELECT FROM voucher.customer c WHERE c.tenant_id = NEW.tenant_id
                                  AND c.customer_id = NEW.customer_id FOR KEY SHARE) THEN
                RAISE EXCEPTION 'voucher.redemption: no such customer' USING ERRCODE = '23503';
            END IF;
        END IF;
    ELSIF TG_TABLE_NAME = 'customer_usage' THEN
        IF NOT EXISTS (SELECT FROM voucher.campaign c WHERE c.tenant_id = NEW.tenant_id
                          AND c.campaign_id = NEW.campaign_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.customer_usage: no such campaign' USING ERRCODE = '23503';
        ELSIF NOT EXISTS (SELECT FROM voucher.customer c WHERE c.tenant_id = NEW.tenant_id
                             AND c.customer_id = NEW.customer_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.customer_usage: no such customer' USING ERRCODE = '23503';
        END IF;
    ELSIF TG_TABLE_NAME = 'code' THEN
        IF EXISTS (SELECT FROM voucher.redemption r
                    WHERE r.tenant_id = OLD.tenant_id AND r.voucher_id = OLD.voucher_id) THEN
            RAISE EXCEPTION 'voucher.code: redemptions name this voucher' USING ERRCODE = '23503';
        ELSIF EXISTS (SELECT FROM voucher.code_use u
                       WHERE u.tenant_id = OLD.tenant_id AND u.voucher_id = OLD.voucher_id) THEN
            RAISE EXCEPTION 'voucher.code: use counters name this voucher' USING ERRCODE = '23503';
        END IF;
    ELSIF TG_TABLE_NAME = 'campaign' THEN
        IF EXISTS (SELECT FROM voucher.customer_usage u
                    WHERE u.tenant_id = OLD.tenant_id AND u.campaign_id = OLD.campaign_id) THEN
            RAISE EXCEPTION 'voucher.campaign: per-customer counters name this campaign'
                USING ERRCODE = '23503';
        END IF;
    ELSIF EXISTS (SELECT FROM voucher.redemption r
                   WHERE r.tenant_id = OLD.tenant_id AND r.customer_id = OLD.customer_id) THEN
        RAISE EXCEPTION 'voucher.customer: redemptions name this customer' USING ERRCODE = '23503';
    ELSIF EXISTS (SELECT FROM voucher.customer_usage u
                   WHERE u.tenant_id = OLD.tenant_id AND u.customer_id = OLD.customer_id) THEN
        RAISE EXCEPTION 'voucher.customer: per-customer counters name this customer'
            USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_refs AFTER UPDATE OF tenant_id, voucher_id, customer_id ON voucher.redemption
    FOR EACH ROW WHEN (current_user <> 'voucher_definer')
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER UPDATE OF tenant_id, campaign_id, customer_id ON voucher.customer_usage
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id
                       OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER UPDATE OF tenant_id, voucher_id ON voucher.code_use
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.voucher_id <> NEW.voucher_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.code
    FOR EACH ROW EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id, voucher_id ON voucher.code
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.voucher_id <> NEW.voucher_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.code
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.customer
    FOR EACH ROW EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id, customer_id ON voucher.customer
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.customer_id <> NEW.customer_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.customer
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._redemptions_keep_refs();
-- (voucher.campaign's own triggers, for its codes, are keep_refs* of sql/codes.sql)
CREATE TRIGGER keep_usage AFTER DELETE ON voucher.campaign
    FOR EACH ROW EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_usage_rekey AFTER UPDATE OF tenant_id, campaign_id ON voucher.campaign
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id)
    EXECUTE FUNCTION voucher._redemptions_keep_refs();
CREATE TRIGGER keep_usage_truncate AFTER TRUNCATE ON voucher.campaign
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._redemptions_keep_refs();

CREATE FUNCTION voucher.rollback_redemption(
    INOUT redemption_id  uuid,
    reason               text DEFAULT NULL,
    OUT voucher_id       uuid,
    OUT restored         numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its statements are planned once per backend and kept: planned without sequential scans, a
-- table analyzed while nearly empty cannot leave it a plan that scans every redemption
-- (issue 17, notes/issue-17-seqscan); the redemption's own look-ups see below
SET enable_seqscan = off
AS $$
#variable_conflict use_column
DECLARE
    t         uuid := voucher._authorize('redeem');
    r         record;
    n         bigint;
    found_it  boolean;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'redemption_id must not be NULL' USING ERRCODE = '22004';
    ELSIF length(reason) > 500 THEN
        RAISE EXCEPTION 'reason is longer than 500 characters' USING ERRCODE = '22023';
    END IF;
    -- The redemption by its primary key, planned at each call (EXECUTE): on a table never
    -- analyzed every index of voucher.redemption leads with tenant_id and all estimate one row,
    -- so a kept plan made while the table was small could walk all the tenant's redemptions by
    -- another index (redemption_time_idx) until the first ANALYZE (issue 17,
    -- notes/issue-17-traps). Planned now, the table's real size makes the primary key win.
    EXECUTE 'UPDATE voucher.redemption x
                SET rolled_back_at = now(), rollback_reason = $3,
                    rolled_back_by = voucher._actor_label()
              WHERE x.tenant_id = $1 AND x.redemption_id = $2 AND x.rolled_back_at IS NULL
             RETURNING x.voucher_id, x.campaign_id, x.customer_id, x.amount, x.use_slot'
       INTO r USING t, $1, $2;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        EXECUTE 'SELECT EXISTS (SELECT FROM voucher.redemption x
                                 WHERE x.tenant_id = $1 AND x.redemption_id = $2)'
           INTO found_it USING t, $1;
        IF found_it THEN
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
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
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
