#!/usr/bin/env python3
"""Tests examples/shop_client.py against a real cluster, the way a web shop would use us.

Run by tests/client/run.sh, which creates the database (extension installed) and passes it in
VOUCHER_TEST_HOST (the Unix socket directory), VOUCHER_TEST_PORT and VOUCHER_TEST_DB.

  1. concurrency: 32 threads make 200 redemption attempts on one voucher limited to 25 uses,
     through a pool of 4..8 connections: exactly 25 succeed, every other attempt fails with
     VC004 and nothing else, and the voucher's counter says 25.
  2. SQLSTATEs: the documented codes arrive where a client can match them (exc.sqlstate).
  3. context leaks: two tenants' keys interleaved on a pool of 2 connections; a transaction
     that does not authenticate sees no tenant and no rows, and tenant B never sees A's rows.

The client side connects as shop_app, a plain LOGIN role in voucher_client: a superuser would
bypass row-level security and the privilege checks this test means to exercise.
Plain functions and asserts; only psycopg and psycopg_pool are needed.
"""

import os
import random
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from decimal import Decimal

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
import shop_client  # noqa: E402

HOST = os.environ["VOUCHER_TEST_HOST"]
PORT = os.environ["VOUCHER_TEST_PORT"]
DB = os.environ.get("VOUCHER_TEST_DB", "voucher_client")
APP_ROLE = "shop_app"

LIMIT = 25          # redemption_limit of LIMITED-1
THREADS = 32
ATTEMPTS = 200      # in total, over all threads
LEAK_TRANSACTIONS = 400


def dsn(user: str) -> str:
    return make_conninfo(host=HOST, port=PORT, dbname=DB, user=user,
                         application_name="voucher_ext client test")


