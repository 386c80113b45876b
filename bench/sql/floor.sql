-- The "floor" sides of rows 3f, 4f and 5f: the baseline's own statements in the shape the product
-- has to have, and nothing else. An API that applications call is a function (API.md), owned by
-- a role other than the caller (tables are not the caller's to touch), and every redemption
-- writes its audit row in the same transaction (issue 6). These functions do exactly that with
-- the bare tables: no row-level security, no tenant context, no key check, no rules beyond the
-- baseline's, no idempotency, a SHA-256 where the product computes an HMAC. Whatever ratio they
-- reach against the bare statements is a ceiling for any implementation of that shape that runs
-- the same statements through the executor.
--
-- Run by bench.py in voucher_bench after the bare schema exists; the functions belong to the
-- benchmark's login role (SECURITY DEFINER as a plain role, not as a superuser, whose permission
-- checks would be cheaper than anyone's in production). They leave out the `SET search_path`
-- that a SECURITY DEFINER function in production must carry (its save and restore on every call
-- would only lower the floor): a bound should be as cheap as the shape allows.

CREATE TABLE bare.audit_event (LIKE voucher.audit_event INCLUDING ALL);
CREATE SEQUENCE bare.audit_event_id_seq AS bigint;

-- validate's floor: the baseline SELECT (code JOIN campaign), called through a function.
CREATE FUNCTION bare.validate(tenant uuid, code text)
RETURNS TABLE (voucher_id uuid, active boolean, redeemed_count integer, balance numeric,
               kind text, discount_type text, discount_value numeric, starts_at timestamptz,
               expires_at timestamptz, redemption_limit integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    -- the counters as their domains' base types (bare.code is voucher.code's shape)
    SELECT v.voucher_id, v.active, v.redeemed_count::integer, v.balance::numeric, c.kind,
           c.discount_type,
           c.discount_value, c.starts_at, c.expires_at, c.redemption_limit
      FROM bare.code v
      JOIN bare.campaign c ON c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
     WHERE v.tenant_id = $1 AND v.code = $2;
END
$$;

-- redeem's floor: the baseline's conditional UPDATE + INSERT, plus the audit row (same table
-- shape and indexes as voucher.audit_event, a sequence number, jsonb details, a SHA-256 over
-- the row), in one statement, called through a function. lim NULL: no redemption limit.
CREATE FUNCTION bare.redeem(tenant uuid, code text, lim integer)
RETURNS TABLE (redemption_id uuid, voucher_id uuid, discount numeric)
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    WITH claim AS (
        UPDATE bare.code c SET redeemed_count = c.redeemed_count + 1
         WHERE c.tenant_id = $1 AND c.code = $2 AND c.active
           AND ($3 IS NULL OR c.redeemed_count < $3)
        RETURNING c.tenant_id, c.voucher_id, c.campaign_id),
    rec AS (
        INSERT INTO bare.redemption AS r (tenant_id, redemption_id, voucher_id, campaign_id,
                                          discount, request_hash, redeemed_by)
        SELECT claim.tenant_id, gen_random_uuid(), claim.voucher_id, claim.campaign_id, 0,
               '\x00', 'bench'
          FROM claim
        RETURNING r.*),
    ev AS (
        SELECT nextval('bare.audit_event_id_seq') AS id, now() AS at, rec.tenant_id,
               rec.redemption_id, rec.voucher_id, rec.discount,
               jsonb_build_object('redemption_id', rec.redemption_id,
                                  'campaign_id', rec.campaign_id, 'discount', rec.discount)
                   AS details
          FROM rec),
    audit AS (
        INSERT INTO bare.audit_event (tenant_id, event_id, at, actor, action, object_type,
                                      object_id, details, row_hash)
        SELECT ev.tenant_id, ev.id, ev.at, '{"type": "key", "role": "admin"}',
               'redemption.created', 'voucher', ev.voucher_id::text, ev.details,
               sha256(convert_to(ev.tenant_id::text || ev.id || ev.at || ev.voucher_id::text
                                 || ev.details::text, 'UTF8'))
          FROM ev
        RETURNING event_id)
    SELECT ev.redemption_id, ev.voucher_id, ev.discount FROM ev CROSS JOIN audit;
END
$$;

-- The shop-shaped redemption's floor (row Pf): the bare shop statement of shop_bare.pgbench
-- (claim one use of a single-use voucher, the redemption with its order: amount, id, 10 %
-- discount) plus the audit row, in one statement, called through a function. No customer: the
-- floor leaves out everything the contract adds to the baseline's statements (customer look-up
-- or creation, RLS, tenant context, key check, rules, HMAC), so it bounds what any
-- implementation of the shop call with its audit row can reach against bare.
CREATE FUNCTION bare.shop_redeem(tenant uuid, code text, order_amount numeric, order_id text)
RETURNS TABLE (redemption_id uuid, voucher_id uuid, discount numeric)
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    RETURN QUERY
    WITH claim AS (
        UPDATE bare.code c SET redeemed_count = c.redeemed_count + 1
         WHERE c.tenant_id = $1 AND c.code = $2 AND c.active AND c.redeemed_count < 1
        RETURNING c.tenant_id, c.voucher_id, c.campaign_id),
    rec AS (
        INSERT INTO bare.redemption AS r (tenant_id, redemption_id, voucher_id, campaign_id,
                                          order_id, order_amount, discount, redeemed_by)
        SELECT claim.tenant_id, gen_random_uuid(), claim.voucher_id, claim.campaign_id, $4, $3,
               round($3 * 0.1, 2), 'bench'
          FROM claim
        RETURNING r.*),
    ev AS (
        SELECT nextval('bare.audit_event_id_seq') AS id, now() AS at, rec.tenant_id,
               rec.redemption_id, rec.voucher_id, rec.discount,
               jsonb_build_object('redemption_id', rec.redemption_id,
                                  'campaign_id', rec.campaign_id, 'discount', rec.discount,
                                  'order_id', rec.order_id) AS details
          FROM rec),
    audit AS (
        INSERT INTO bare.audit_event (tenant_id, event_id, at, actor, action, object_type,
                                      object_id, details, row_hash)
        SELECT ev.tenant_id, ev.id, ev.at, '{"type": "key", "role": "admin"}',
               'redemption.created', 'voucher', ev.voucher_id::text, ev.details,
               sha256(convert_to(ev.tenant_id::text || ev.id || ev.at || ev.voucher_id::text
                                 || ev.details::text, 'UTF8'))
          FROM ev
        RETURNING event_id)
    SELECT ev.redemption_id, ev.voucher_id, ev.discount FROM ev CROSS JOIN audit;
END
$$;
