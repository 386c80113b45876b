#!/usr/bin/env python3
"""Every public function of the extension called with hostile arguments: no XX000, no crash.

Run by tests/client/run.sh after the shop client test, on the same database. The functions are
read from the catalog (every function of schema voucher whose name does not start with `_`), so
a function added later is covered without touching this file. For each function:

  1. each argument NULL in turn, the others plausible (this is how pgrx's non-NULL arguments of a
     non-STRICT function surfaced as XX000, issue 14 wave: authenticate's and act_as's
     `session`);
  2. a fixed number of combinations drawn (seeded, so a failure repeats) from hostile values per
     type: empty and blank strings, control characters, 10,000 characters, NaN and Infinity,
     negative and huge numbers, JSON of every shape, infinite timestamps, negative intervals.

Each call runs in its own transaction that is rolled back, as a shop's login role with an
admin key, with a manager key, or without a key, and as an operator's login role (the operator's
functions). A call may succeed or fail with any SQLSTATE of the contract; it fails the test when
the SQLSTATE is of class XX (internal error: a Rust panic or an elog(ERROR) that reached the
caller) other than XX001 (a ciphertext that fails to authenticate, API.md), when an error
arrives without a SQLSTATE, or when the connection is lost (a backend crash). At the end the
server must still answer and the tenant's vouchers must be as before.
"""

import os
import random
import sys
import time

import psycopg
from psycopg.conninfo import make_conninfo

HOST = os.environ["VOUCHER_TEST_HOST"]
PORT = os.environ["VOUCHER_TEST_PORT"]
DB = os.environ.get("VOUCHER_TEST_DB", "voucher_client")
# Login roles of this test's own: failed authenticate calls are counted per source, which on a
# Unix socket is the role, so the lock-outs this test provokes touch no other test's role.
APP_ROLE = "hostile_app"     # the shop's role: voucher_client, no superuser, no BYPASSRLS
OP_ROLE = "hostile_op"       # the platform operator's: voucher_operator
SEED = int(os.environ.get("VOUCHER_HOSTILE_SEED", "20261203"))
DRAWS = int(os.environ.get("VOUCHER_HOSTILE_DRAWS", "40"))
# long-running by design, not by input: each would only repeat what the others show
SKIP = {"distribute", "rotate_master_key"}


def dsn(user: str) -> str:
    return make_conninfo(host=HOST, port=PORT, dbname=DB, user=user,
                         application_name="voucher_ext hostile calls")


def hostile_values(campaign: str) -> dict:
    """SQL literals per argument type; the first of each list is the plausible one."""
    return {
        "text": ["'HOSTILE-1'", "NULL", "''", "'   '", "repeat('x', 10000)", "E'a\\tb\\nc'",
                 "chr(1)", "'%s%n%x'", "'''; DROP TABLE x; --'", "'ü' || repeat('é', 300)",
                 "'admin'", "'customer'", "'ip'", "'marketing'", "'cust-1'"],
        "uuid": [f"'{campaign}'", "NULL", "'00000000-0000-0000-0000-000000000000'",
                 "gen_random_uuid()"],
        "integer": ["5", "NULL", "0", "-1", "2147483647", "-2147483648"],
        "numeric": ["10", "NULL", "0", "-5", "'NaN'", "'Infinity'", "'-Infinity'", "1e300",
                    "0.0000001"],
        "boolean": ["true", "NULL", "false"],
        "jsonb": ["'{}'", "NULL", "'[]'", "'null'", "'\"s\"'", "'1'",
                  "'{\"a\": {\"b\": [1, {\"c\": null}]}}'",
                  "(SELECT jsonb_object_agg(i::text, i) FROM generate_series(1, 2000) i)"],
        "interval": ["'1 day'", "NULL", "'-1 day'", "'0'", "'1000 years'"],
        "timestamp with time zone": ["now() + interval '1 day'", "NULL", "'-infinity'",
                                     "'infinity'", "now() - interval '1 day'"],
    }


