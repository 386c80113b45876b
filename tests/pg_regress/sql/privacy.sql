-- GDPR rights: consent with history, export, forget, retention; roles and bad input.

-- mask(j): the export with its volatile values (uuids, times, event ids) replaced, so the
-- expected output shows the document's exact shape and every stable value.
CREATE FUNCTION public.mask(j jsonb) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE jsonb_typeof(j)
        WHEN 'object' THEN (
            SELECT coalesce(jsonb_object_agg(k,
                       CASE WHEN (k = 'at' OR k LIKE '%\_at') AND jsonb_typeof(v) = 'string' THEN '"<time>"'
                            WHEN k = 'event_id' THEN '"<n>"'
                            ELSE public.mask(v) END), '{}')
              FROM jsonb_each(j) AS e(k, v))
        WHEN 'array' THEN (
            SELECT coalesce(jsonb_agg(public.mask(v) ORDER BY i), '[]')
              FROM jsonb_array_elements(j) WITH ORDINALITY AS a(v, i))
        WHEN 'string' THEN to_jsonb(regexp_replace(j #>> '{}',
                       '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'))
        ELSE j END;
END
$$;
GRANT EXECUTE ON FUNCTION public.mask(jsonb) TO PUBLIC;

-- scan_tables(needles): every table of the extension with a row whose text contains a needle
-- (run as a superuser: row-level security does not hide anything from it).
CREATE FUNCTION public.scan_tables(needles text[]) RETURNS SETOF regclass LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
    hit boolean;
BEGIN
    FOR t IN SELECT c.oid::regclass FROM pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.relkind = 'r' ORDER BY 1 LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s x WHERE x::text LIKE ANY ($1))', t)
           INTO hit USING (SELECT array_agg('%' || n || '%') FROM unnest(needles) n);
        IF hit THEN
            RETURN NEXT t;
        END IF;
    END LOOP;
END
$$;

\c - regress_op
SELECT voucher.create_tenant('privacy shop') AS shop \gset
SELECT voucher.create_api_key('admin', tenant => :'shop') AS admin \gset

\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.create_api_key('manager') AS manager \gset
SELECT voucher.create_api_key('redeemer') AS redeemer \gset
SELECT voucher.create_api_key('auditor') AS auditor \gset
SELECT voucher.create_campaign('two each', discount_type => 'amount', discount_value => 5,
                               per_customer_limit => 2) AS two_each \gset
SELECT voucher.create_campaign('spring', discount_type => 'percent', discount_value => 10,
                               currency => 'EUR') AS spring \gset
SELECT voucher.create_campaign('past', expires_at => now() - interval '1 day') AS past \gset
SELECT count(voucher.add_code(c.id, c.code)) AS added
  FROM (VALUES (:'two_each'::uuid, 'TWO-1'), (:'two_each', 'TWO-2'), (:'two_each', 'TWO-3'),
               (:'spring', 'SPRING-1'), (:'spring', 'SPRING-2'), (:'past', 'PAST-1')) c(id, code);
COMMIT;

------------------------------------------------------------------------------------------------
-- Roles: consent for admin, manager, redeemer; export, forget, retention for admin only
------------------------------------------------------------------------------------------------
SELECT r.role,
       try(format($$SELECT voucher.authenticate(%L); SELECT voucher.set_consent('role-probe', 'newsletter', true)$$, r.key)) AS set_consent,
       try(format($$SELECT voucher.authenticate(%L); SELECT voucher.export_customer('role-probe')$$, r.key)) AS export,
       try(format($$SELECT voucher.authenticate(%L); SELECT voucher.forget_customer('role-probe')$$, r.key)) AS forget,
       try(format($$SELECT voucher.authenticate(%L); SELECT voucher.forget_inactive_customers()$$, r.key)) AS retention,
       try(format($$SELECT voucher.authenticate(%L); SELECT * FROM voucher.consents$$, r.key)) AS consents_view
  FROM (VALUES ('admin', :'admin'), ('manager', :'manager'), ('redeemer', :'redeemer'),
               ('auditor', :'auditor')) r(role, key)
 ORDER BY 1;
-- without a context: refused, and the view is empty
SELECT try($$SELECT voucher.set_consent('x', 'profile', true)$$) AS no_context,
       try($$SELECT voucher.export_customer('x')$$) AS no_context_export,
       (SELECT count(*) FROM voucher.consents) AS view_rows;

------------------------------------------------------------------------------------------------
-- Bad input changes nothing
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT try($$SELECT voucher.set_consent(NULL, 'profile', true)$$) AS null_customer,
       try($$SELECT voucher.set_consent('bob', NULL, true)$$) AS null_purpose,
       try($$SELECT voucher.set_consent('bob', 'profile', NULL)$$) AS null_granted,
       try($$SELECT voucher.set_consent('bob', 'Profile!', true)$$) AS bad_purpose,
       try($$SELECT voucher.set_consent('bob', 'profile', true, repeat('x', 201))$$) AS long_source,
       try($$SELECT voucher.set_consent('', 'profile', true)$$) AS empty_customer;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT try($$SELECT voucher.export_customer(NULL)$$) AS null_export,
       try($$SELECT voucher.forget_customer(NULL)$$) AS null_forget,
       try($$SELECT voucher.forget_inactive_customers(0)$$) AS zero_batch,
       voucher.export_customer('nobody') IS NULL AS unknown_export,
       voucher.forget_customer('nobody') IS NULL AS unknown_forget;
