-- The PL/pgSQL peer (issue 17): the same contract as voucher.validate and voucher.redeem,
-- written the way a competent team writes it without an extension. SECURITY DEFINER PL/pgSQL
-- functions (plan-cached statements), the same tables' shape (LIKE ... INCLUDING ALL: the same
-- columns, indexes and foreign keys), the same rules in the same order (exists, enabled, started,
-- not expired, uses left, minimum order, per-customer limit, gift card balance), the same
-- discount arithmetic, customers found or created by the application's id, idempotency keys
-- (advisory lock + look-up + request hash), and one audit row per change with a SHA-256 over the
-- row. What it leaves out, by the issue's definition: row-level security, a tenant context and
-- key check (the tenant is an argument), HMACs (plain SHA-256), the durable record of refused
-- redemptions, the mistyped-code hint.
--
-- Its functions belong to the benchmark's login role (a plain role, as the floor's). They carry
-- no `SET search_path` (every name is schema-qualified instead): a SET clause would add a GUC
-- save and restore to every call, which would only make the peer slower.
--
-- Run by bench.py in voucher_bench after voucher.* holds the benchmark's campaigns and codes.

CREATE SCHEMA peer;
CREATE TABLE peer.campaign (LIKE voucher.campaign INCLUDING ALL);
CREATE TABLE peer.code (LIKE voucher.code INCLUDING ALL);
ALTER TABLE peer.code ADD FOREIGN KEY (tenant_id, campaign_id) REFERENCES peer.campaign;
-- The customer as voucher.customer had it before any blind index: the application's id in clear.
CREATE TABLE peer.customer (
    tenant_id    uuid        NOT NULL,
    customer_id  uuid        NOT NULL,
    source_id    text        NOT NULL CHECK (source_id <> ''),
    email        text,
    name         text,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id),
    UNIQUE (tenant_id, source_id)
);
CREATE TABLE peer.customer_usage (LIKE voucher.customer_usage INCLUDING ALL);
ALTER TABLE peer.customer_usage ADD FOREIGN KEY (tenant_id, campaign_id) REFERENCES peer.campaign,
                                ADD FOREIGN KEY (tenant_id, customer_id) REFERENCES peer.customer;
CREATE TABLE peer.redemption (LIKE voucher.redemption INCLUDING ALL);
-- the peer keeps metadata as plain jsonb (ours is encrypted since issue 14: no encryption here)
ALTER TABLE peer.redemption ALTER COLUMN metadata TYPE jsonb USING NULL;
ALTER TABLE peer.redemption ADD FOREIGN KEY (tenant_id, voucher_id) REFERENCES peer.code,
                            ADD FOREIGN KEY (tenant_id, customer_id) REFERENCES peer.customer;
CREATE TABLE peer.audit_event (LIKE voucher.audit_event INCLUDING ALL);
CREATE SEQUENCE peer.audit_event_id_seq AS bigint;
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname, c.reloptions FROM pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.reloptions IS NOT NULL
                AND c.relname IN (SELECT relname FROM pg_class WHERE relnamespace = 'peer'::regnamespace) LOOP
        EXECUTE format('ALTER TABLE peer.%I SET (%s)', r.relname, array_to_string(r.reloptions, ', '));
    END LOOP;
END $$;

