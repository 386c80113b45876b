-- The baseline for code generation: what a developer would write in PL/pgSQL without the
-- extension. Eight characters drawn with random() from the same 31-character unambiguous
-- alphabet voucher_ext uses by default, and a retry loop that throws away codes already taken.
--
-- bench_plpgsql_codes(n)            pure: returns n unique codes; uniqueness against a temporary
--                                   table with a primary key (the "hash" of codes seen so far).
-- bench_plpgsql_generate(t, c, n)   inserts n unique codes into bare.code; uniqueness against
--                                   bare.code's own UNIQUE (tenant_id, code) index, the way
--                                   generate_codes probes voucher.code.
-- Both are created in schema public of the benchmark database, as the superuser.

CREATE OR REPLACE FUNCTION bench_plpgsql_code() RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    alphabet constant text := '23456789ABCDEFGHJKMNPQRSTUVWXYZ';
    code text := '';
BEGIN
    FOR i IN 1..8 LOOP
        code := code || substr(alphabet, 1 + floor(random() * 31)::int, 1);
    END LOOP;
    RETURN code;
END
$$;

CREATE OR REPLACE FUNCTION bench_plpgsql_codes(n integer) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    made integer := 0;
    c text;
BEGIN
    CREATE TEMP TABLE bench_seen (code text COLLATE "C" PRIMARY KEY) ON COMMIT DROP;
    WHILE made < n LOOP
        c := bench_plpgsql_code();
        INSERT INTO bench_seen VALUES (c) ON CONFLICT DO NOTHING;
        IF FOUND THEN               -- a new code; otherwise retry
            made := made + 1;
            RETURN NEXT c;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION bench_plpgsql_generate(tenant uuid, campaign uuid, n integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    made bigint := 0;
BEGIN
    WHILE made < n LOOP
        INSERT INTO bare.code (tenant_id, voucher_id, campaign_id, code)
        VALUES (tenant, voucher._uuid_v7(), campaign, bench_plpgsql_code())
        ON CONFLICT (tenant_id, code) DO NOTHING;
        IF FOUND THEN               -- a new code; otherwise retry
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$$;
