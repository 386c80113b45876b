-- Customer retention across every tenant: voucher.run_customer_retention(batch_size), for
-- operators (pg_cron, the background worker). Three tenants: 'ret a' and 'ret b' keep customers
-- 30 days, 'ret off' has retention off and keeps everything.

\c - regress_op
SELECT voucher.create_tenant('ret a') AS ta \gset
SELECT voucher.create_tenant('ret b') AS tb \gset
SELECT voucher.create_tenant('ret off') AS tc \gset
SELECT voucher.create_api_key('admin', tenant => :'ta') AS admin_a \gset
SELECT voucher.create_api_key('admin', tenant => :'tb') AS admin_b \gset
SELECT voucher.create_api_key('admin', tenant => :'tc') AS admin_c \gset

\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin_a') IS NOT NULL AS ok;
SELECT voucher.configure('customer_retention_days', '30');
SELECT count(voucher.upsert_customer('a' || i, 'a' || i || '@example.com', 'A ' || i)) AS a_customers
  FROM generate_series(1, 5) i;
SELECT voucher.upsert_customer('a6', 'a6@example.com', 'A 6') AS a6 \gset
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin_b') IS NOT NULL AS ok;
SELECT voucher.configure('customer_retention_days', '30');
SELECT count(voucher.upsert_customer('b' || i, 'b' || i || '@example.com')) AS b_customers
  FROM generate_series(1, 3) i;
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin_c') IS NOT NULL AS ok;
SELECT count(voucher.upsert_customer('c' || i, 'c' || i || '@example.com')) AS c_customers
  FROM generate_series(1, 4) i;
COMMIT;

-- every customer 40 days without activity, except one of 'ret a' (a6, active 5 days ago)
\c - postgres
UPDATE voucher.customer SET updated_at = now() - interval '40 days'
 WHERE tenant_id IN (:'ta', :'tb', :'tc');
UPDATE voucher.customer SET updated_at = now() - interval '5 days' WHERE customer_id = :'a6';
-- how many each tenant has forgotten so far
CREATE VIEW public.ret_state AS
SELECT t.name, count(*) FILTER (WHERE c.forgotten_at IS NOT NULL) AS forgotten,
       count(*) FILTER (WHERE c.forgotten_at IS NULL) AS kept
  FROM voucher.tenant t JOIN voucher.customer c USING (tenant_id)
 WHERE t.name LIKE 'ret %' GROUP BY t.name ORDER BY t.name;
SELECT * FROM public.ret_state;

-- only operators; an admin key cannot reach other tenants through it; bad batch sizes
\c - regress_client
SELECT try($$SELECT voucher.run_customer_retention()$$) AS client;
BEGIN;
SELECT voucher.authenticate(:'admin_a') IS NOT NULL AS ok;
SELECT try($$SELECT voucher.run_customer_retention()$$) AS admin_key;
COMMIT;
\c - regress_op
SELECT try($$SELECT voucher.run_customer_retention(0)$$) AS zero,
       try($$SELECT voucher.run_customer_retention(100001)$$) AS too_big,
       try($$SELECT voucher.run_customer_retention(NULL)$$) AS null_batch;
\c - postgres
SELECT * FROM public.ret_state;

-- bounded batches: 4 customers per call, shared between the tenants with retention on (these
-- two, and any other tenant of this database that has it on and nothing left to forget)
\c - regress_op
SELECT voucher.run_customer_retention(4) AS first_call;
-- which tenant got the budget's remainder depends on where the call started (at random)
\c - postgres
SELECT sum(forgotten) AS forgotten,
       bool_and(forgotten > 0) FILTER (WHERE name <> 'ret off') AS both_served,
       sum(forgotten) FILTER (WHERE name = 'ret off') AS ret_off
  FROM public.ret_state;
\c - regress_op
SELECT voucher.run_customer_retention(4) AS second_call;
\c - postgres
SELECT * FROM public.ret_state;
\c - regress_op
SELECT voucher.run_customer_retention(4) AS nothing_left;
SELECT voucher.run_customer_retention() AS still_nothing;

