-- tests/scale/standby.sh, on the primary: login roles, a tenant with one key of each role,
-- a campaign with codes, a redemption, a customer and sealed audit rows. The keys are kept in
-- public.standby_key so the standby (a read-only copy) can authenticate with them.
\set ON_ERROR_STOP 1
CREATE EXTENSION voucher_ext;
CREATE ROLE regress_op LOGIN IN ROLE voucher_operator;
CREATE ROLE regress_client LOGIN IN ROLE voucher_client;
-- t(sql): 'ok (N rows)' or 'SQLSTATE: message (hint) [detail]' of the error it raised
CREATE FUNCTION public.t(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    hint text;
    detail text;
BEGIN
    EXECUTE sql;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN 'ok (' || n || ' rows)';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT, detail = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' (hint: ' || hint || ')', ' (hint: )'), '')
        || coalesce(nullif(' [detail: ' || detail || ']', ' [detail: ]'), '');
END
$$;
GRANT EXECUTE ON FUNCTION public.t(text) TO PUBLIC;
CREATE TABLE public.standby_key (name text PRIMARY KEY, key text NOT NULL);
GRANT SELECT ON public.standby_key TO PUBLIC;
GRANT INSERT ON public.standby_key TO regress_op;

SET ROLE regress_op;
SELECT voucher.create_tenant('standby shop') AS shop \gset
INSERT INTO public.standby_key
SELECT r, voucher.create_api_key(r, tenant => :'shop')
  FROM unnest(ARRAY['admin', 'manager', 'redeemer', 'auditor']) r;
INSERT INTO public.standby_key
SELECT 'revoked', voucher.create_api_key('redeemer', tenant => :'shop');
RESET ROLE;

SET ROLE regress_client;
BEGIN;
SELECT voucher.authenticate(key) IS NOT NULL AS ok FROM public.standby_key WHERE name = 'admin';
SELECT voucher.create_campaign('ten off', discount_type => 'amount', discount_value => 10,
                               redemption_limit => 5, currency => 'EUR') AS campaign \gset
SELECT voucher.add_code(:'campaign', c) IS NOT NULL FROM unnest(ARRAY['SB-1', 'SB-2', 'SB-3']) c;
SELECT voucher.create_campaign('gift', kind => 'gift_card', gift_balance => 50,
                               redemption_limit => NULL, currency => 'EUR') AS gift \gset
SELECT voucher.add_code(:'gift', 'SB-GIFT') IS NOT NULL;
SELECT voucher.upsert_customer('cust-1', email => 'c1@example.com') IS NOT NULL;
SELECT redemption_id IS NOT NULL FROM voucher.redeem('SB-1', customer => 'cust-1', order_amount => 40);
SELECT voucher.revoke_api_key(k.id) FROM voucher.api_keys k
  JOIN public.standby_key s ON left(s.key, length(k.prefix)) = k.prefix WHERE s.name = 'revoked';
COMMIT;
RESET ROLE;
SET ROLE regress_op;
SELECT voucher.seal_audit() >= 0 AS sealed;
SELECT voucher.seal_audit() >= 0 AS sealed;
RESET ROLE;