SELECT count(*) AS consents_after_bad_input FROM voucher.consents;
COMMIT;

------------------------------------------------------------------------------------------------
-- A customer with a profile, consents, redemptions, a rollback and a failed attempt
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('alice-1', 'alice@example.com', 'Alice Example',
                               '{"tier": "gold"}') AS alice \gset
SELECT voucher.set_consent('alice-1', 'profile', true, 'checkout form v3');
SELECT voucher.set_consent('alice-1', 'newsletter', true, 'footer');
SELECT voucher.set_consent('alice-1', 'newsletter', false, 'unsubscribe link');
SELECT redemption_id AS r1 FROM voucher.redeem('TWO-1', customer => 'alice-1', order_amount => 20,
    order_id => 'o-1', metadata => '{"ship_to": "1 Main Street"}') \gset
SELECT redemption_id AS r2 FROM voucher.redeem('SPRING-1', customer => 'alice-1',
    order_amount => 50, order_id => 'o-2') \gset
SELECT restored FROM voucher.rollback_redemption(:'r2', 'customer returned the goods');
-- another customer, who must not appear in alice's export
SELECT voucher.upsert_customer('bob-2', 'bob@example.com', 'Bob') IS NOT NULL AS bob;
SELECT discount FROM voucher.redeem('SPRING-2', customer => 'bob-2', order_amount => 10);
SELECT voucher.set_consent('bob-2', 'profile', true);
COMMIT;
-- a refused attempt (expired code) is audited after its rollback, naming the customer
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT try($$SELECT * FROM voucher.redeem('PAST-1', customer => 'alice-1')$$) AS expired;
COMMIT;

-- the current consents; the history is in the export
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT c.purpose, c.granted, c.source, c.customer_id = :'alice' AS is_alice
  FROM voucher.consents c ORDER BY c.customer_id = :'alice' DESC, c.purpose;
COMMIT;

-- the export: exactly alice's data, volatile values masked
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT jsonb_pretty(mask(voucher.export_customer('alice-1'))) AS export;
-- the export is audited, with counts and the pseudonymous id, never the contents
SELECT action, object_id = :'alice' AS is_alice, details FROM voucher.audit_log
 WHERE action = 'customer.exported';
COMMIT;

------------------------------------------------------------------------------------------------
-- Forget, with alice's audit rows sealed first
------------------------------------------------------------------------------------------------
\c - regress_op
SELECT voucher.seal_audit() >= 0 AS sealed;
SELECT voucher.seal_audit() > 0 AS sealed_again;
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
-- alice's rows are sealed, among them the refused redemption whose personal part (the
-- source_id it was given) is encrypted under alice's own key
SELECT count(*) AS alice_rows_sealed,
       count(*) FILTER (WHERE details -> 'customer' ? 'personal') AS with_personal_part
  FROM voucher.audit_log
 WHERE sealed AND (object_id = :'alice' OR details ->> 'customer_id' = :'alice'
                   OR details -> 'customer' ->> 'customer_id' = :'alice');
SELECT voucher.forget_customer('alice-1') AS forgotten;
SELECT voucher.forget_customer('alice-1') AS forgotten_twice;
SELECT voucher.export_customer('alice-1') AS export_after_forget;
-- the event says that a customer was forgotten, not who
SELECT action, object_type, object_id, details FROM voucher.audit_log
 WHERE action = 'customer.forgotten';
SELECT ok, problem FROM voucher.verify_audit();
COMMIT;

-- The forget scan. As a superuser: no table of the extension holds alice's id, email, name or
-- address in any row; then, with the tenant's admin context, every ciphertext the tenant can
-- still decrypt (every customer field, redemption metadata and customer, the personal part of
-- every audit row) decrypted and searched: none is alice's. bob's email is the control: the
-- search finds it, so it works.
\c - postgres
SELECT * FROM public.scan_tables(ARRAY['alice-1', 'alice@example.com', 'Alice Example', '1 Main Street'])
    AS holds_personal_data;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
WITH plain(p) AS (
    SELECT unnest(ARRAY[c.source_id, c.email, c.name, c.metadata::text]) FROM voucher.customers c
    UNION ALL
    SELECT unnest(ARRAY[r.customer, r.metadata::text]) FROM voucher.redemptions r
    UNION ALL
    SELECT voucher._open_personal(voucher.current_tenant(),
                                  (e.details -> 'customer' ->> 'customer_id')::uuid,
                                  e.details -> 'customer' ->> 'personal')::text
      FROM voucher.audit_event e WHERE e.details -> 'customer' ? 'personal')
