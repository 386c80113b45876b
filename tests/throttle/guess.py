#!/usr/bin/env python3
"""The guessing test (run by tests/throttle/guess.sh, which makes the database).

1. A guesser redeems random codes of the default pattern as one customer from one client, as
   fast as one connection goes, for GUESS_SECONDS, while an honest client redeems REDEEM valid
   single-use codes for other customers (and other clients) at the same time.
   - the guesser gets VC001 at most THRESHOLD times, then only VC012 (never a voucher);
   - every honest redemption succeeds;
   - the tenant's audit log grows by the honest redemptions plus at most THRESHOLD failed-
     redemption rows plus a lock-out event for the customer and one for the client, however many guesses were refused.
2. A flood of bad API keys from one database role (a Unix socket's source): 28000 up to the
   threshold, VC012 after it, a valid key still accepted during the flood, no audit row per key.
"""

import os
import random
import threading
import time
from collections import Counter

import psycopg
from psycopg.conninfo import make_conninfo

HOST = os.environ["VOUCHER_TEST_HOST"]
PORT = os.environ["VOUCHER_TEST_PORT"]
DB = os.environ.get("VOUCHER_TEST_DB", "voucher_throttle")
GUESS_SECONDS = float(os.environ.get("GUESS_SECONDS", "5"))
THRESHOLD = 10      # the default customer and client threshold
AUTH_THRESHOLD = 20  # the default voucher.auth_failure_threshold
REDEEM = 300
CHARSET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # unambiguous


def dsn(user):
    return make_conninfo(host=HOST, port=PORT, dbname=DB, user=user,
                         application_name="voucher_ext guessing test")


def setup():
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        for role in ("guess_app", "guess_flood"):
            if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                c.execute(f"CREATE ROLE {role} LOGIN IN ROLE voucher_client")
        tenant = c.execute("SELECT voucher.create_tenant('guessing shop')").fetchone()[0]
        admin = c.execute("SELECT voucher.create_api_key('admin', tenant => %s)", [tenant]).fetchone()[0]
    with psycopg.connect(dsn("guess_app")) as c:
        c.execute("SELECT voucher.authenticate(%s)", [admin])
        redeemer = c.execute("SELECT voucher.create_api_key('redeemer')").fetchone()[0]
        camp = c.execute("SELECT voucher.create_campaign('single use', discount_type => 'amount', "
                         "discount_value => 5)").fetchone()[0]
        c.execute("SELECT voucher.generate_codes(%s, %s)", [camp, REDEEM])
        codes = [r[0] for r in c.execute("SELECT code FROM voucher.vouchers").fetchall()]
    assert len(codes) == REDEEM
    return admin, redeemer, codes


def audit_rows(admin):
    with psycopg.connect(dsn("guess_app")) as c:
        c.execute("SELECT voucher.authenticate(%s)", [admin])
        return c.execute("SELECT count(*) FROM voucher.audit_log").fetchone()[0], \
            dict(c.execute("SELECT action, count(*) FROM voucher.audit_log GROUP BY 1").fetchall())


def guesser(key, stop, outcomes):
    rng = random.Random()
    with psycopg.connect(dsn("guess_app"), autocommit=True) as c:
        c.execute("SELECT voucher.authenticate(%s, session => true)", [key])
        while not stop.is_set():
            code = "".join(rng.choice(CHARSET) for _ in range(8))
            try:
                c.execute("SELECT * FROM voucher.redeem(%s, customer => 'guesser', "
                          "client => '198.51.100.66')", [code])
                outcomes.append("ok")
            except psycopg.Error as e:
                outcomes.append(e.sqlstate)


def honest(key, codes, results):
    with psycopg.connect(dsn("guess_app"), autocommit=True) as c:
        c.execute("SELECT voucher.authenticate(%s, session => true)", [key])
        for i, code in enumerate(codes):
            try:
                c.execute("SELECT * FROM voucher.redeem(%s, customer => %s, client => %s)",
                          [code, f"honest-{i}", f"203.0.113.{i % 250}"])
                results.append("ok")
            except psycopg.Error as e:
                results.append(e.sqlstate)


def guessing(admin, redeemer, codes):
    before, _ = audit_rows(admin)
    stop = threading.Event()
    outcomes, results = [], []
    g = threading.Thread(target=guesser, args=(redeemer, stop, outcomes))
    h = threading.Thread(target=honest, args=(redeemer, codes, results))
    t0 = time.monotonic()
    g.start()
    h.start()
    h.join()
    time.sleep(max(0.0, GUESS_SECONDS - (time.monotonic() - t0)))
    stop.set()
    g.join()
    elapsed = time.monotonic() - t0
    after, actions = audit_rows(admin)

    counts = Counter(outcomes)
    first_lock = outcomes.index("VC012") if "VC012" in outcomes else None
    print(f"guesser: {len(outcomes)} guesses in {elapsed:.1f} s ({len(outcomes) / elapsed:.0f}/s): "
          f"{dict(counts)}; locked out after {first_lock} failures")
    print(f"honest client: {Counter(results)} of {len(codes)}")
    print(f"audit log: +{after - before} rows ({actions})")
    assert counts["ok"] == 0, "the guesser found a voucher"
    assert first_lock is not None and first_lock <= THRESHOLD, f"not locked out by {THRESHOLD}"
    assert set(outcomes[first_lock:]) == {"VC012"}, "a guess got through the lock-out"
    assert counts["VC001"] <= THRESHOLD
    assert results == ["ok"] * len(codes), f"honest redemptions failed: {Counter(results)}"
    growth = after - before
    # the customer and the client cross their thresholds together: two lock-out events
    assert growth <= len(codes) + THRESHOLD + 2, f"audit grew by {growth}"
    assert actions.get("throttle.locked") == 2
    assert actions.get("redemption.failed", 0) <= THRESHOLD
    return len(outcomes), counts["VC012"], elapsed


def flood(admin):
    before, _ = audit_rows(admin)
    states = []
    accepted = []
    with psycopg.connect(dsn("guess_flood"), autocommit=True) as c:
        for i in range(200):
            try:
                c.execute("SELECT voucher.authenticate(%s)", ["vk_%012d_%s" % (i, "x" * 52)])
                states.append("ok")
            except psycopg.Error as e:
                states.append(e.sqlstate)
            if i % 50 == 49:
                accepted.append(c.execute("SELECT voucher.authenticate(%s) IS NOT NULL",
                                          [admin]).fetchone()[0])
    after, _ = audit_rows(admin)
    counts = Counter(states)
    print(f"key flood: {dict(counts)}; valid key accepted during it: {accepted}; "
          f"audit log: +{after - before} rows")
    assert states[:AUTH_THRESHOLD] == ["28000"] * AUTH_THRESHOLD, states[:AUTH_THRESHOLD + 1]
    assert set(states[AUTH_THRESHOLD:]) == {"VC012"}
    assert accepted == [True] * 4
    assert after == before, "bad keys wrote audit rows"
    with psycopg.connect(dsn("postgres"), autocommit=True) as c:
        assert c.execute("SELECT voucher.unlock('address', 'guess_flood')").fetchone()[0]


def main():
    admin, redeemer, codes = setup()
    guessing(admin, redeemer, codes)
    flood(admin)
    print("guessing test passed")


if __name__ == "__main__":
    main()
