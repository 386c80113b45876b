-- After the race: each hot voucher used exactly 100 times, as its ledger and audit rows say.
\set ON_ERROR_STOP on
SELECT tenant AS a FROM citus_tenant WHERE name = 'a' \gset
SELECT tenant AS b FROM citus_tenant WHERE name = 'b' \gset
CREATE TEMP TABLE race AS
SELECT c.tenant_id = :'a' AS tenant_a, c.redeemed_count,
       (SELECT count(*) FROM voucher.redemption r WHERE r.tenant_id = c.tenant_id AND r.voucher_id = c.voucher_id) AS redemptions,
       (SELECT count(*) FROM voucher.audit_event e WHERE e.tenant_id = c.tenant_id AND e.action = 'redemption.created'
           AND e.object_id = c.voucher_id::text) AS audit_rows
  FROM voucher.code c WHERE (c.tenant_id, c.code) IN ((:'a'::uuid, 'HOTA'), (:'b'::uuid, 'HOTB'));
SELECT * FROM race ORDER BY tenant_a DESC;
DO $$
DECLARE
    r record;
BEGIN
    IF (SELECT count(*) FROM race) <> 2 THEN
        RAISE EXCEPTION 'expected the two hot vouchers, found %', (SELECT count(*) FROM race);
    END IF;
    FOR r IN SELECT * FROM race LOOP
        IF r.redeemed_count <> 100 OR r.redemptions <> 100 OR r.audit_rows <> 100 THEN
            RAISE EXCEPTION 'tenant a: %: % uses counted, % redemptions, % audit rows; expected exactly 100',
                r.tenant_a, r.redeemed_count, r.redemptions, r.audit_rows;
        END IF;
    END LOOP;
    RAISE NOTICE 'Citus race check passed: 100/100 on both workers';
END
$$;