-- The discount of a campaign for an order: percent rounded to the currency's minor unit and
-- capped, an amount off, or a fixed price (voucher._discount's rule).
CREATE FUNCTION peer.discount(discount_type text, value numeric, max_discount numeric,
                              currency text, order_amount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE discount_type
        WHEN 'percent' THEN least(round(order_amount * value / 100,
                                        CASE WHEN currency IN ('BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY',
                                                               'KMF', 'KRW', 'PYG', 'RWF', 'UGX', 'UYI',
                                                               'VND', 'VUV', 'XAF', 'XOF', 'XPF') THEN 0
                                             WHEN currency IN ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR',
                                                               'TND') THEN 3
                                             ELSE 2 END),
                                  coalesce(max_discount, order_amount), order_amount)
        WHEN 'amount' THEN least(value, coalesce(order_amount, value))
        WHEN 'fixed' THEN greatest(order_amount - value, 0)
        ELSE 0 END
$$;

CREATE FUNCTION peer.check_input(code text, customer text, order_amount numeric, amount numeric)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    c text := upper(translate(code, ' -', ''));
BEGIN
    IF c IS NULL OR c = '' THEN
        RAISE EXCEPTION 'code must not be empty' USING ERRCODE = '22023';
    ELSIF length(c) > 64 THEN
        RAISE EXCEPTION 'code is too long' USING ERRCODE = '22023';
    ELSIF customer IS NOT NULL AND (btrim(customer) = '' OR length(customer) > 200) THEN
        RAISE EXCEPTION 'bad customer id' USING ERRCODE = '22023';
    ELSIF order_amount < 0 OR amount <= 0 OR scale(order_amount) > 4 OR scale(amount) > 4
          OR order_amount >= 1e15 OR amount > order_amount THEN
        RAISE EXCEPTION 'bad amount' USING ERRCODE = '22023';
    END IF;
    RETURN c;
END
$$;

CREATE FUNCTION peer.validate(tenant uuid, code text, customer text DEFAULT NULL,
                              order_amount numeric DEFAULT NULL)
RETURNS TABLE (valid boolean, reason text, sqlstate text, voucher_id uuid, discount numeric,
               balance numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
#variable_conflict use_variable
DECLARE
    c text := peer.check_input(code, customer, order_amount, NULL);
    v record;
    state text;
BEGIN
    -- the counters as their domains' base types (the tables are voucher.code's shape): RETURN
    -- QUERY wants the declared numeric
    SELECT x.voucher_id, x.balance::numeric AS balance, x.active AND k.active AS enabled,
           x.redeemed_count::integer AS redeemed_count, k.kind,
           k.starts_at, k.expires_at, k.redemption_limit, k.per_customer_limit,
           k.min_order_amount, k.discount_type, k.discount_value, k.max_discount, k.currency,
           -- the customer as a scalar sub-select, as voucher's USAGE_SQL: each table probed by
           -- its full key (joined, a plan kept while customer_usage had no statistics walked
           -- the campaign's usage rows with the customer as a join filter; issue 17)
           (SELECT u.used FROM peer.customer_usage u
             WHERE u.tenant_id = x.tenant_id AND u.campaign_id = x.campaign_id
               AND u.customer_id = (SELECT cu.customer_id FROM peer.customer cu
                                     WHERE cu.tenant_id = x.tenant_id
                                       AND cu.source_id = customer)) AS used
      INTO v
      FROM peer.code x
      JOIN peer.campaign k ON k.tenant_id = x.tenant_id AND k.campaign_id = x.campaign_id
     WHERE x.tenant_id = tenant AND x.code = c;
    state := CASE
        WHEN NOT FOUND THEN 'VC001'
        WHEN NOT v.enabled THEN 'VC008'
        WHEN v.starts_at > now() THEN 'VC003'
        WHEN v.expires_at <= now() THEN 'VC002'
        WHEN v.redeemed_count >= v.redemption_limit THEN 'VC004'
        WHEN order_amount < v.min_order_amount THEN 'VC007'
        WHEN customer IS NOT NULL AND coalesce(v.used, 0) >= v.per_customer_limit THEN 'VC005'
        WHEN v.kind = 'gift_card' AND order_amount > coalesce(v.balance, 0) THEN 'VC006'
    END;
    IF state IS NOT NULL THEN
        RETURN QUERY SELECT false, 'refused', state, v.voucher_id, NULL::numeric, v.balance;
    ELSIF v.kind = 'gift_card' THEN
        RETURN QUERY SELECT true, 'ok', NULL::text, v.voucher_id, order_amount, v.balance;
    ELSE
        RETURN QUERY SELECT true, 'ok', NULL::text, v.voucher_id,
            peer.discount(v.discount_type, v.discount_value, v.max_discount, v.currency, order_amount),
            v.balance;
    END IF;
END
$$;

CREATE FUNCTION peer.redeem(tenant uuid, code text, customer text DEFAULT NULL,
                            order_amount numeric DEFAULT NULL, amount numeric DEFAULT NULL,
                            order_id text DEFAULT NULL, idempotency_key text DEFAULT NULL,
                            metadata jsonb DEFAULT NULL)
RETURNS TABLE (redemption_id uuid, voucher_id uuid, discount numeric, balance_after numeric,
               replayed boolean)
LANGUAGE plpgsql SECURITY DEFINER
AS $$
#variable_conflict use_variable
DECLARE
    c      text := peer.check_input(code, customer, order_amount, amount);
    hash   bytea;
    prior  record;
    seen   boolean;
    cust   uuid;
    v      record;
    spend  numeric;
    d      numeric;
    rid    uuid := gen_random_uuid();
    bal    numeric;
    eid    bigint;
    at     timestamptz := now();
    det    jsonb;
BEGIN
    IF order_id IS NOT NULL AND length(order_id) > 200 OR length(idempotency_key) > 200
       OR idempotency_key = '' THEN
        RAISE EXCEPTION 'bad order_id or idempotency_key' USING ERRCODE = '22023';
    END IF;
    IF idempotency_key IS NOT NULL THEN
        hash := sha256(convert_to(concat_ws(chr(31), c, coalesce(customer, chr(30)),
                                            coalesce(order_amount::text, chr(30)),
                                            coalesce(amount::text, chr(30)),
                                            coalesce(order_id, chr(30)),
                                            coalesce(metadata::text, chr(30))), 'UTF8'));
        PERFORM pg_advisory_xact_lock(hashtext(tenant::text), hashtext(idempotency_key));
        -- by the unique index whatever the statistics say, as voucher.redeem does: a plan
        -- cached while peer.redemption was nearly empty scans it at every later call
        PERFORM set_config('enable_seqscan', 'off', true);
        SELECT r.redemption_id, r.voucher_id, r.discount, r.balance_after, r.request_hash
          INTO prior FROM peer.redemption r
         WHERE r.tenant_id = tenant AND r.idempotency_key = redeem.idempotency_key;
        seen := FOUND;
        PERFORM set_config('enable_seqscan', 'on', true);
        IF seen THEN
            IF prior.request_hash IS DISTINCT FROM hash THEN
                RAISE EXCEPTION 'idempotency key reused with other arguments' USING ERRCODE = 'VC009';
            END IF;
            RETURN QUERY SELECT prior.redemption_id, prior.voucher_id, prior.discount,
                                prior.balance_after, true;
            RETURN;
        END IF;
    END IF;

    IF customer IS NOT NULL THEN
        SELECT cu.customer_id INTO cust FROM peer.customer cu
         WHERE cu.tenant_id = tenant AND cu.source_id = customer;
        IF NOT FOUND THEN
            INSERT INTO peer.customer (tenant_id, customer_id, source_id)
            VALUES (tenant, gen_random_uuid(), customer)
            ON CONFLICT (tenant_id, source_id) DO NOTHING
            RETURNING customer_id INTO cust;
            IF cust IS NULL THEN
                SELECT cu.customer_id INTO cust FROM peer.customer cu
                 WHERE cu.tenant_id = tenant AND cu.source_id = customer;
            END IF;
        END IF;
    END IF;

    -- the voucher and its campaign, the voucher row locked until commit
    SELECT x.voucher_id, x.campaign_id, x.balance, x.active AND k.active AS enabled,
           x.redeemed_count, k.kind, k.starts_at, k.expires_at, k.redemption_limit,
           k.per_customer_limit, k.min_order_amount, k.discount_type, k.discount_value,
           k.max_discount, k.currency
      INTO v
      FROM peer.code x
      JOIN peer.campaign k ON k.tenant_id = x.tenant_id AND k.campaign_id = x.campaign_id
     WHERE x.tenant_id = tenant AND x.code = c
       FOR NO KEY UPDATE OF x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such code' USING ERRCODE = 'VC001';
    ELSIF NOT v.enabled THEN
        RAISE EXCEPTION 'voucher disabled' USING ERRCODE = 'VC008';
    ELSIF v.starts_at > now() THEN
        RAISE EXCEPTION 'not started' USING ERRCODE = 'VC003';
    ELSIF v.expires_at <= now() THEN
        RAISE EXCEPTION 'expired' USING ERRCODE = 'VC002';
    ELSIF v.redeemed_count >= v.redemption_limit THEN
        RAISE EXCEPTION 'no uses left' USING ERRCODE = 'VC004';
    ELSIF v.min_order_amount IS NOT NULL AND order_amount IS NULL THEN
        RAISE EXCEPTION 'this voucher needs order_amount' USING ERRCODE = '22023';
    ELSIF order_amount < v.min_order_amount THEN
        RAISE EXCEPTION 'below the minimum order' USING ERRCODE = 'VC007';
    ELSIF v.per_customer_limit IS NOT NULL AND customer IS NULL THEN
        RAISE EXCEPTION 'this voucher needs customer' USING ERRCODE = '22023';
    END IF;

    IF v.kind = 'gift_card' THEN
        spend := coalesce(amount, order_amount);
        IF spend IS NULL OR spend = 0 THEN
            RAISE EXCEPTION 'a gift card redemption needs amount or order_amount' USING ERRCODE = '22023';
        ELSIF spend > coalesce(v.balance, 0) THEN
            RAISE EXCEPTION 'balance too low' USING ERRCODE = 'VC006';
        END IF;
        d := spend;
    ELSIF amount IS NOT NULL THEN
        RAISE EXCEPTION 'amount applies to gift cards only' USING ERRCODE = '22023';
    ELSIF v.discount_type IN ('percent', 'fixed') AND order_amount IS NULL THEN
        RAISE EXCEPTION 'this discount needs order_amount' USING ERRCODE = '22023';
    ELSE
        d := peer.discount(v.discount_type, v.discount_value, v.max_discount, v.currency, order_amount);
    END IF;

    IF v.per_customer_limit IS NOT NULL THEN
        INSERT INTO peer.customer_usage AS u (tenant_id, campaign_id, customer_id, used)
        VALUES (tenant, v.campaign_id, cust, 1)
        ON CONFLICT (tenant_id, campaign_id, customer_id)
        DO UPDATE SET used = u.used + 1 WHERE u.used < v.per_customer_limit;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'per-customer limit reached' USING ERRCODE = 'VC005';
        END IF;
    END IF;

    UPDATE peer.code x SET redeemed_count = x.redeemed_count + 1, balance = x.balance - spend
     WHERE x.tenant_id = tenant AND x.voucher_id = v.voucher_id
    RETURNING x.balance INTO bal;
    INSERT INTO peer.redemption (tenant_id, redemption_id, voucher_id, campaign_id, customer_id,
                                 order_id, order_amount, amount, discount, balance_after,
                                 idempotency_key, request_hash, metadata, redeemed_by)
    VALUES (tenant, rid, v.voucher_id, v.campaign_id, cust, order_id, order_amount, spend, d, bal,
            idempotency_key, hash, metadata, 'key:bench');

    eid := nextval('peer.audit_event_id_seq');
    det := jsonb_build_object('redemption_id', rid, 'campaign_id', v.campaign_id,
                              'customer_id', cust, 'order_id', order_id,
                              'order_amount', order_amount, 'amount', spend, 'discount', d,
                              'balance_after', bal, 'idempotency_key', idempotency_key);
    INSERT INTO peer.audit_event (tenant_id, event_id, at, actor, action, object_type, object_id,
                                  details, row_hash)
    VALUES (tenant, eid, at, '{"type": "key", "role": "admin"}', 'redemption.created', 'voucher',
            v.voucher_id::text, det,
            sha256(convert_to(concat_ws(chr(31), tenant::text, eid::text, at::text,
                                        'redemption.created', 'voucher', v.voucher_id::text,
                                        det::text), 'UTF8')));
    RETURN QUERY SELECT rid, v.voucher_id, d, bal, false;
END
$$;