def setup(su) -> dict:
    """The two login roles; a tenant of its own with admin and manager keys, a campaign, a code
    and a customer."""
    for role, member_of in ((APP_ROLE, "voucher_client"), (OP_ROLE, "voucher_operator")):
        su.execute(f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                    CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {member_of};
                END IF;
            END $$""")
    tenant = su.execute("SELECT voucher.create_tenant('hostile')").fetchone()[0]
    admin = su.execute("SELECT voucher.create_api_key('admin', tenant => %s)", [tenant]).fetchone()[0]
    manager = su.execute("SELECT voucher.create_api_key('manager', tenant => %s)",
                         [tenant]).fetchone()[0]
    with psycopg.connect(dsn(APP_ROLE), autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT voucher.authenticate(%s)", [admin])
        campaign = conn.execute(
            "SELECT voucher.create_campaign('hostile', redemption_limit => 3, per_customer_limit => 1,"
            " discount_type => 'percent', discount_value => 10)").fetchone()[0]
        conn.execute("SELECT voucher.add_code(%s, 'HOSTILE-1')", [campaign])
        conn.execute("SELECT voucher.upsert_customer('cust-1', 'c1@example.com', 'C One', '{}')")
    return {"tenant": tenant, "admin": admin, "manager": manager, "campaign": str(campaign)}


def vouchers(admin: str):
    with psycopg.connect(dsn(APP_ROLE), autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT voucher.authenticate(%s)", [admin])
        return conn.execute("SELECT code, redeemed_count, active FROM voucher.vouchers ORDER BY code"
                            ).fetchall()


def main() -> int:
    began = time.monotonic()
    rng = random.Random(SEED)
    with psycopg.connect(dsn("postgres"), autocommit=True) as su:
        t = setup(su)
        functions = su.execute("""
            SELECT p.proname, array_to_string(p.proargtypes::regtype[], ',')
              FROM pg_proc p
             WHERE p.pronamespace = 'voucher'::regnamespace AND p.proname !~ '^_'
               AND p.prokind = 'f'
             ORDER BY 1, 2""").fetchall()
    before = vouchers(t["admin"])
    values = hostile_values(t["campaign"])

    calls = []  # (function, argument literals)
    for name, types in functions:
        if name in SKIP:
            continue
        types = types.split(",") if types else []
        pools = [values.get(ty, ["NULL"]) for ty in types]
        calls.append((name, [p[0] for p in pools]))
        for i in range(len(types)):          # each argument NULL in turn
            args = [p[0] for p in pools]
            args[i] = "NULL"
            calls.append((name, args))
        for _ in range(DRAWS):               # hostile combinations
            calls.append((name, [rng.choice(p) for p in pools]))

    callers = [("app", "admin")] * 4 + [("app", "manager"), ("app", None), ("op", None)]
    roles = {"app": APP_ROLE, "op": OP_ROLE}
    conns = {who: psycopg.connect(dsn(role), autocommit=True) for who, role in roles.items()}
    problems, outcome = [], {}
    for name, args in calls:
        who, key = rng.choice(callers)
        conn = conns[who]
        stmt = f"SELECT * FROM voucher.{name}({', '.join(args)})"
        try:
            conn.execute("BEGIN")
            if key:
                conn.execute("SELECT voucher.authenticate(%s)", [t[key]])
            conn.execute(stmt).fetchall()
            state = "ok"
        except psycopg.OperationalError as exc:
            if conn.closed or conn.broken:
                problems.append(f"connection lost (backend crash?) on {stmt[:200]}: {exc}")
                conns[who] = psycopg.connect(dsn(roles[who]), autocommit=True)
                continue
            state = exc.sqlstate
        except psycopg.Error as exc:
            state = exc.sqlstate
            if state is None or (state.startswith("XX") and state != "XX001"):
                problems.append(f"{state} on {stmt[:200]}: {str(exc)[:200]}")
        finally:
            if not (conn.closed or conn.broken):
                conn.execute("ROLLBACK")
        outcome[state] = outcome.get(state, 0) + 1

    after = vouchers(t["admin"])
    if before != after:
        problems.append(f"the tenant's vouchers changed: {before} -> {after}")
    for c in conns.values():
        c.close()

    summary = ", ".join(f"{k} {v}" for k, v in sorted(outcome.items(), key=lambda kv: -kv[1]))
    print(f"hostile calls: {len(calls)} calls of {len(functions) - len(SKIP)} functions "
          f"(seed {SEED}) in {time.monotonic() - began:.0f} s: {summary}")
    for p in problems:
        print("FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
