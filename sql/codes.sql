-- Campaigns and their vouchers (one row per code).
--
-- Functions named _x are internal helpers, executable by voucher_definer only and called only
-- from our SECURITY DEFINER functions, which pin search_path. They carry no SET clause of their
-- own: each would push and pop the setting on every call, and SQL ones could not be inlined.

CREATE TABLE voucher.campaign (
    tenant_id           uuid        NOT NULL,
    campaign_id         uuid        NOT NULL,
    name                text        NOT NULL CHECK (name <> ''),
    kind                text        NOT NULL CHECK (kind IN ('discount', 'gift_card')),
    discount_type       text        CHECK (discount_type IN ('percent', 'amount', 'fixed')),
    discount_value      numeric,
    max_discount        numeric     CHECK (max_discount >= 0),
    gift_balance        numeric     CHECK (gift_balance > 0),
    currency            text        CHECK (currency ~ '^[A-Z]{3}$'),
    starts_at           timestamptz,
    expires_at          timestamptz,
    redemption_limit    integer     CHECK (redemption_limit > 0),
    per_customer_limit  integer     CHECK (per_customer_limit > 0),
    min_order_amount    numeric     CHECK (min_order_amount >= 0),
    code_pattern        text        NOT NULL,
    code_charset        text        NOT NULL,
    code_prefix         text        NOT NULL DEFAULT '',
    code_postfix        text        NOT NULL DEFAULT '',
    code_check_char     boolean     NOT NULL DEFAULT false,
    -- campaigns with equal shapes draw codes from the same space (voucher._code_shape)
    code_shape          text        NOT NULL,
    active              boolean     NOT NULL DEFAULT true,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          text        NOT NULL,
    PRIMARY KEY (tenant_id, campaign_id),
    CHECK (kind = 'discount' AND gift_balance IS NULL
        OR kind = 'gift_card' AND gift_balance IS NOT NULL AND discount_type IS NULL),
    CHECK ((discount_type IS NULL) = (discount_value IS NULL)),
    CHECK (starts_at < expires_at)
);
COMMENT ON TABLE voucher.campaign IS 'Campaigns: the rules every voucher of the campaign follows.';
CREATE INDEX campaign_shape_idx ON voucher.campaign (tenant_id, code_shape);

-- The counters' checks are domains, not CHECKs of the table: every statement that updates a
-- table reads its CHECKs back from pg_constraint and plans them (for a redemption's claim, 20k
-- instructions per call; issue 17, callgrind), where a domain's check is planned once per
-- backend (the type cache) and runs only on a value the statement computes. The constraints
-- keep the names the table's CHECKs had.
CREATE DOMAIN voucher.use_count AS integer
    CONSTRAINT code_redeemed_count_check CHECK (VALUE >= 0);
CREATE DOMAIN voucher.balance_left AS numeric
    CONSTRAINT code_balance_check CHECK (VALUE >= 0);

-- One row per voucher. The counters (redeemed_count, balance) are in no index, so redemption
-- updates stay HOT; fillfactor leaves room on each page for those new row versions.
CREATE TABLE voucher.code (
    tenant_id       uuid        NOT NULL,
    voucher_id      uuid        NOT NULL,
    campaign_id     uuid        NOT NULL,
    code            text        COLLATE "C" NOT NULL,
    display         text,
    active          boolean     NOT NULL DEFAULT true,
    redeemed_count  voucher.use_count NOT NULL DEFAULT 0,
    balance         voucher.balance_left,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, voucher_id),
    UNIQUE (tenant_id, code)
    -- no foreign key to voucher.campaign: see _codes_keep_refs below
) WITH (fillfactor = 90);
COMMENT ON TABLE voucher.code IS 'Vouchers: the canonical code (upper case, no spaces or dashes), counters, gift balance.';
COMMENT ON COLUMN voucher.code.display IS 'The code as issued (with separators), when it differs from the canonical form.';
CREATE INDEX code_campaign_idx ON voucher.code (tenant_id, campaign_id);

-- A hot voucher's counters (issue 17). A voucher whose campaign has no redemption limit
-- (discount kind, no per-customer limit) counts its uses here, in up to 16 slot rows, never on
-- its own row: a redemption takes the first slot nobody holds (SKIP LOCKED), adding one when all
-- are held (src/redeem/hot.rs). Its uses are redeemed_count (what was counted on the row, e.g.
-- before this design) + sum(used). The redemption row records the slot it counted in (use_slot),
-- so a rollback gives the use back to that slot. Vouchers with a limit or a balance never use
-- slots: their one row stays the exact guard.
CREATE TABLE voucher.code_use (
    tenant_id   uuid      NOT NULL,
    voucher_id  uuid      NOT NULL,
    slot        smallint  NOT NULL CHECK (slot >= 0 AND slot < 16),
    used        integer   NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, voucher_id, slot)
    -- no foreign key to voucher.code: see _redemptions_keep_refs (sql/redeem.sql)
) WITH (fillfactor = 50);
COMMENT ON TABLE voucher.code_use IS
    'Uses of a voucher without a limit, counted in 16 slots so that concurrent redemptions do not queue on one row.';

