-- Shared by every test file: login roles and try(), run first by the schedule.
--   regress_op                        a voucher_operator login
--   regress_client, regress_client2   voucher_client logins
CREATE ROLE regress_op LOGIN IN ROLE voucher_operator;
CREATE ROLE regress_client LOGIN IN ROLE voucher_client;
CREATE ROLE regress_client2 LOGIN IN ROLE voucher_client;

-- try(sql): runs statements as the caller; 'ok (N rows)' for the last one, or
-- 'SQLSTATE: message' (and the hint) for the error it raised. Lets a test show an error's
-- SQLSTATE, or many outcomes side by side in one table.
CREATE FUNCTION public.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    hint text;
BEGIN
    EXECUTE sql;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN 'ok (' || n || ' rows)';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' (hint: ' || hint || ')', ' (hint: )'), '');
END
$$;
GRANT EXECUTE ON FUNCTION public.try(text) TO PUBLIC;
SELECT try('SELECT 1/0') AS try_reports_errors, try('SELECT 1') AS try_reports_success;