-- the audit rows: in each tenant's own log, one per forgotten customer, naming the operator
\c - postgres
SELECT t.name, e.action, e.details ->> 'reason' AS reason, e.actor ->> 'type' AS actor,
       e.actor ->> 'db_role' AS db_role, e.actor ->> 'role' AS role, count(*)
  FROM voucher.audit_event e JOIN voucher.tenant t USING (tenant_id)
 WHERE t.name LIKE 'ret %' AND e.action LIKE 'customer.forgotten'
 GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1;
-- no act_as rows: the operator never opened a context of its own
SELECT count(*) AS act_as_rows FROM voucher.audit_event e JOIN voucher.tenant t USING (tenant_id)
 WHERE t.name LIKE 'ret %' AND e.action = 'act_as';

-- who is kept: a6 (recent) and every customer of 'ret off'; the logs verify
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin_a') IS NOT NULL AS ok;
SELECT s.who, voucher.export_customer(s.who) IS NOT NULL AS kept
  FROM unnest(ARRAY['a1', 'a5', 'a6']) s(who) ORDER BY 1;
SELECT ok FROM voucher.verify_audit();
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin_c') IS NOT NULL AS ok;
SELECT count(*) AS c_customers_with_email FROM voucher.customers WHERE email IS NOT NULL;
SELECT ok FROM voucher.verify_audit();
COMMIT;

-- the caller's own context survives the call: an operator acting as 'ret off'
\c - regress_op
BEGIN;
SELECT voucher.act_as(:'tc');
SELECT voucher.run_customer_retention() AS none;
SELECT voucher.current_tenant() = :'tc' AS still_acting_as_ret_off,
       (SELECT count(*) FROM voucher.customers) AS its_customers;
COMMIT;

-- one tenant failing (a superuser's trigger refuses to change one of its customers) is rolled
-- back whole and skipped with a WARNING; the other tenant goes on; the next call resumes
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin_a') IS NOT NULL AS ok;
SELECT voucher.upsert_customer('a7', 'a7@example.com') AS a7 \gset
SELECT voucher.upsert_customer('a8', 'a8@example.com') AS a8 \gset
COMMIT;
BEGIN;
SELECT voucher.authenticate(:'admin_b') IS NOT NULL AS ok;
SELECT count(voucher.upsert_customer('b' || i)) AS new_b FROM generate_series(4, 5) i;
COMMIT;
\c - postgres
UPDATE voucher.customer SET updated_at = now() - interval '41 days' WHERE customer_id = :'a7';
UPDATE voucher.customer SET updated_at = now() - interval '40 days'
 WHERE tenant_id IN (:'ta', :'tb') AND forgotten_at IS NULL AND updated_at > now() - interval '1 day';
CREATE FUNCTION public.refuse_a8() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'this customer may not change' USING ERRCODE = '55000';
END
$$;
CREATE TRIGGER refuse_a8 BEFORE UPDATE ON voucher.customer FOR EACH ROW
    WHEN (OLD.customer_id = :'a8'::uuid) EXECUTE FUNCTION public.refuse_a8();
SELECT * FROM public.ret_state;
\c - regress_op
SET client_min_messages = error;   -- the WARNING names the tenant's (random) id
SELECT voucher.run_customer_retention(100) AS while_a_fails;
RESET client_min_messages;
\c - postgres
-- a7 (forgotten before a8 failed in the same batch) is kept: the tenant's batch rolled back
SELECT * FROM public.ret_state;
DROP TRIGGER refuse_a8 ON voucher.customer;
\c - regress_op
SELECT voucher.run_customer_retention(100) AS after_the_fix;
SELECT voucher.run_customer_retention(100) AS nothing_left;
\c - postgres
SELECT * FROM public.ret_state;
DROP VIEW public.ret_state;
DROP FUNCTION public.refuse_a8();
-- the rolled-back batch left nothing half-done in 'ret a''s log
\c - regress_client
BEGIN;
SELECT voucher.authenticate(:'admin_a') IS NOT NULL AS ok;
SELECT ok FROM voucher.verify_audit();
SELECT count(*) AS forgotten_rows FROM voucher.audit_log WHERE action = 'customer.forgotten';
COMMIT;