SELECT voucher._isolate_tenant('voucher.campaign');
CREATE TRIGGER keep_tenant AFTER UPDATE OF tenant_id ON voucher.campaign
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id)
    EXECUTE FUNCTION voucher._tenant_keep_refs();   -- no foreign key: see sql/tenancy.sql

SELECT voucher._isolate_tenant('voucher.code');

SELECT voucher._isolate_tenant('voucher.code_use');

-- No foreign key from voucher.code to voucher.campaign (issue 17): its check was one query per
-- inserted code, a third of what generate_codes spent on a code. The functions that insert codes
-- (the only writers: clients have no INSERT right) read the campaign first under FOR KEY SHARE
-- (src/codes/generate.rs, load_campaign), the lock the key's check took for every row, once per
-- call. Nothing in the extension deletes or re-keys a campaign. Direct DML keeps the integrity
-- the key gave, by triggers the code-inserting functions never fire: a campaign that codes name
-- cannot be deleted, re-keyed or truncated away, and a code cannot be re-pointed at a campaign
-- that does not exist (23503, or 0A000 for TRUNCATE, as with the key). As with
-- _redemptions_keep_refs it sees every tenant's rows, and stays the extension owner's
-- (sql/finalize.sql). A row inserted by the owner itself is not checked (the same holds for
-- redemptions): a restore loads codes and campaigns in any order.
CREATE FUNCTION voucher._codes_keep_refs() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- an AFTER trigger: codes truncated in the same statement are gone by now
        IF EXISTS (SELECT FROM voucher.code) THEN
            RAISE EXCEPTION 'cannot truncate voucher.campaign while voucher.code names its rows'
                USING ERRCODE = '0A000', HINT = 'truncate voucher.code in the same statement';
        END IF;
    ELSIF TG_TABLE_NAME = 'code' THEN
        IF NOT EXISTS (SELECT FROM voucher.campaign c WHERE c.tenant_id = NEW.tenant_id
                          AND c.campaign_id = NEW.campaign_id FOR KEY SHARE) THEN
            RAISE EXCEPTION 'voucher.code: no such campaign' USING ERRCODE = '23503';
        END IF;
    ELSIF EXISTS (SELECT FROM voucher.code v
                   WHERE v.tenant_id = OLD.tenant_id AND v.campaign_id = OLD.campaign_id) THEN
        RAISE EXCEPTION 'voucher.campaign: codes name this campaign' USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER keep_refs AFTER DELETE ON voucher.campaign
    FOR EACH ROW EXECUTE FUNCTION voucher._codes_keep_refs();
CREATE TRIGGER keep_refs_rekey AFTER UPDATE OF tenant_id, campaign_id ON voucher.campaign
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id)
    EXECUTE FUNCTION voucher._codes_keep_refs();
CREATE TRIGGER keep_refs_truncate AFTER TRUNCATE ON voucher.campaign
    FOR EACH STATEMENT EXECUTE FUNCTION voucher._codes_keep_refs();
CREATE TRIGGER keep_campaign AFTER UPDATE OF tenant_id, campaign_id ON voucher.code
    FOR EACH ROW WHEN (OLD.tenant_id <> NEW.tenant_id OR OLD.campaign_id <> NEW.campaign_id)
    EXECUTE FUNCTION voucher._codes_keep_refs();