def sqlstate_of(fn, *args, **kwargs) -> str | None:
    """Runs fn; returns the SQLSTATE it failed with, or None if it succeeded."""
    try:
        fn(*args, **kwargs)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def in_tenant(pool: ConnectionPool, api_key: str, sql: str, params=()) -> list:
    """One transaction authenticated with api_key; returns the rows of sql."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT voucher.authenticate(%s)", [api_key])
        return conn.execute(sql, params).fetchall()


# --- set-up ----------------------------------------------------------------------------------

def setup() -> dict:
    """Two tenants, their keys and vouchers. Returns what the tests need."""
    with psycopg.connect(dsn("postgres"), autocommit=True) as su:
        # The application's login role: not a superuser, no BYPASSRLS, member of voucher_client.
        # Roles are cluster-wide, so it may exist from an earlier run on this cluster.
        su.execute(f"""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                    CREATE ROLE {APP_ROLE} LOGIN IN ROLE voucher_client;
                END IF;
            END $$""")
        su.execute(f"GRANT voucher_client TO {APP_ROLE}")
        su.execute(f"ALTER ROLE {APP_ROLE} NOSUPERUSER NOBYPASSRLS")

        # As the platform operator (here: the superuser), two tenants and their first keys.
        t = {}
        for name in ("A", "B"):
            tenant = su.execute("SELECT voucher.create_tenant(%s)", [f"shop {name}"]).fetchone()[0]
            admin = su.execute("SELECT voucher.create_api_key('admin', tenant => %s)",
                               [tenant]).fetchone()[0]
            t[name] = {"tenant": tenant, "admin": admin}

    # Everything else as the shop itself, with the tenants' admin keys.
    with psycopg.connect(dsn(APP_ROLE), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT voucher.authenticate(%s)", [t["A"]["admin"]])
            t["A"]["redeemer"] = conn.execute(
                "SELECT voucher.create_api_key('redeemer', label => 'web shop')").fetchone()[0]
            limited = conn.execute("SELECT voucher.create_campaign('limited', redemption_limit => %s)",
                                   [LIMIT]).fetchone()[0]
            conn.execute("SELECT voucher.add_code(%s, 'LIMITED-1')", [limited])
            other = conn.execute("SELECT voucher.create_campaign('alpha', redemption_limit => NULL)"
                                 ).fetchone()[0]
            conn.execute("SELECT voucher.add_code(%s, 'ALPHA-1')", [other])
            # A redeemer key that is revoked at once, to check 28000 for revoked keys.
            t["A"]["revoked"] = conn.execute(
                "SELECT voucher.create_api_key('redeemer', label => 'revoked')").fetchone()[0]
            conn.execute("SELECT voucher.revoke_api_key(id) FROM voucher.api_keys"
                         " WHERE label = 'revoked'")
        with conn.transaction():
            # B holds a code of the same name: codes are unique per tenant only.
            conn.execute("SELECT voucher.authenticate(%s)", [t["B"]["admin"]])
            camp = conn.execute("SELECT voucher.create_campaign('bee', redemption_limit => NULL)"
                                ).fetchone()[0]
            conn.execute("SELECT voucher.add_code(%s, 'LIMITED-1')", [camp])
            conn.execute("SELECT voucher.add_code(%s, 'BEE-1')", [camp])

        for name in ("A", "B"):
            with conn.transaction():
                conn.execute("SELECT voucher.authenticate(%s)", [t[name]["admin"]])
                t[name]["vouchers"] = dict(conn.execute(
                    "SELECT id, code FROM voucher.vouchers").fetchall())
    assert sorted(t["A"]["vouchers"].values()) == ["ALPHA-1", "LIMITED-1"], t["A"]["vouchers"]
    assert sorted(t["B"]["vouchers"].values()) == ["BEE-1", "LIMITED-1"], t["B"]["vouchers"]
    return t


# --- 1. many threads on a limited voucher ----------------------------------------------------

def test_concurrent_limit(t: dict) -> str:
    successes, failures, unexpected, refusals = [], [], [], []
    lock = threading.Lock()
    next_attempt = iter(range(ATTEMPTS))
    start = threading.Barrier(THREADS)

    def worker():
        start.wait()
        while True:
            with lock:
                i = next(next_attempt, None)
            if i is None:
                return
            try:
                r = shop_client.redeem(pool, t["A"]["redeemer"], "LIMITED-1",
                                       customer=f"cust-{i}", order_amount=Decimal("50.00"))
                with lock:
                    successes.append(r)
            except psycopg.Error as exc:
                with lock:
                    failures.append(exc.sqlstate)
                    refusals.append(exc)
            except Exception as exc:  # a pool timeout, say: never expected
                with lock:
                    unexpected.append(repr(exc))

    began = time.monotonic()
    with shop_client.make_pool(dsn(APP_ROLE), min_size=4, max_size=8) as pool:
        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        stats = pool.get_stats()
    took = time.monotonic() - began

    assert not unexpected, f"non-database errors: {unexpected[:5]}"
    assert len(successes) + len(failures) == ATTEMPTS
    assert len(successes) == LIMIT, f"{len(successes)} redemptions succeeded, expected {LIMIT}"
    assert Counter(failures) == {"VC004": ATTEMPTS - LIMIT}, f"failures: {Counter(failures)}"
    assert len({r.redemption_id for r in successes}) == LIMIT, "duplicate redemption ids"
    assert not any(r.replayed for r in successes)
    assert stats["pool_max"] == 8 and stats["connections_num"] <= 8, stats

    # Read the counters back, as A's admin, in a fresh transaction.
    with psycopg.connect(dsn(APP_ROLE), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT voucher.authenticate(%s)", [t["A"]["admin"]])
            count, remaining = conn.execute(
                "SELECT redeemed_count, remaining_uses FROM voucher.vouchers"
                " WHERE code = 'LIMITED-1'").fetchone()
            ledger = conn.execute(
                "SELECT count(*) FROM voucher.redemptions r JOIN voucher.vouchers v"
                "    ON v.id = r.voucher_id WHERE v.code = 'LIMITED-1'").fetchone()[0]
        with conn.transaction():
            conn.execute("SELECT voucher.authenticate(%s)", [t["B"]["admin"]])
            b_count = conn.execute("SELECT redeemed_count FROM voucher.vouchers"
                                   " WHERE code = 'LIMITED-1'").fetchone()[0]
    assert count == LIMIT, f"redeemed_count is {count}, expected {LIMIT}"
    assert remaining == 0, f"remaining_uses is {remaining}"
    assert ledger == LIMIT, f"{ledger} redemption rows, expected {LIMIT}"
    assert b_count == 0, f"B's own LIMITED-1 was redeemed {b_count} times by A's key"

    # What the shop tells the customers who came too late.
    assert {shop_client.customer_message(e) for e in refusals} == \
        {shop_client.CUSTOMER_MESSAGES["VC004"]}
    return (f"{THREADS} threads, {ATTEMPTS} attempts on {stats['connections_num']} pooled "
            f"connections in {took:.1f}s: {len(successes)} redeemed, "
            f"{len(failures)} x VC004; redeemed_count = {count}")


# --- 2. the documented SQLSTATEs -------------------------------------------------------------

def test_sqlstates(t: dict) -> str:
    a = t["A"]
    bogus = "vk_" + "abcdefghijkm" + "_" + "x" * 52  # well-formed, never issued
    with shop_client.make_pool(dsn(APP_ROLE), min_size=1, max_size=2) as pool:
        def read_keys(key):
            return in_tenant(pool, key, "SELECT * FROM voucher.api_keys")

        def redeem_unauthenticated():
            with pool.connection() as conn, conn.transaction():
                conn.execute("SELECT * FROM voucher.redeem(code => 'ALPHA-1')")

        checks = [
            ("unknown code", "VC001",
             lambda: shop_client.redeem(pool, a["redeemer"], "NO-SUCH-CODE")),
            ("another tenant's code", "VC001",
             lambda: shop_client.redeem(pool, t["B"]["admin"], "ALPHA-1")),
            ("used-up voucher", "VC004",
             lambda: shop_client.redeem(pool, a["redeemer"], "limited 1")),  # normalized lookup
            ("malformed key", "28000",
             lambda: shop_client.redeem(pool, "not-a-key", "ALPHA-1")),
            ("well-formed unknown key", "28000",
             lambda: shop_client.redeem(pool, bogus, "ALPHA-1")),
            ("revoked key", "28000",
             lambda: shop_client.redeem(pool, a["revoked"], "ALPHA-1")),
            ("redeemer key reads voucher.api_keys", "42501", lambda: read_keys(a["redeemer"])),
            ("redeem without authenticating", "42501", redeem_unauthenticated),
        ]
        results = []
        for what, expected, fn in checks:
            got = sqlstate_of(fn)
            assert got == expected, f"{what}: SQLSTATE {got}, expected {expected}"
            results.append(f"{what} -> {got}")

        # The same calls that should work, do.
        assert len(read_keys(a["admin"])) == 3  # admin, redeemer, revoked
        r = shop_client.redeem(pool, a["redeemer"], "alpha-1", customer="cust-1",
                               order_amount=Decimal("10"), idempotency_key="order-1")
        again = shop_client.redeem(pool, a["redeemer"], "alpha-1", customer="cust-1",
                                   order_amount=Decimal("10"), idempotency_key="order-1")
        assert not r.replayed and again.replayed and again.redemption_id == r.redemption_id
        got = sqlstate_of(shop_client.redeem, pool, a["redeemer"], "alpha-1", customer="cust-2",
                          order_amount=Decimal("10"), idempotency_key="order-1")
        assert got == "VC009", f"idempotency key reused with other arguments: {got}"
        results.append("idempotency key reused -> VC009")
    return "; ".join(results)


# --- 3. no tenant context leaks between pooled transactions ----------------------------------

def test_no_context_leak(t: dict) -> str:
    a_ids, b_ids = set(t["A"]["vouchers"]), set(t["B"]["vouchers"])
    seen = defaultdict(Counter)   # backend pid -> Counter of kinds run on it
    order = defaultdict(list)     # backend pid -> kinds in the order they ran
    errors = []
    lock = threading.Lock()
    rng = random.Random(20240601)
    kinds = ["A", "B", "none", "none", "A-fails", "B-fails", "bad-key", "autocommit-auth"]
    plan = [rng.choice(kinds) for _ in range(LEAK_TRANSACTIONS)]
    it = iter(plan)

    def check_unauthenticated(conn, where):
        tenant, vouchers, redemptions = conn.execute(
            "SELECT voucher.current_tenant(), (SELECT count(*) FROM voucher.vouchers),"
            "       (SELECT count(*) FROM voucher.redemptions)").fetchone()
        assert tenant is None, f"{where}: current_tenant() is {tenant}"
        assert vouchers == 0 and redemptions == 0, f"{where}: sees {vouchers} vouchers, {redemptions} redemptions"

    def one(kind):
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            if kind in ("A", "B"):
                with conn.transaction():
                    tenant = conn.execute("SELECT voucher.authenticate(%s)",
                                          [t[kind]["admin"]]).fetchone()[0]
                    assert tenant == t[kind]["tenant"]
                    assert conn.execute("SELECT voucher.current_tenant()").fetchone()[0] == tenant
                    ids = {r[0] for r in conn.execute("SELECT id FROM voucher.vouchers")}
                    mine, theirs = (a_ids, b_ids) if kind == "A" else (b_ids, a_ids)
                    assert ids == mine, f"{kind} sees vouchers {ids}, expected {mine}"
                    assert not ids & theirs
            elif kind == "none":
                with conn.transaction():
                    check_unauthenticated(conn, f"unauthenticated transaction on pid {pid}")
            elif kind in ("A-fails", "B-fails"):
                # Authenticated, then the transaction fails and rolls back.
                try:
                    with conn.transaction():
                        conn.execute("SELECT voucher.authenticate(%s)", [t[kind[0]]["admin"]])
                        conn.execute("SELECT * FROM voucher.redeem(code => 'NO-SUCH-CODE')")
                    raise AssertionError("redeem of an unknown code succeeded")
                except psycopg.Error as exc:
                    # past the key's limit on failed anonymous look-ups (100 a minute): VC012
                    assert exc.sqlstate in ("VC001", "VC012"), exc.sqlstate
            elif kind == "bad-key":
                try:
                    with conn.transaction():
                        conn.execute("SELECT voucher.authenticate(%s)", ["vk_wrong"])
                    raise AssertionError("a bad key authenticated")
                except psycopg.Error as exc:
                    # past 20 bad keys a minute from one source (brute-force protection): VC012
                    assert exc.sqlstate in ("28000", "VC012"), exc.sqlstate
            elif kind == "autocommit-auth":
                # The mistake of authenticating outside a transaction: the context lasts for
                # that one statement only, so the next statement already has none.
                conn.execute("SELECT voucher.authenticate(%s)", [t["A"]["admin"]])
                check_unauthenticated(conn, "statement after an autocommit authenticate")
        return pid

    def worker():
        while True:
            with lock:
                kind = next(it, None)
            if kind is None:
                return
            try:
                pid = one(kind)
            except Exception:
                with lock:
                    errors.append(f"{kind}: {traceback.format_exc()}")
                continue
            with lock:
                seen[pid][kind] += 1
                order[pid].append(kind)

    with ConnectionPool(dsn(APP_ROLE), min_size=2, max_size=2, kwargs={"autocommit": True},
                        open=True) as pool:
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    assert not errors, f"{len(errors)} failures, first:\n{errors[0]}"
    assert sum(sum(c.values()) for c in seen.values()) == LEAK_TRANSACTIONS
    # The point of the exercise: every connection served both tenants, and unauthenticated
    # transactions ran on it right after an authenticated one.
    for pid, kinds_run in seen.items():
        assert kinds_run["A"] and kinds_run["B"] and kinds_run["none"], (pid, kinds_run)
    handovers = sum(1 for ks in order.values() for prev, cur in zip(ks, ks[1:])
                    if prev in ("A", "B", "A-fails", "B-fails") and cur == "none")
    switches = sum(1 for ks in order.values() for prev, cur in zip(ks, ks[1:])
                   if {prev[0], cur[0]} == {"A", "B"})
    assert handovers > 0 and switches > 0
    return (f"{LEAK_TRANSACTIONS} pooled transactions on {len(seen)} connections: "
            f"{switches} A<->B switches and {handovers} authenticated->unauthenticated handovers "
            f"on one connection, no leak")


def main() -> int:
    began = time.monotonic()
    t = setup()
    failed = 0
    for name, test in [("concurrent redemptions", test_concurrent_limit),
                       ("documented SQLSTATEs", test_sqlstates),
                       ("no context leak", test_no_context_leak)]:
        try:
            print(f"ok    {name}: {test(t)}")
        except Exception:
            failed += 1
            print(f"FAIL  {name}:\n{traceback.format_exc()}")
    print(f"{3 - failed}/3 client tests passed in {time.monotonic() - began:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