SELECT n.needle, count(p.p) AS decrypted_matches
  FROM unnest(ARRAY['alice-1', 'alice@example.com', 'Alice Example', '1 Main Street',
                    'bob@example.com']) n(needle)
  LEFT JOIN plain p ON p.p LIKE '%' || n.needle || '%'
 GROUP BY n.needle ORDER BY n.needle;
SELECT count(*) AS audit_parts_left_undecryptable FROM voucher.audit_event e
 WHERE e.details -> 'customer' ->> 'customer_id' = :'alice'
   AND voucher._open_personal(voucher.current_tenant(), :'alice', e.details -> 'customer' ->> 'personal') IS NULL;
COMMIT;
\c - regress_client

-- what is left of alice: a pseudonymous row whose redemptions still count
BEGIN;
SELECT voucher.authenticate(:'manager') IS NOT NULL AS ok;
SELECT c.source_id = 'forgotten:' || c.customer_id AS pseudonym, c.email, c.name, c.metadata,
       c.forgotten_at IS NOT NULL AS forgotten
  FROM voucher.customers c WHERE c.customer_id = :'alice';
SELECT code, status, customer = 'forgotten:' || :'alice' AS pseudonym, metadata
  FROM voucher.redemptions WHERE id IN (:'r1', :'r2') ORDER BY code;
SELECT count(*) AS alice_consents FROM voucher.consents WHERE customer_id = :'alice';
SELECT code, redeemed_count, remaining_uses FROM voucher.vouchers
 WHERE code IN ('TWO-1', 'SPRING-1') ORDER BY code;
COMMIT;
-- the redemption limit still counts the forgotten customer's use; a new customer with the same
-- source_id is someone else, with its own per-customer allowance
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT try($$SELECT * FROM voucher.redeem('TWO-1', customer => 'alice-1', order_amount => 20)$$)
       AS used_voucher;
SELECT voucher.upsert_customer('alice-1', 'new@example.com') <> :'alice' AS new_customer;
SELECT discount FROM voucher.redeem('TWO-2', customer => 'alice-1', order_amount => 20);
SELECT discount FROM voucher.redeem('TWO-3', customer => 'alice-1', order_amount => 20);
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT voucher.export_customer('alice-1') -> 'customer' ->> 'email' AS new_alice_email,
       jsonb_array_length(voucher.export_customer('alice-1') -> 'redemptions') AS new_alice_redemptions;
-- bob is untouched
SELECT c.email, c.name FROM voucher.customers c WHERE c.source_id = 'bob-2';
COMMIT;

------------------------------------------------------------------------------------------------
-- Consent: withdrawing 'profile' erases the profile; the customer and its redemptions stay
------------------------------------------------------------------------------------------------
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT voucher.set_consent('bob-2', 'profile', false, 'account settings');
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin') IS NOT NULL AS ok;
SELECT c.source_id, c.email, c.name, c.metadata FROM voucher.customers c WHERE c.source_id = 'bob-2';
SELECT count(*) AS bob_redemptions FROM voucher.redemptions WHERE customer = 'bob-2';
SELECT action, details FROM voucher.audit_log WHERE action LIKE 'consent.%' AND details ->> 'source' = 'account settings';
COMMIT;

------------------------------------------------------------------------------------------------
-- voucher.consent has no foreign key to voucher.customer (a parallel pg_restore ignores the order
-- of the keys among an extension's tables): deleting a customer deletes its consents, as the
-- key's ON DELETE CASCADE did; re-keying a customer with consents, or truncating the customers
-- while consents exist, is refused; a consent cannot be re-pointed at a customer that does not
-- exist (direct DML as a superuser, rolled back)
------------------------------------------------------------------------------------------------
\c - postgres
BEGIN;
SELECT voucher.authenticate(:'redeemer') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('carol-3') AS carol \gset
SELECT voucher.set_consent('carol-3', 'profile', true), voucher.set_consent('carol-3', 'newsletter', true);
SELECT voucher.logout();
CREATE TEMP VIEW carol_consents AS
SELECT count(*) AS carol_consents FROM voucher.consent WHERE tenant_id = :'shop' AND customer_id = :'carol';
SELECT * FROM carol_consents;
SELECT try(format('UPDATE voucher.customer SET customer_id = gen_random_uuid() WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'carol')) AS rekey_customer,
       try(format('UPDATE voucher.consent SET customer_id = gen_random_uuid() WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'carol')) AS repoint_consent,
       try(format('UPDATE voucher.consent SET source = source WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'carol')) AS other_update;
SELECT try('TRUNCATE voucher.customer CASCADE') AS truncate_customers;
SELECT try(format('DELETE FROM voucher.customer WHERE tenant_id = %L AND customer_id = %L',
                  :'shop', :'carol')) AS delete_customer;
SELECT * FROM carol_consents;
ROLLBACK;