CREATE FUNCTION voucher.create_campaign(
    name                text,
    kind                text        DEFAULT 'discount',
    discount_type       text        DEFAULT NULL,
    discount_value      numeric     DEFAULT NULL,
    max_discount        numeric     DEFAULT NULL,
    gift_balance        numeric     DEFAULT NULL,
    currency            text        DEFAULT NULL,
    starts_at           timestamptz DEFAULT NULL,
    expires_at          timestamptz DEFAULT NULL,
    redemption_limit    integer     DEFAULT 1,
    per_customer_limit  integer     DEFAULT NULL,
    min_order_amount    numeric     DEFAULT NULL,
    code_pattern        text        DEFAULT '########',
    code_charset        text        DEFAULT 'unambiguous',
    code_prefix         text        DEFAULT '',
    code_postfix        text        DEFAULT '',
    code_check_char     boolean     DEFAULT false,
    metadata            jsonb       DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- planned at each call, without sequential scans: a plan kept from a table's first rows scanned
-- it (analyzed while small) or probed it by the wrong tenant-led index (never analyzed)
-- (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_variable
DECLARE
    t      uuid := voucher._authorize('manage_campaigns');
    id     uuid := voucher._uuid_v7();
    shape  text;
    settings jsonb;
    vtype  text := lower(discount_type);
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'campaign name must not be NULL' USING ERRCODE = '22004';
    ELSIF btrim(name) = '' THEN
        RAISE EXCEPTION 'campaign name must not be empty' USING ERRCODE = '22023';
    ELSIF length(name) > 200 THEN
        RAISE EXCEPTION 'campaign name is longer than 200 characters' USING ERRCODE = '22023';
    ELSIF kind IS NULL OR kind NOT IN ('discount', 'gift_card') THEN
        RAISE EXCEPTION 'unknown campaign kind "%"', kind USING ERRCODE = '22023',
            HINT = 'kind is discount or gift_card';
    ELSIF vtype IS NOT NULL AND vtype NOT IN ('percent', 'amount', 'fixed') THEN
        RAISE EXCEPTION 'unknown discount type "%"', discount_type USING ERRCODE = '22023',
            HINT = 'discount_type is percent, amount or fixed';
    END IF;
    PERFORM voucher._money(discount_value, 'discount_value'),
            voucher._money(max_discount, 'max_discount'),
            voucher._money(gift_balance, 'gift_balance'),
            voucher._money(min_order_amount, 'min_order_amount');
    IF kind = 'gift_card' THEN
        IF vtype IS NOT NULL OR discount_value IS NOT NULL OR max_discount IS NOT NULL THEN
            RAISE EXCEPTION 'a gift card campaign takes gift_balance, not a discount'
                USING ERRCODE = '22023';
        ELSIF gift_balance IS NULL OR gift_balance = 0 THEN
            RAISE EXCEPTION 'a gift card campaign needs a positive gift_balance' USING ERRCODE = '22023';
        END IF;
    ELSE
        IF gift_balance IS NOT NULL THEN
            RAISE EXCEPTION 'gift_balance applies to gift card campaigns only' USING ERRCODE = '22023',
                HINT = 'pass kind => ''gift_card''';
        ELSIF vtype IS NULL AND (discount_value IS NOT NULL OR max_discount IS NOT NULL) THEN
            RAISE EXCEPTION 'discount_value needs a discount_type' USING ERRCODE = '22023',
                HINT = 'discount_type is percent, amount or fixed';
        ELSIF vtype IS NOT NULL AND discount_value IS NULL THEN
            RAISE EXCEPTION 'discount_type % needs a discount_value', vtype USING ERRCODE = '22023';
        ELSIF vtype = 'percent' AND (discount_value = 0 OR discount_value > 100) THEN
            RAISE EXCEPTION 'a percent discount must be above 0 and at most 100' USING ERRCODE = '22023';
        ELSIF vtype = 'amount' AND discount_value = 0 THEN
            RAISE EXCEPTION 'an amount discount must be above 0' USING ERRCODE = '22023';
        ELSIF max_discount IS NOT NULL AND vtype IS DISTINCT FROM 'percent' THEN
            RAISE EXCEPTION 'max_discount caps percent discounts only' USING ERRCODE = '22023';
        END IF;
    END IF;
    IF currency IS NOT NULL AND upper(currency) !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'currency must be a three-letter ISO 4217 code' USING ERRCODE = '22023';
    ELSIF starts_at >= expires_at THEN
        RAISE EXCEPTION 'starts_at must be before expires_at' USING ERRCODE = '22023';
    ELSIF redemption_limit <= 0 THEN
        RAISE EXCEPTION 'redemption_limit must be positive' USING ERRCODE = '22023',
            HINT = 'NULL means unlimited';
    ELSIF per_customer_limit <= 0 THEN
        RAISE EXCEPTION 'per_customer_limit must be positive' USING ERRCODE = '22023',
            HINT = 'NULL means unlimited';
    ELSIF metadata IS NOT NULL AND jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = '22023';
    ELSIF pg_column_size(metadata) > 65536 THEN
        RAISE EXCEPTION 'metadata is larger than 64 kB' USING ERRCODE = '22023';
    END IF;
    -- the tenant's row FOR KEY SHARE, the lock a foreign key's check took (sql/tenancy.sql)
    PERFORM FROM voucher.tenant WHERE tenant_id = t FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such tenant' USING ERRCODE = '22023';
    END IF;
    shape := voucher._code_shape(coalesce(code_pattern, '########'),
                                 coalesce(code_charset, 'unambiguous'),
                                 coalesce(code_prefix, ''), coalesce(code_postfix, ''),
                                 coalesce(code_check_char, false));
    INSERT INTO voucher.campaign (
        tenant_id, campaign_id, name, kind, discount_type, discount_value, max_discount,
        gift_balance, currency, starts_at, expires_at, redemption_limit, per_customer_limit,
        min_order_amount, code_pattern, code_charset, code_prefix, code_postfix,
        code_check_char, code_shape, metadata, created_by)
    VALUES (
        t, id, btrim(name), kind, vtype, discount_value, max_discount,
        gift_balance, upper(currency), starts_at, expires_at, redemption_limit, per_customer_limit,
        min_order_amount, coalesce(code_pattern, '########'), coalesce(code_charset, 'unambiguous'),
        coalesce(code_prefix, ''), coalesce(code_postfix, ''), coalesce(code_check_char, false),
        shape, coalesce(metadata, '{}'), voucher._actor_label());
    -- read first, then audit: in one statement Citus would run _audit on the shard (src/scale)
    SELECT to_jsonb(c) - 'tenant_id' - 'campaign_id' - 'created_at' - 'created_by' INTO settings
      FROM voucher.campaign c WHERE c.tenant_id = t AND c.campaign_id = id;
    PERFORM voucher._audit('campaign.created', 'campaign', id::text, settings);
    RETURN id;
END
$$;
COMMENT ON FUNCTION voucher.create_campaign IS 'Creates a campaign (manager and admin keys); returns its id.';

CREATE FUNCTION voucher.set_voucher_active(code text, active boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- its kept plans made without sequential scans (issue 17, notes/issue-17-traps)
SET enable_seqscan = off
AS $$
DECLARE
    t      uuid := voucher._authorize('manage_campaigns');
    c      text := voucher.normalize_code(set_voucher_active.code);
    id     uuid;
    before boolean;
BEGIN
    IF c IS NULL OR c = '' THEN
        RAISE EXCEPTION 'code must not be empty' USING ERRCODE = '22023';
    ELSIF set_voucher_active.active IS NULL THEN
        RAISE EXCEPTION 'active must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT v.voucher_id, v.active INTO id, before FROM voucher.code v
     WHERE v.tenant_id = t AND v.code = c FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM voucher._raise('VC001');
    END IF;
    UPDATE voucher.code v SET active = set_voucher_active.active
     WHERE v.tenant_id = t AND v.voucher_id = id;
    PERFORM voucher._audit(CASE WHEN set_voucher_active.active THEN 'voucher.enabled'
                                ELSE 'voucher.disabled' END, 'voucher', id::text,
        jsonb_build_object('before', before, 'after', set_voucher_active.active));
END
$$;
COMMENT ON FUNCTION voucher.set_voucher_active(text, boolean) IS 'Enables or disables one voucher.';

CREATE VIEW voucher.campaigns WITH (security_barrier) AS
SELECT c.campaign_id AS id, c.name, c.kind, c.discount_type, c.discount_value, c.max_discount,
       c.gift_balance, c.currency, c.starts_at, c.expires_at, c.redemption_limit,
       c.per_customer_limit, c.min_order_amount, c.code_pattern, c.code_charset, c.code_prefix,
       c.code_postfix, c.code_check_char, c.active, c.metadata, c.created_at, c.created_by,
       (SELECT count(*) FROM voucher.code v
         WHERE v.tenant_id = c.tenant_id AND v.campaign_id = c.campaign_id) AS vouchers
  FROM voucher.campaign c
 WHERE voucher._can_read('read_catalog');
COMMENT ON VIEW voucher.campaigns IS 'The tenant''s campaigns and how many vouchers each has.';

CREATE VIEW voucher.vouchers WITH (security_barrier) AS
SELECT v.voucher_id AS id, coalesce(v.display, v.code) AS code, v.code AS canonical_code,
       v.campaign_id, c.name AS campaign, c.kind, v.active AND c.active AS active,
       v.redeemed_count + u.used AS redeemed_count, c.redemption_limit,
       c.redemption_limit - v.redeemed_count - u.used AS remaining_uses,
       v.balance, c.currency, c.starts_at, c.expires_at, v.created_at
  FROM voucher.code v
  JOIN voucher.campaign c ON c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
  CROSS JOIN LATERAL (SELECT coalesce(sum(x.used), 0)::integer AS used FROM voucher.code_use x
                       WHERE x.tenant_id = v.tenant_id AND x.voucher_id = v.voucher_id) u
 WHERE voucher._can_read('read_catalog');
COMMENT ON VIEW voucher.vouchers IS 'The tenant''s vouchers with their remaining uses and balances.';
