-- After the customer race: each of the 4 race customers of each tenant redeemed exactly 3 times
-- in the campaign (its per-customer limit), as the redemptions, the usage counter and the
-- audit rows say. Customers are found by their source_id through the decrypting view.
\set ON_ERROR_STOP on
DO $$
DECLARE
    r record;
    c record;
    camp uuid;
    reds bigint;
    used integer;
    audit_rows bigint;
    n integer;
BEGIN
    FOR r IN SELECT * FROM citus_tenant ORDER BY name LOOP
        PERFORM voucher.authenticate(r.admin);
        SELECT x.campaign_id INTO camp FROM voucher.campaign x
         WHERE x.tenant_id = r.tenant AND x.name = 'three per customer ' || r.name;
        n := 0;
        FOR c IN SELECT v.customer_id, v.source_id FROM voucher.customers v
                  WHERE v.source_id LIKE 'race-%' ORDER BY v.source_id LOOP
            SELECT count(*) INTO reds FROM voucher.redemption x
             WHERE x.tenant_id = r.tenant AND x.customer_id = c.customer_id AND x.campaign_id = camp;
            SELECT u.used INTO used FROM voucher.customer_usage u
             WHERE u.tenant_id = r.tenant AND u.campaign_id = camp AND u.customer_id = c.customer_id;
            SELECT count(*) INTO audit_rows FROM voucher.audit_event e
             WHERE e.tenant_id = r.tenant AND e.action = 'redemption.created'
               AND e.details ->> 'customer_id' = c.customer_id::text;
            RAISE NOTICE 'tenant %, %: % redemptions, % used, % audit rows',
                r.name, c.source_id, reds, used, audit_rows;
            IF reds <> 3 OR used IS DISTINCT FROM 3 OR audit_rows <> 3 THEN
                RAISE EXCEPTION 'tenant %, %: expected exactly 3 of each', r.name, c.source_id;
            END IF;
            n := n + 1;
        END LOOP;
        IF n <> 4 THEN
            RAISE EXCEPTION 'tenant %: % race customers, expected 4', r.name, n;
        END IF;
    END LOOP;
    RAISE NOTICE 'Citus customer race check passed: 3/3 for 4 customers on both workers';
END
$$;
