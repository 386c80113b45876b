#!/usr/bin/env python3
"""The voucher_ext benchmark driver (Python 3 standard library only).

Run it through scripts/bench.sh (`make bench`), which builds and installs the release build,
starts a private cluster and calls:

    bench/bench.py --host SOCKET_DIR --port PORT

Every operation is measured against a baseline on the same data, alternating the two within one
run (A B B A A B ...), BENCH_RUNS times each; the table reports per side the median and the range
(min-max) and the ratio of the medians. See bench/README.md for what each row means.

Environment: BENCH_RUNS (5), BENCH_SECONDS (10), BENCH_QUICK=1 (2 runs x 3 s, smaller data,
results under bench/results/quick.tmp/), BENCH_ONLY=case,case (re-run some cases and merge them
into the last results; `bench.py --list` names the cases).

Adding a case: write a function decorated with @case(...) that measures its sides with
alternate({...}) over closures calling pgbench(...) or oneshot(...), and returns rows made with
row(...); see case_verify_audit at the end of the cases for a template.
"""

import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")


def env_int(name, default):
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
RUNS = env_int("BENCH_RUNS", 2 if QUICK else 5)
SECONDS = env_int("BENCH_SECONDS", 3 if QUICK else 10)
ONLY = [c for c in os.environ.get("BENCH_ONLY", "").replace(" ", "").split(",") if c]

CLIENTS = 8                                   # pgbench clients unless a case says otherwise
CLIENT_COUNTS = [1, 2, 4, 8, 16, 32]          # the picture
GEN_COUNT = 100_000 if QUICK else 1_000_000   # codes per preview / generate run
# row 2d: codes a tenant already holds (and the plain table the same codes), and codes generated per run
GROWN_EXISTING = 300_000 if QUICK else 1_000_000
GROWN_COUNT = 100_000
# the n-th of them: base-31 digits of (n * 1000003) mod 31^8 over the unambiguous alphabet
GROWN_CODE = " || ".join(
    f"substr('23456789ABCDEFGHJKMNPQRSTUVWXYZ', ((n::bigint * 1000003 % 852891037441) / {31 ** i} % 31)::int + 1, 1)"
    for i in range(8))
POOL = 100_000                                # single-use vouchers S1..S100000
# A run that redeems from the pool must not use it up: with synchronous_commit off the bare side
# passes 10,000 TPS here, so those runs are shorter (the pool is reset between runs).
POOL_ASYNC_SECONDS = min(SECONDS, 5)
CUSTOMERS = 10_000                            # the shop's known customers cust-1..cust-10000
SCALES = [100_000, 1_000_000] if QUICK else [100_000, 1_000_000, 10_000_000]
SCALE_STRIDE = 7919                           # prime: (n - 1) * 7919 % N + 1 permutes 1..N
TENANTS, PER_TENANT = 1000, 100
MAIN_DB, GEN_DB, AUDIT_DB = "voucher_bench", "voucher_gen", "voucher_audit"
AUDIT_ROWS = 100_000 if QUICK else 1_000_000  # audit events verified in case 7
PRIVACY_DB = "voucher_privacy"
FORGET_REDEMPTIONS = 1000                     # redemptions of the customer forgotten in case 9
RETENTION_CUSTOMERS = 10_000                  # inactive customers forgotten in case 9
RETENTION_TENANTS = 10                        # case 9c: the same customers spread over this many tenants
APP_ROLE = "bench_app"                        # the login role pgbench connects as

OUT = os.path.join(HERE, "results", "quick.tmp") if QUICK else os.path.join(HERE, "results")
WORK = os.path.join(HERE, "results", "run.tmp")   # generated scripts, pgbench logs (ignored by git)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# PostgreSQL access
# ---------------------------------------------------------------------------------------------

class PG:
    def __init__(self, host, port):
        self.host, self.port = host, str(port)
        self.bindir = subprocess.check_output([PG_CONFIG, "--bindir"], text=True).strip()

    def cmd(self, prog, db, user):
        return [os.path.join(self.bindir, prog), "-h", self.host, "-p", self.port, "-U", user, "-d", db]

    def psql(self, db, sql, user="postgres", env=None):
        """Runs SQL (statements, psql meta-commands) in one session; returns unaligned output."""
        p = subprocess.run(self.cmd("psql", db, user) + ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                           input=sql, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise Failure(f"psql failed on {db}: {p.stderr.strip()[:2000]}")
        return p.stdout

    def scalar(self, db, sql):
        out = self.psql(db, sql).strip().splitlines()
        return out[-1] if out else None


PGI = None  # set in main()


def sql(db, text):
    return PGI.psql(db, text)


def scalar(db, text):
    return PGI.scalar(db, text)


# ---------------------------------------------------------------------------------------------
# Measurement primitives
# ---------------------------------------------------------------------------------------------

def render_script(name, **subst):
    """bench/pgbench/NAME.pgbench with {{KEY}} style placeholders filled in, written to WORK."""
    with open(os.path.join(HERE, "pgbench", name + ".pgbench")) as f:
        text = f.read()
    for k, v in subst.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise Failure(f"{name}.pgbench: no value for {', '.join(sorted(set(left)))}")
    tag = hashlib.sha1(text.encode()).hexdigest()[:10]
    path = os.path.join(WORK, f"{name}-{tag}.pgbench")
    with open(path, "w") as f:
        f.write(text)
    return path


POSTMASTER = {}


def backends_cpu():
    """CPU seconds (user + system) of the server's processes that have exited: the postmaster's
    cutime + cstime, which collect each backend's CPU when it ends. pgbench's backends end with
    the run, so the difference around a run is what the server spent on it, whatever else the
    (shared) machine was doing; None where /proc cannot tell."""
    try:
        if "pid" not in POSTMASTER:
            data = scalar("postgres", "SHOW data_directory")
            with open(os.path.join(data, "postmaster.pid")) as f:
                POSTMASTER["pid"] = int(f.readline())
        with open(f"/proc/{POSTMASTER['pid']}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the command name: state is field 3, so cutime (16) and cstime (17) are [13], [14]
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError, Failure):
        return None


def wait_backends_gone():
    """Until every other client backend has exited (a run's, and a reset's before it, whose CPU
    would otherwise be collected inside the next run's window); at most 2 s."""
    for _ in range(100):
        left = scalar("postgres", "SELECT count(*) FROM pg_stat_activity "
                                  "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
        if left == "0":
            return
        time.sleep(0.02)


def pgbench(db, script, clients=CLIENTS, seconds=None, sync_commit=True, user=APP_ROLE):
    """One pgbench run (-M prepared, per-transaction log): tps, p95 and average latency, tx, and
    the server's CPU per transaction in µs (cpu, see backends_cpu)."""
    seconds = seconds or SECONDS
    wait_backends_gone()
    cpu0 = backends_cpu()
    prefix = os.path.join(WORK, f"log-{uuid.uuid4().hex[:8]}")
    cmd = PGI.cmd("pgbench", db, user)[:-2] + [
        "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
        "-D", "authed=0", "-l", f"--log-prefix={prefix}", "-f", script, db]
    env = dict(os.environ)
    env.pop("PGOPTIONS", None)
    if not sync_commit:
        env["PGOPTIONS"] = "-c synchronous_commit=off"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = p.stdout + p.stderr
    lat = []
    for f in glob.glob(prefix + "*"):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        os.remove(f)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if p.returncode != 0 or not tx or not tps or "aborted" in out or (failed and int(failed.group(1))):
        raise Failure(f"pgbench {os.path.basename(script)} failed (rc {p.returncode}):\n{out.strip()[-1500:]}")
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] / 1000.0 if lat else None
    avg = statistics.fmean(lat) / 1000.0 if lat else None
    wait_backends_gone()
    cpu1 = backends_cpu()
    n = int(tx.group(1))
    cpu = (cpu1 - cpu0) * 1e6 / n if cpu0 is not None and cpu1 is not None and n else None
    return {"v": float(tps.group(1)), "tx": n, "p95": p95, "avg": avg, "cpu": cpu}


def watch_memory(app, result, stop):
    """Polls the peak memory of the backend whose application_name is `app` (20 Hz)."""
    pid = None
    while not stop.is_set():
        if pid is None:
            try:
                got = PGI.psql("postgres", f"SELECT pid FROM pg_stat_activity WHERE application_name = '{app}'")
                pid = int(got.split()[0]) if got.split() else None
            except Failure:
                pass
        if pid is not None:
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
                for field, key in (("RssAnon", "rss"), ("VmHWM", "hwm"), ("VmRSS", "vmrss")):
                    m = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
                    if m:
                        result[key] = max(result.get(key, 0), int(m.group(1)) / 1024.0)
            except OSError:
                pass
        stop.wait(0.05)


def oneshot(db, setup, timed, teardown="", monitor=False):
    """Times the statements in `timed` (psql \\timing, summed) in one session after `setup`.
    With monitor, also the backend's peak private memory (RssAnon) and VmHWM in MB."""
    app = "bench_" + uuid.uuid4().hex[:10]
    script = setup + "\n\\timing on\n" + "\n".join(timed) + "\n\\timing off\n" + teardown + "\n"
    env = dict(os.environ, PGAPPNAME=app)
    env.pop("PGOPTIONS", None)
    mem, stop = {}, threading.Event()
    watcher = threading.Thread(target=watch_memory, args=(app, mem, stop)) if monitor else None
    proc = subprocess.Popen(PGI.cmd("psql", db, "postgres") + ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    if watcher:
        watcher.start()
    out, err = proc.communicate(script)
    if watcher:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        raise Failure(f"psql failed: {err.strip()[:2000]}")
    times = [float(t) for t in re.findall(r"^Time: ([0-9.]+) ms", out, re.M)]
    if len(times) != len(timed):
        raise Failure(f"expected {len(timed)} timings, got {len(times)}:\n{out[-1000:]}")
    sample = {"v": sum(times), "out": out}
    if monitor:
        if "rss" not in mem:
            raise Failure("could not watch the backend's memory")
        sample.update(rss=mem["rss"], hwm=mem.get("hwm"))
    return sample


def alternate(sides, runs=None, before=None):
    """Runs each side `runs` times, alternating A B B A A B ... (for three sides A B C C B A ...).
    `sides` maps a name to a function returning a sample dict; `before(name)` runs untimed
    before every run (resets). Returns {name: [samples]}."""
    runs = runs or RUNS
    names = list(sides)
    out = {n: [] for n in names}
    for i in range(runs):
        for name in (names if i % 2 == 0 else names[::-1]):
            if before:
                before(name)
            s = sides[name]()
            s.pop("out", None)
            out[name].append(s)
            extra = f", p95 {s['p95']:.2f} ms, {s['tx']:,} tx" if "tx" in s else ""
            mem = f", RssAnon peak {s['rss']:.1f} MB" if "rss" in s else ""
            log(f"    {name} run {i + 1}/{runs}: {s['v']:,.1f}{extra}{mem}")
    return out


# ---------------------------------------------------------------------------------------------
# Rows of the results table
# ---------------------------------------------------------------------------------------------

def series(label, samples, key="v"):
    return {"label": label, "values": [s[key] for s in samples],
            "p95": [s["p95"] for s in samples] if samples and "p95" in samples[0] else None}


def cpu_series(label, samples):
    """The server's CPU per transaction of a side's runs (µs; runs /proc could not measure left out)."""
    return {"label": label, "values": [s["cpu"] for s in samples if s.get("cpu") is not None],
            "p95": None}


def row(rid, op, unit, ours, base, goal=None, note=None):
    """unit: 'TPS' (higher is better), 'ms', 'MB', 'µs' or 'kinstr' (lower is better). goal: ('>=', 0.9) etc.,
    on the ratio of medians ours / base."""
    return {"id": rid, "op": op, "unit": unit, "ours": ours, "base": base, "goal": goal, "note": note}


CASES = []


def case(name, title, needs=()):
    def deco(fn):
        CASES.append({"name": name, "title": title, "needs": needs, "fn": fn})
        return fn
    return deco


# ---------------------------------------------------------------------------------------------
# Data set-up
# ---------------------------------------------------------------------------------------------

STATE = {}


def create_app_role():
    sql("postgres", f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
    CREATE ROLE {APP_ROLE} LOGIN;
  END IF;
END $$;""")


def bare_schema_sql(with_redemption=True):
    """The baseline schema: the same table shapes, indexes, foreign keys and storage parameters
    (LIKE ... INCLUDING ALL does not copy fillfactor, which decides whether counter updates can
    stay HOT), without RLS, triggers or any extension logic."""
    return """
CREATE SCHEMA bare;
CREATE TABLE bare.campaign (LIKE voucher.campaign INCLUDING ALL);
CREATE TABLE bare.code (LIKE voucher.code INCLUDING ALL);
ALTER TABLE bare.code ADD FOREIGN KEY (tenant_id, campaign_id) REFERENCES bare.campaign;
""" + ("""CREATE TABLE bare.redemption (LIKE voucher.redemption INCLUDING ALL);
ALTER TABLE bare.redemption ADD FOREIGN KEY (tenant_id, voucher_id) REFERENCES bare.code;
""" if with_redemption else "") + """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname, c.reloptions FROM pg_class c
              WHERE c.relnamespace = 'voucher'::regnamespace AND c.reloptions IS NOT NULL
                AND c.relname IN (SELECT relname FROM pg_class WHERE relnamespace = 'bare'::regnamespace) LOOP
        EXECUTE format('ALTER TABLE bare.%I SET (%s)', r.relname, array_to_string(r.reloptions, ', '));
    END LOOP;
END $$;
"""


CREATED = set()


def bench_sql(name):
    """The text of bench/sql/NAME."""
    with open(os.path.join(HERE, "sql", name)) as f:
        return f.read()


def fresh_db(db):
    """A new database with the extension. main() creates them all at the start: CREATE EXTENSION
    reads the SQL script installed at that moment, which must match the library the cluster
    loaded at its start (a concurrent install could replace the script later)."""
    if db in CREATED:
        return
    sql("postgres", f"SET client_min_messages = warning;\nDROP DATABASE IF EXISTS {db};\nCREATE DATABASE {db};")
    sql(db, "SET client_min_messages = warning;\nCREATE EXTENSION voucher_ext;")
    CREATED.add(db)


def setup_main():
    """voucher_bench: tenant 'bench' with an admin key (table bench_key), campaigns 'single-use'
    (limit 1) and 'hot' (no limit), vouchers S1..S100000 and HOT; schema bare with the same
    rows and the floor functions (bench/sql/floor.sql); the login role bench_app
    (voucher_client + rights on bare) that pgbench uses."""
    t0 = time.time()
    log(f"setting up {MAIN_DB}: tenant, key, campaigns, {POOL:,} single-use vouchers, schema bare")
    fresh_db(MAIN_DB)
    create_app_role()
    sql(MAIN_DB, f"""
SET client_min_messages = warning;
CREATE TABLE bench_key (tenant uuid NOT NULL, key text NOT NULL, single uuid, hot uuid, shop uuid);
DO $$
DECLARE t uuid; k text;
BEGIN
    t := voucher.create_tenant('bench');
    k := voucher.create_api_key('admin', tenant => t);
    PERFORM voucher.authenticate(k);
    INSERT INTO bench_key VALUES (t, k, voucher.create_campaign('bench single-use', redemption_limit => 1),
                                  voucher.create_campaign('bench hot', redemption_limit => NULL),
                                  voucher.create_campaign('bench shop', discount_type => 'percent',
                                                          discount_value => 10, currency => 'EUR',
                                                          redemption_limit => 1));
    -- the shop's known customers, created through the API (whatever the customer table stores)
    PERFORM voucher.upsert_customer('cust-' || n) FROM generate_series(1, {CUSTOMERS}) n;
END $$;
CREATE TABLE bench_customer_base AS SELECT customer_id FROM voucher.customer;
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code)
SELECT k.tenant, voucher._uuid_v7(), k.single, 'S' || n FROM bench_key k, generate_series(1, {POOL}) n;
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code)
SELECT k.tenant, voucher._uuid_v7(), k.hot, 'HOT' FROM bench_key k;
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code)
SELECT k.tenant, voucher._uuid_v7(), k.shop, 'P' || n FROM bench_key k, generate_series(1, {POOL}) n;
{bare_schema_sql()}
INSERT INTO bare.campaign SELECT * FROM voucher.campaign;
INSERT INTO bare.code SELECT * FROM voucher.code;
{bench_sql('floor.sql')}
{bench_sql('peer.sql')}
INSERT INTO peer.campaign SELECT * FROM voucher.campaign;
INSERT INTO peer.code SELECT * FROM voucher.code;
INSERT INTO peer.customer (tenant_id, customer_id, source_id)
SELECT k.tenant, gen_random_uuid(), 'cust-' || n FROM bench_key k, generate_series(1, {CUSTOMERS}) n;
ALTER FUNCTION peer.validate(uuid, text, text, numeric) OWNER TO {APP_ROLE};
ALTER FUNCTION peer.redeem(uuid, text, text, numeric, numeric, text, text, jsonb) OWNER TO {APP_ROLE};
GRANT USAGE ON SCHEMA peer TO {APP_ROLE};
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA peer TO {APP_ROLE};
GRANT USAGE, SELECT ON SEQUENCE peer.audit_event_id_seq TO {APP_ROLE};
CREATE SEQUENCE bench_seq_peer;
ALTER FUNCTION bare.validate(uuid, text) OWNER TO {APP_ROLE};
ALTER FUNCTION bare.redeem(uuid, text, integer) OWNER TO {APP_ROLE};
GRANT USAGE, SELECT ON SEQUENCE bare.audit_event_id_seq TO {APP_ROLE};
CREATE SEQUENCE bench_seq_ours;
CREATE SEQUENCE bench_seq_bare;
CREATE SEQUENCE bench_seq_mt;
GRANT voucher_client TO {APP_ROLE};
GRANT USAGE ON SCHEMA bare TO {APP_ROLE};
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA bare TO {APP_ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
VACUUM ANALYZE;
CHECKPOINT;
""")
    tenant, key, single, hot = scalar(MAIN_DB, "SELECT tenant, key, single, hot FROM bench_key").split("|")
    STATE["main"] = {"tenant": tenant, "key": key, "single": single, "vouchers": POOL, "shop_vouchers": POOL}
    log(f"  done in {time.time() - t0:.0f} s")


def setup_tenants():
    """1,000 tenants, each with an admin key, a campaign and 100 codes M<n> (n % 1000 = i), and one
    tenant 'mono' holding all 100,000 codes M1..M100000; key tables bench_mt_key / bench_mono_key."""
    t0 = time.time()
    log(f"setting up {TENANTS:,} tenants x {PER_TENANT} vouchers, and one tenant with all of them")
    total = TENANTS * PER_TENANT
    sql(MAIN_DB, f"""
SET client_min_messages = warning;
CREATE TABLE bench_mt_key (i integer PRIMARY KEY, tenant uuid NOT NULL, key text NOT NULL, campaign uuid NOT NULL);
CREATE TABLE bench_mono_key (i integer PRIMARY KEY, tenant uuid NOT NULL, key text NOT NULL, campaign uuid NOT NULL);
DO $$
DECLARE t uuid; k text; c uuid;
BEGIN
    FOR i IN 0..{TENANTS - 1} LOOP
        t := voucher.create_tenant('bench tenant ' || i);
        k := voucher.create_api_key('admin', tenant => t);
        PERFORM voucher.authenticate(k);
        INSERT INTO bench_mt_key VALUES (i, t, k, voucher.create_campaign('bench multi-tenant'));
    END LOOP;
    t := voucher.create_tenant('bench mono');
    k := voucher.create_api_key('admin', tenant => t);
    PERFORM voucher.authenticate(k);
    c := voucher.create_campaign('bench mono');
    INSERT INTO bench_mono_key SELECT i, t, k, c FROM generate_series(0, {TENANTS - 1}) i;
END $$;
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code)
SELECT k.tenant, voucher._uuid_v7(), k.campaign, 'M' || n
  FROM generate_series(1, {total}) n JOIN bench_mt_key k ON k.i = n % {TENANTS};
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code)
SELECT k.tenant, voucher._uuid_v7(), k.campaign, 'M' || n
  FROM generate_series(1, {total}) n JOIN bench_mono_key k ON k.i = 0;
GRANT SELECT ON bench_mt_key, bench_mono_key TO {APP_ROLE};
VACUUM ANALYZE;
CHECKPOINT;
""")
    STATE["tenants"] = True
    log(f"  done in {time.time() - t0:.0f} s")


def setup_gen():
    """voucher_gen: a tenant whose code table is emptied before every run, the PL/pgSQL
    generators, and bare.campaign / bare.code (no redemptions) for the PL/pgSQL inserts."""
    log(f"setting up {GEN_DB}")
    fresh_db(GEN_DB)
    sql(GEN_DB, f"""
SET client_min_messages = warning;
CREATE TABLE bench_key (tenant uuid NOT NULL, key text NOT NULL, campaign uuid);
DO $$
DECLARE t uuid; k text;
BEGIN
    t := voucher.create_tenant('bench gen');
    k := voucher.create_api_key('admin', tenant => t);
    PERFORM voucher.authenticate(k);
    INSERT INTO bench_key VALUES (t, k, voucher.create_campaign('plpgsql baseline'));
END $$;
{bare_schema_sql(with_redemption=False)}
INSERT INTO bare.campaign SELECT * FROM voucher.campaign;
{bench_sql('plpgsql_generator.sql')}
-- the do-it-yourself code table a user compares generate_codes with (issue 17)
CREATE TABLE bench_plain_code (tenant_id uuid, id bigserial, code text, campaign uuid,
                               PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, code));
""")
    tenant, key, campaign = scalar(GEN_DB, "SELECT tenant, key, campaign FROM bench_key").split("|")
    STATE["gen"] = {"tenant": tenant, "key": key, "campaign": campaign}


FIXTURES = {"main": setup_main, "tenants": setup_tenants, "gen": setup_gen}


def need(*names):
    for n in names:
        if n not in STATE:
            FIXTURES[n]()


# Extra SQL run by every reset (in session_replication_role = replica, so the audit log's own
# append-only and direct-DML triggers stay quiet): what redemptions append to besides
# voucher.redemption. Each redemption writes one audit row.
RESET_EXTRA = [
    "TRUNCATE voucher.audit_event, voucher.audit_chain;",
]


def reset_main(_side=None):
    """Before every redemption run, for both sides alike: no redemptions, every counter at 0,
    sequences restarted, VACUUM ANALYZE, CHECKPOINT."""
    sql(MAIN_DB, """
SET client_min_messages = warning;
SET session_replication_role = replica;
TRUNCATE voucher.redemption, voucher.customer_usage, voucher.code_use, bare.redemption, bare.audit_event;
TRUNCATE peer.redemption, peer.customer_usage, peer.audit_event;
UPDATE voucher.code SET redeemed_count = 0 WHERE redeemed_count <> 0;
UPDATE bare.code SET redeemed_count = 0 WHERE redeemed_count <> 0;
UPDATE peer.code SET redeemed_count = 0 WHERE redeemed_count <> 0;
-- the new customers the shop workload created
DELETE FROM voucher.customer c WHERE NOT EXISTS (SELECT FROM bench_customer_base b WHERE b.customer_id = c.customer_id);
DELETE FROM peer.customer WHERE source_id LIKE 'new-%';
""" + "\n".join(RESET_EXTRA) + """
SELECT setval(s, 1, false) FROM unnest(ARRAY['bench_seq_ours', 'bench_seq_bare', 'bench_seq_mt', 'bench_seq_peer']) s;
RESET session_replication_role;
VACUUM ANALYZE voucher.code, voucher.redemption, voucher.customer, bare.code, bare.redemption,
               peer.code, peer.redemption, peer.customer;
CHECKPOINT;
""")


def seq_used(seq):
    last, called = scalar(MAIN_DB, f"SELECT last_value, is_called FROM {seq}").split("|")
    return int(last) if called == "t" else 0


# How our uses of the HOT voucher are counted: through the view, whatever keeps the counter.
HOT_COUNT = "SELECT redeemed_count FROM voucher.vouchers WHERE code = 'HOT'"


def check_redemptions(s, table, seq=None, pool=None):
    """No silent no-ops: every pgbench transaction left exactly one redemption."""
    got = int(scalar(MAIN_DB, f"SELECT count(*) FROM {table}"))
    if got != s["tx"]:
        raise Failure(f"{table}: {got:,} redemptions after {s['tx']:,} transactions")
    if seq:
        used = seq_used(seq)
        if used != s["tx"]:
            raise Failure(f"{seq}: {used:,} vouchers handed out for {s['tx']:,} transactions")
        if pool and used > pool:
            raise Failure(f"ran out of vouchers: {used:,} > {pool:,}")
    return s


# ---------------------------------------------------------------------------------------------
# The sides (one run each)
# ---------------------------------------------------------------------------------------------

def redeem_side(kind, clients=CLIENTS, sync_commit=True, stride=1, n=None):
    """kind: ours (session auth), pertx (per-transaction auth, one request), bare, floor (the
    bare statements plus an audit row, through a function: bench/sql/floor.sql)."""
    m = STATE["main"]
    n = n or POOL
    if kind in ("bare", "floor"):
        script = render_script(f"redeem_{kind}", SEQ="bench_seq_bare", TENANT=m["tenant"], STRIDE=stride, N=n)
        table, seq = "bare.redemption", "bench_seq_bare"
    else:
        script = render_script("redeem_ours" if kind == "ours" else "redeem_ours_pertx",
                               SEQ="bench_seq_ours", KEY=m["key"], STRIDE=stride, N=n)
        table, seq = "voucher.redemption", "bench_seq_ours"

    def run():
        s = check_redemptions(pgbench(MAIN_DB, script, clients=clients, sync_commit=sync_commit,
                                      seconds=None if sync_commit else POOL_ASYNC_SECONDS), table, seq, n)
        return check_audit(s, "bare.audit_event") if kind == "floor" else s
    return run


def check_audit(s, table, db=MAIN_DB):
    """One audit row per transaction in `table` (ours, the peer's, the floors'; the driver resets
    every log before each run)."""
    got = int(scalar(db, f"SELECT count(*) FROM {table}"))
    if got != s["tx"]:
        raise Failure(f"{table}: {got:,} audit rows after {s['tx']:,} transactions")
    return s


IDEM = ", idempotency_key => 'idem-' || :n"
# The schema of each side of the shop rows: its redemption and audit tables.
SHOP_SCHEMA = {"ours": "voucher", "peer": "peer", "bare": "bare", "floor": "bare"}


def check_customers_named(schema, n):
    """Every one of the n redemptions in the side's table names its customer."""
    named = int(scalar(MAIN_DB, f"SELECT count(customer_id) FROM {schema}.redemption"))
    if named != n:
        raise Failure(f"{schema}.redemption: {named:,} of {n:,} with a customer")


def check_keys_recorded(schema, n):
    """Every one of the n redemptions in the side's table carries its own idempotency key."""
    keyed = int(scalar(MAIN_DB, f"SELECT count(DISTINCT idempotency_key) FROM {schema}.redemption"))
    if keyed != n:
        raise Failure(f"{schema}.redemption: {keyed:,} of {n:,} with their idempotency key")


def shop_side(kind, idem=False, clients=CLIENTS, sync_commit=True, stride=1, n=None):
    """The shop-shaped redemption (issue 17). kind: ours (voucher.redeem, session auth), peer
    (the PL/pgSQL peer, bench/sql/peer.sql), bare (UPDATE+INSERT). idem: an idempotency key per
    call (ours and peer)."""
    m = STATE["main"]
    n = n or POOL
    seq = {"ours": "bench_seq_ours", "peer": "bench_seq_peer", "bare": "bench_seq_bare",
           "floor": "bench_seq_bare"}[kind]
    script = render_script(f"shop_{kind}", SEQ=seq, KEY=m["key"], TENANT=m["tenant"], STRIDE=stride, N=n,
                           IDEM=IDEM if idem else "")
    schema = SHOP_SCHEMA[kind]

    def run():
        s = check_redemptions(pgbench(MAIN_DB, script, clients=clients, sync_commit=sync_commit,
                                      seconds=None if sync_commit else POOL_ASYNC_SECONDS),
                              f"{schema}.redemption", seq, n)
        if kind == "floor":
            return check_audit(s, "bare.audit_event")
        if kind != "bare":
            check_audit(s, f"{schema}.audit_event")
            check_customers_named(schema, s["tx"])
            if idem:
                check_keys_recorded(schema, s["tx"])
        return s
    return run


def hot_side(kind, sync_commit=True):
    m = STATE["main"]
    if kind in ("bare", "floor"):
        script, table = render_script(f"hot_{kind}", TENANT=m["tenant"]), "bare.redemption"
    elif kind == "peer":
        script, table = render_script("hot_peer", TENANT=m["tenant"]), "peer.redemption"
    else:
        script, table = render_script("hot_ours", KEY=m["key"]), "voucher.redemption"

    def run():
        s = check_redemptions(pgbench(MAIN_DB, script, sync_commit=sync_commit), table)
        if kind == "floor":
            check_audit(s, "bare.audit_event")
        schema = table.split(".")[0]
        count = int(scalar(MAIN_DB, f"SELECT voucher.authenticate('{m['key']}', true) IS NOT NULL;\n{HOT_COUNT}"
                           if schema == "voucher" else f"SELECT redeemed_count FROM {schema}.code WHERE code = 'HOT'"))
        if count != s["tx"]:
            raise Failure(f"{schema} HOT redeemed_count {count:,} after {s['tx']:,} transactions")
        return s
    return run


# ---------------------------------------------------------------------------------------------
# The cases, in the order they run
# ---------------------------------------------------------------------------------------------

def fmt_count(n):
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


@case("codes", "1-2. preview_codes and generate_codes vs generate_series, PL/pgSQL and COPY", needs=("gen",))
def case_codes():
    g = STATE["gen"]
    N = GEN_COUNT
    nn = fmt_count(N)
    copy_file = os.path.join(PGI.host, "bench_generated.copy")
    plain_file = os.path.join(PGI.host, "bench_generated_plain.copy")

    # 1. Generating codes only (nothing stored).
    log(f"  preview_codes({nn}) vs generate_series vs PL/pgSQL generator")
    pure = alternate({
        "preview_codes": lambda: oneshot(GEN_DB, "", [f"SELECT count(*) FROM voucher.preview_codes({N});"]),
        "generate_series": lambda: oneshot(GEN_DB, "", [f"SELECT count(*) FROM generate_series(1, {N});"]),
        "plpgsql": lambda: oneshot(GEN_DB, "", [f"SELECT count(*) FROM bench_plpgsql_codes({N});"]),
    })

    # 2. Generating and storing codes: generate_codes vs COPY of the same rows vs PL/pgSQL.
    def empty_tables(_side):
        sql(GEN_DB, "SET client_min_messages = warning;\nSET session_replication_role = replica;\n"
                    "TRUNCATE voucher.code, voucher.redemption CASCADE;\nTRUNCATE bare.code;\nTRUNCATE bench_plain_code RESTART IDENTITY;\n"
                    + "\n".join(RESET_EXTRA) + "\nCHECKPOINT;")

    def generate():
        s = oneshot(GEN_DB,
                    f"BEGIN;\nSELECT voucher.authenticate('{g['key']}') IS NOT NULL;\n"
                    f"SELECT voucher.create_campaign('generated') AS campaign \\gset\n",
                    [f"SELECT voucher.generate_codes(:'campaign', {N});", "COMMIT;"],
                    # the rows COPY loads in its runs: exactly what this run generated
                    f"COPY (SELECT tenant_id, voucher_id, campaign_id, code, display, balance FROM voucher.code "
                    f"WHERE campaign_id = :'campaign') TO '{copy_file}';\n"
                    f"COPY (SELECT tenant_id, code, campaign_id FROM voucher.code "
                    f"WHERE campaign_id = :'campaign') TO '{plain_file}';",
                    monitor=True)
        if f"\n{N}\n" not in "\n" + s["out"]:
            raise Failure(f"generate_codes did not report {N} codes:\n{s['out'][-500:]}")
        return s

    def copy():
        s = oneshot(GEN_DB, "", [f"COPY voucher.code (tenant_id, voucher_id, campaign_id, code, display, balance) "
                                 f"FROM '{copy_file}';"], monitor=True)
        got = int(scalar(GEN_DB, "SELECT count(*) FROM voucher.code"))
        if got != N:
            raise Failure(f"COPY loaded {got} rows, not {N}")
        return s

    def copy_plain():
        s = oneshot(GEN_DB, "", [f"COPY bench_plain_code (tenant_id, code, campaign) FROM '{plain_file}';"],
                    monitor=True)
        got = int(scalar(GEN_DB, "SELECT count(*) FROM bench_plain_code"))
        if got != N:
            raise Failure(f"COPY into the plain table loaded {got} rows, not {N}")
        return s

    def plpgsql():
        s = oneshot(GEN_DB, "", [f"SELECT bench_plpgsql_generate('{g['tenant']}', '{g['campaign']}', {N});"])
        got = int(scalar(GEN_DB, "SELECT count(DISTINCT code) FROM bare.code"))
        if got != N:
            raise Failure(f"the PL/pgSQL generator stored {got} codes, not {N}")
        return s

    log(f"  generate_codes({nn}) vs COPY of the same rows vs PL/pgSQL generator inserting")
    generate()            # untimed: warms up and writes the first COPY file
    stored = alternate({"generate_codes": generate, "COPY": copy, "COPY plain": copy_plain,
                        "plpgsql_insert": plpgsql},
                       before=empty_tables)
    empty_tables(None)

    # 2d. The same into a tenant that already holds many codes of the same shape (a shop's
    # earlier campaigns), vs COPY into the plain table already holding the same codes.
    M, G = GROWN_EXISTING, GROWN_COUNT
    mm, gg = fmt_count(M), fmt_count(G)
    log(f"  generate_codes({gg}) into a tenant holding {mm} codes vs COPY into the plain table holding them")
    sql(GEN_DB, f"""
SET client_min_messages = warning;
SELECT voucher.authenticate('{g['key']}', true) IS NOT NULL;
CREATE TEMP TABLE grown_campaign AS SELECT voucher.create_campaign('earlier campaigns') AS id;
-- M distinct codes of the generated shape (8 characters of the unambiguous alphabet): n * 1000003
-- walks the 31^8 codes without repeating (1000003 is prime to 31); the plain table gets the same
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code)
SELECT '{g['tenant']}', voucher._uuid_v7(), c.id, {GROWN_CODE}
  FROM grown_campaign c, generate_series(1, {M}) n;
INSERT INTO bench_plain_code (tenant_id, code, campaign)
SELECT tenant_id, code, campaign_id FROM voucher.code;
""")
    grown = scalar(GEN_DB, "SELECT campaign_id FROM voucher.code LIMIT 1")
    sql(GEN_DB, "VACUUM ANALYZE voucher.code, bench_plain_code;")

    def back_to_grown(_side):
        sql(GEN_DB, "SET client_min_messages = warning;\nSET session_replication_role = replica;\n"
                    f"DELETE FROM voucher.code WHERE campaign_id <> '{grown}';\n"
                    f"DELETE FROM bench_plain_code WHERE campaign <> '{grown}';\n"
                    + "\n".join(RESET_EXTRA) + "\nRESET session_replication_role;\n"
                    "VACUUM voucher.code, bench_plain_code;\nCHECKPOINT;")

    def generate_grown():
        s = oneshot(GEN_DB,
                    f"BEGIN;\nSELECT voucher.authenticate('{g['key']}') IS NOT NULL;\n"
                    f"SELECT voucher.create_campaign('generated') AS campaign \\gset\n",
                    [f"SELECT voucher.generate_codes(:'campaign', {G});", "COMMIT;"],
                    f"COPY (SELECT tenant_id, code, campaign_id FROM voucher.code "
                    f"WHERE campaign_id = :'campaign') TO '{plain_file}';")
        if f"\n{G}\n" not in "\n" + s["out"]:
            raise Failure(f"generate_codes did not report {G} codes:\n{s['out'][-500:]}")
        return s

    def copy_plain_grown():
        s = oneshot(GEN_DB, "", [f"COPY bench_plain_code (tenant_id, code, campaign) FROM '{plain_file}';"])
        got = int(scalar(GEN_DB, "SELECT count(*) FROM bench_plain_code"))
        if got != M + G:
            raise Failure(f"the plain table holds {got} codes, not {M + G}")
        return s

    generate_grown()      # untimed: warms up and writes the first COPY file
    grown_runs = alternate({"generate_codes": generate_grown, "COPY plain": copy_plain_grown},
                           before=back_to_grown)
    empty_tables(None)
    for f in (copy_file, plain_file):
        if os.path.exists(f):
            os.remove(f)
    return [
        row("1a", f"`preview_codes({nn})` vs `generate_series(1, {nn})`, count(*)", "ms",
            series("preview_codes", pure["preview_codes"]), series("generate_series", pure["generate_series"]),
            goal=("<=", 5.0)),
        row("1b", f"`preview_codes({nn})` vs PL/pgSQL generator (random(), retry on a temp table)", "ms",
            series("preview_codes", pure["preview_codes"]), series("PL/pgSQL", pure["plpgsql"])),
        row("1c", f"`generate_codes(campaign, {nn})` vs PL/pgSQL generator inserting into bare.code", "ms",
            series("generate_codes", stored["generate_codes"]), series("PL/pgSQL insert", stored["plpgsql_insert"]),
            goal=("<=", 0.2), note="goal: generate_codes at least 5x faster, i.e. time ratio <= 0.20"),
        row("2a", f"`generate_codes(campaign, {nn})` (incl. COMMIT) vs COPY FROM of the same rows", "ms",
            series("generate_codes", stored["generate_codes"]), series("COPY", stored["COPY"]),
            goal=("<=", 1.25)),
        row("2c", f"`generate_codes(campaign, {nn})` (incl. COMMIT) vs COPY of the same codes into a plain table "
            "`(tenant_id, id bigserial, code, campaign)`, PK (tenant_id, id), UNIQUE (tenant_id, code)", "ms",
            series("generate_codes", stored["generate_codes"]), series("COPY plain", stored["COPY plain"]),
            goal=("<=", 2.0)),
        row("2d", f"`generate_codes(campaign, {gg})` (incl. COMMIT) into a tenant already holding {mm} codes of the "
            f"same shape vs COPY of the same codes into the plain table (2c) already holding the same {mm}", "ms",
            series("generate_codes", grown_runs["generate_codes"]), series("COPY plain", grown_runs["COPY plain"]),
            goal=("<=", 2.0)),
        row("2b", f"peak private memory (RssAnon) of the backend: generate_codes({nn}) vs COPY", "MB",
            series("generate_codes", stored["generate_codes"], "rss"), series("COPY", stored["COPY"], "rss"),
            note="VmHWM (includes the shared buffers the backend touched): generate_codes "
                 f"{statistics.median(s['hwm'] for s in stored['generate_codes']):.0f} MB, COPY "
                 f"{statistics.median(s['hwm'] for s in stored['COPY']):.0f} MB (medians)"),
    ]


FLOOR_NOTE = ("floor rows (3f, 4f, 5f): the baseline's own statements in the shape the product must have "
              "(an API function owned by another role; for redemptions the audit row in the same transaction), "
              "nothing else: no RLS, no tenant context, no key check, no rules (bench/sql/floor.sql). "
              "Their ratio bounds what any implementation of that shape running the same statements can reach")


@case("validate", "3. validate vs the bare indexed SELECT", needs=("main",))
def case_validate():
    m = STATE["main"]
    ours = render_script("validate_ours", KEY=m["key"], N=POOL)
    bare = render_script("validate_bare", TENANT=m["tenant"], N=POOL)
    floor = render_script("validate_floor", TENANT=m["tenant"], N=POOL)
    r = alternate({"validate": lambda: pgbench(MAIN_DB, ours), "bare": lambda: pgbench(MAIN_DB, bare),
                   "floor": lambda: pgbench(MAIN_DB, floor)},
                  before=reset_main)
    return [row("3", f"`validate('S' || random)` vs indexed SELECT code JOIN campaign, {CLIENTS} clients", "TPS",
                series("validate", r["validate"]), series("bare SELECT", r["bare"]), goal=(">=", 0.9)),
            row("3f", "floor: the same SELECT through a PL/pgSQL SECURITY DEFINER function, vs the bare SELECT",
                "TPS", series("function(SELECT)", r["floor"]), series("bare SELECT", r["bare"]),
                note=FLOOR_NOTE),
            row("3g", "`validate` vs that function", "TPS",
                series("validate", r["validate"]), series("function(SELECT)", r["floor"]))]


@case("redeem", "4. redeem single-use vouchers vs UPDATE+INSERT; per-transaction authentication", needs=("main",))
def case_redeem():
    r = alternate({"ours": redeem_side("ours"), "bare": redeem_side("bare"), "pertx": redeem_side("pertx"),
                   "floor": redeem_side("floor")},
                  before=reset_main)
    return [
        row("4a", f"`redeem('S' || n)`, {POOL // 1000}k single-use vouchers, {CLIENTS} clients, session auth, "
            "vs bare UPDATE+INSERT", "TPS", series("redeem", r["ours"]), series("bare", r["bare"]),
            goal=(">=", 0.85)),
        row("4b", "same, per-transaction auth: `authenticate(key)` + `redeem` in one request, vs bare", "TPS",
            series("auth+redeem", r["pertx"]), series("bare", r["bare"])),
        row("4f", "floor: bare UPDATE+INSERT plus an audit row, through a PL/pgSQL SECURITY DEFINER function, "
            "vs bare", "TPS", series("function(+audit)", r["floor"]), series("bare", r["bare"]),
            note="a floor row, as 3f"),
        row("4g", "`redeem` vs that function", "TPS", series("redeem", r["ours"]),
            series("function(+audit)", r["floor"])),
    ]


SHOP = (f"{POOL // 1000}k single-use 10 %-off vouchers, {CLIENTS} clients, a customer per call "
        f"({CUSTOMERS:,} known + 10 % new), order_amount and order_id")


@case("shop", "P. shop-shaped redeem vs the PL/pgSQL peer and the bare UPDATE+INSERT, with and without "
              "an idempotency key", needs=("main",))
def case_shop():
    r = alternate({"ours": shop_side("ours"), "peer": shop_side("peer"), "bare": shop_side("bare"),
                   "floor": shop_side("floor"),
                   "ours idem": shop_side("ours", idem=True), "peer idem": shop_side("peer", idem=True)},
                  before=reset_main)
    return [
        row("P1", f"shop `redeem(code, customer, order_amount, order_id)`: {SHOP}; vs the PL/pgSQL peer",
            "TPS", series("redeem", r["ours"]), series("PL/pgSQL peer", r["peer"]), goal=(">=", 1.5),
            note="the peer: bench/sql/peer.sql, the same contract in SECURITY DEFINER PL/pgSQL "
                 "(same tables' shape and rules, SHA-256 audit row; no RLS, no HMAC, no key check)"),
        row("P2", "P1's `redeem` vs the bare UPDATE+INSERT (with the order's columns)", "TPS",
            series("redeem", r["ours"]), series("bare", r["bare"]), goal=(">=", 0.6)),
        row("P3", "P1 with an idempotency key per call, vs the peer with the same keys", "TPS",
            series("redeem+key", r["ours idem"]), series("peer+key", r["peer idem"]), goal=(">=", 1.5)),
        row("P4", "P3's `redeem` with a key vs the bare UPDATE+INSERT", "TPS",
            series("redeem+key", r["ours idem"]), series("bare", r["bare"]), goal=(">=", 0.6)),
        row("P5", "the PL/pgSQL peer vs the bare UPDATE+INSERT (what the peer itself reaches)", "TPS",
            series("PL/pgSQL peer", r["peer"]), series("bare", r["bare"])),
        row("Pf", "floor: the bare shop UPDATE+INSERT plus the audit row, through a PL/pgSQL SECURITY DEFINER "
            "function, vs bare", "TPS", series("function(+audit)", r["floor"]), series("bare", r["bare"]),
            note="the shape every implementation of the contract has (a function, the audit row in the same "
                 "transaction) and nothing else: no customer, RLS, context, key check, rules or HMAC "
                 "(bench/sql/floor.sql). P1's goal (1.5x the peer) is P5 x 1.5 of bare: compare it with this "
                 "ratio"),
        row("Pg", "P1's `redeem` vs that floor function", "TPS",
            series("redeem", r["ours"]), series("function(+audit)", r["floor"])),
        row("P1c", "server CPU per transaction (backends' user + system time, from the postmaster's "
            "counters of exited children): P1's `redeem` vs the peer", "µs",
            cpu_series("redeem", r["ours"]), cpu_series("PL/pgSQL peer", r["peer"]),
            note="what the shared host's load does not change: P1's goal (1.5x the peer's TPS on a "
                 "CPU-bound machine) is a CPU ratio of about 0.67x"),
        row("P2c", "server CPU per transaction: P1's `redeem` vs the bare UPDATE+INSERT", "µs",
            cpu_series("redeem", r["ours"]), cpu_series("bare", r["bare"])),
        row("Pfc", "server CPU per transaction: the floor function vs the bare UPDATE+INSERT", "µs",
            cpu_series("function(+audit)", r["floor"]), cpu_series("bare", r["bare"])),
    ]


# Instructions per call, counted by callgrind in a single-user backend: what the shared host's
# load cannot change (TPS swings by a third between runs of one side here, and CPU time with it).
INSTR_CALLS = (100, 500) if QUICK else (200, 1200)


def as_postgres(cmd):
    """cmd run as the cluster's owner (postgres) when we are root, as scripts/cluster.sh does."""
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def instr_script(kind, calls, idem=False):
    """SQL for a single-user backend, one statement per line: P1's workload as `calls` prepared
    calls of `kind` (ours, peer, floor, bare), as the benchmark's login role. The same calls for
    every side (a fixed seed): vouchers P1.., a customer per call (1 in 10 new), an order amount
    and an order id; `idem` (ours, peer): P3's idempotency key per call too."""
    m = STATE["main"]
    key = ", idempotency_key => $5" if idem else ""
    prepare = {
        "ours": f"SELECT * FROM voucher.redeem($1, customer => $2, order_amount => $3, order_id => $4{key})",
        "peer": f"SELECT * FROM peer.redeem('{m['tenant']}', $1, customer => $2, order_amount => $3, "
                f"order_id => $4{key})",
        "floor": f"SELECT * FROM bare.shop_redeem('{m['tenant']}', $1, $3, $4)",
        "bare": "WITH v AS (UPDATE bare.code SET redeemed_count = redeemed_count + 1 "
                f"WHERE tenant_id = '{m['tenant']}' AND code = $1 AND active AND redeemed_count < 1 "
                "RETURNING tenant_id, voucher_id, campaign_id) "
                "INSERT INTO bare.redemption (tenant_id, redemption_id, voucher_id, campaign_id, order_id, "
                "order_amount, discount, redeemed_by) SELECT tenant_id, gen_random_uuid(), voucher_id, "
                "campaign_id, $4, $3, round($3 / 10, 2), 'bench' FROM v",
    }[kind]
    lines = [f"SET SESSION AUTHORIZATION {APP_ROLE}"]
    if kind == "ours":
        lines.append(f"SELECT voucher.authenticate('{m['key']}', true) IS NOT NULL AS ok")
    lines.append(f"PREPARE shop(text, text, numeric, text{', text' if idem else ''}) AS {prepare}")
    rnd = random.Random(17)
    for i in range(1, calls + 1):
        new = rnd.randint(1, 10) == 1
        customer = f"new-i{i}" if new else f"cust-{rnd.randint(1, CUSTOMERS)}"
        key = f", 'idem-{i}'" if idem else ""
        lines.append(f"EXECUTE shop('P{i}', '{customer}', {rnd.randint(2000, 20000) / 100:.2f}, 'order-{i}'{key})")
    path = os.path.join(WORK, f"instr-{kind}{'-idem' if idem else ''}-{calls}.sql")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def callgrind(script):
    """Instructions a single-user backend executes running `script` in MAIN_DB: the benchmark
    cluster is stopped for it and started again with its own options (pg_ctl restart reads
    postmaster.opts)."""
    data = scalar("postgres", "SHOW data_directory")
    pg_ctl = os.path.join(PGI.bindir, "pg_ctl")
    out_dir = tempfile.mkdtemp(prefix="voucher-callgrind-")
    os.chmod(out_dir, 0o777)
    out = os.path.join(out_dir, "callgrind.out")
    subprocess.run(as_postgres([pg_ctl, "-D", data, "-m", "fast", "-w", "stop"]), check=True,
                   capture_output=True)
    try:
        with open(script) as f:
            p = subprocess.run(as_postgres([
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                os.path.join(PGI.bindir, "postgres"), "--single", "-D", data,
                "-c", "shared_preload_libraries=voucher_ext", "-c", "voucher.seal_interval=0", MAIN_DB]),
                stdin=f, capture_output=True, text=True)
        errors = [line for line in (p.stdout + p.stderr).splitlines() if "ERROR" in line]
        if p.returncode != 0 or errors:
            raise Failure(f"callgrind of {os.path.basename(script)} failed (rc {p.returncode}): "
                          + " / ".join(errors[:3]))
        with open(out) as f:
            total = next((int(line.split()[1]) for line in f if line.startswith("totals:")), None)
        if total is None:
            raise Failure(f"callgrind of {os.path.basename(script)}: no totals in its output")
        return total
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        subprocess.run(as_postgres([pg_ctl, "-D", data, "-l", os.path.join(os.path.dirname(data), "server.log"),
                                    "-w", "restart"]), check=True, capture_output=True)
        POSTMASTER.pop("pid", None)  # a new postmaster: backends_cpu must find it again


def instr_side(kind, idem=False):
    """Thousands of instructions per call of `kind` (`idem`: with P3's idempotency keys): two runs
    of the same calls (n1 and n2 of INSTR_CALLS) from the same reset state; their difference over
    n2 - n1 leaves out the backend's start, the first calls' catalog and plan caching, and its
    end."""
    schema = SHOP_SCHEMA[kind]
    totals = []
    for calls in INSTR_CALLS:
        reset_main()
        totals.append(callgrind(instr_script(kind, calls, idem)))
        got = int(scalar(MAIN_DB, f"SELECT count(*) FROM {schema}.redemption"))
        if got != calls:
            raise Failure(f"{kind}: {got:,} redemptions after {calls:,} calls under callgrind")
        if kind in ("ours", "peer"):
            check_customers_named(schema, calls)
        if idem:
            check_keys_recorded(schema, calls)
    per_call = (totals[1] - totals[0]) / (INSTR_CALLS[1] - INSTR_CALLS[0]) / 1000
    log(f"    {kind}{' with keys' if idem else ''}: {per_call:,.1f}k instructions per call")
    return {"label": kind, "values": [per_call], "p95": None}


@case("instr", "I. instructions per shop redemption in one backend (callgrind): ours vs the peer, the floor "
               "and bare", needs=("main",))
def case_instr():
    if not shutil.which("valgrind"):
        raise Failure("valgrind is missing (scripts/bench.sh installs it)")
    s = {k: instr_side(k) for k in ("ours", "peer", "floor", "bare")}
    s["ours idem"], s["peer idem"] = instr_side("ours", idem=True), instr_side("peer", idem=True)
    n1, n2 = INSTR_CALLS
    how = (f"callgrind's count of every instruction a single-user backend executes, calls {n1 + 1}-{n2} of P1's "
           "workload (a fixed seed: the same vouchers, customers, 1 in 10 new, amounts and order ids for every "
           "side), each a prepared statement run as the benchmark's login role; one run per side: the count "
           "does not depend on the machine's load. No client protocol, no concurrency: what the single-user "
           "backend leaves out (commit waits, lock and buffer contention) the CPU rows P1c, P2c measure")
    return [
        row("P1i", "instructions per shop redemption (thousands, one backend): P1's `redeem` vs the PL/pgSQL peer",
            "kinstr", dict(s["ours"], label="redeem"), dict(s["peer"], label="PL/pgSQL peer"), note=how),
        row("P2i", "instructions per shop redemption: P1's `redeem` vs the bare UPDATE+INSERT", "kinstr",
            dict(s["ours"], label="redeem"), dict(s["bare"], label="bare")),
        row("Pfi", "instructions per shop redemption: the floor function vs the bare UPDATE+INSERT", "kinstr",
            dict(s["floor"], label="function(+audit)"), dict(s["bare"], label="bare")),
        row("Pgi", "instructions per shop redemption: P1's `redeem` vs the floor function", "kinstr",
            dict(s["ours"], label="redeem"), dict(s["floor"], label="function(+audit)")),
        row("P3i", "instructions per shop redemption with an idempotency key: P3's `redeem` vs the peer "
            "with the same keys", "kinstr",
            dict(s["ours idem"], label="redeem+key"), dict(s["peer idem"], label="peer+key")),
        row("P4i", "instructions per shop redemption: P3's `redeem` with a key vs the bare UPDATE+INSERT",
            "kinstr", dict(s["ours idem"], label="redeem+key"), dict(s["bare"], label="bare")),
    ]


@case("shopasync", "P with synchronous_commit = off: the CPU cost once nobody waits for the WAL flush",
      needs=("main",))
def case_shop_async():
    r = alternate({"ours": shop_side("ours", sync_commit=False), "peer": shop_side("peer", sync_commit=False),
                   "bare": shop_side("bare", sync_commit=False),
                   "ours idem": shop_side("ours", idem=True, sync_commit=False),
                   "peer idem": shop_side("peer", idem=True, sync_commit=False)},
                  before=reset_main)
    return [
        row("P1a", "P1 with synchronous_commit = off, vs the peer", "TPS",
            series("redeem", r["ours"]), series("PL/pgSQL peer", r["peer"]), goal=(">=", 1.5)),
        row("P2a", "P2 with synchronous_commit = off, vs bare", "TPS",
            series("redeem", r["ours"]), series("bare", r["bare"]), goal=(">=", 0.6)),
        row("P3a", "P3 (idempotency key) with synchronous_commit = off, vs the peer", "TPS",
            series("redeem+key", r["ours idem"]), series("peer+key", r["peer idem"]), goal=(">=", 1.5)),
        row("P4a", "P4 with synchronous_commit = off, vs bare", "TPS",
            series("redeem+key", r["ours idem"]), series("bare", r["bare"]), goal=(">=", 0.6)),
    ]


@case("shopval", "V. validate with a customer and an order vs the bare indexed SELECT and the peer",
      needs=("main",))
def case_shop_validate():
    m = STATE["main"]
    ours = render_script("shop_validate_ours", KEY=m["key"], N=POOL)
    peer = render_script("shop_validate_peer", TENANT=m["tenant"], N=POOL)
    bare = render_script("shop_validate_bare", TENANT=m["tenant"], N=POOL)
    r = alternate({"ours": lambda: pgbench(MAIN_DB, ours), "bare": lambda: pgbench(MAIN_DB, bare),
                   "peer": lambda: pgbench(MAIN_DB, peer)}, before=reset_main)
    return [row("V1", f"`validate(code, customer, order_amount)`, a random shop voucher and known customer, "
                f"{CLIENTS} clients, vs the bare indexed SELECT of the voucher with its campaign", "TPS",
                series("validate", r["ours"]), series("bare SELECT", r["bare"]), goal=(">=", 0.7)),
            row("V2", "V1's `validate` vs the PL/pgSQL peer's validate", "TPS",
                series("validate", r["ours"]), series("PL/pgSQL peer", r["peer"]))]


@case("hot", "5. all clients on one multi-use voucher", needs=("main",))
def case_hot():
    r = alternate({"ours": hot_side("ours"), "bare": hot_side("bare"), "floor": hot_side("floor"),
                   "peer": hot_side("peer")},
                  before=reset_main)
    return [row("5", f"`redeem('HOT')`: {CLIENTS} clients on one multi-use voucher (no limit), vs the bare "
                "single-row UPDATE+INSERT", "TPS",
                series("redeem", r["ours"]), series("bare", r["bare"]), goal=(">=", 1.5)),
            row("5p", "5's `redeem('HOT')` vs the PL/pgSQL peer on the same voucher", "TPS",
                series("redeem", r["ours"]), series("PL/pgSQL peer", r["peer"])),
            row("5f", "floor: the function of 4f on the hot voucher, vs bare", "TPS",
                series("function(+audit)", r["floor"]), series("bare", r["bare"]), note="a floor row, as 3f"),
            row("5g", "`redeem('HOT')` vs that function", "TPS", series("redeem", r["ours"]),
                series("function(+audit)", r["floor"]))]


@case("async", "6. 4 and 5 with synchronous_commit = off", needs=("main",))
def case_async():
    single = alternate({"ours": redeem_side("ours", sync_commit=False),
                        "bare": redeem_side("bare", sync_commit=False)}, before=reset_main)
    hot = alternate({"ours": hot_side("ours", sync_commit=False), "bare": hot_side("bare", sync_commit=False)},
                    before=reset_main)
    return [
        row("6a", "4a with synchronous_commit = off (CPU cost, no commit flush)", "TPS",
            series("redeem", single["ours"]), series("bare", single["bare"])),
        row("6b", "5 with synchronous_commit = off", "TPS", series("redeem", hot["ours"]), series("bare", hot["bare"])),
    ]


@case("clients", "redeem TPS against client count (the picture)", needs=("main",))
def case_clients():
    # One alternation over all the points (ours 1, bare 1, ours 2, ... bare 32, then backwards):
    # a slow spell of the machine spreads over every client count instead of denting one.
    sides = {}
    for c in CLIENT_COUNTS:
        sides[f"ours c={c}"] = shop_side("ours", clients=c)
        sides[f"peer c={c}"] = shop_side("peer", clients=c)
        if not QUICK:  # the bare line of the picture; quick mode leaves it out to stay within 15 minutes
            sides[f"bare c={c}"] = shop_side("bare", clients=c)
    r = alternate(sides, before=reset_main)
    rows, points = [], []
    for c in CLIENT_COUNTS:
        ours, peer, bare = r[f"ours c={c}"], r[f"peer c={c}"], r.get(f"bare c={c}")
        rows.append(row(f"C{c}", f"P1 (shop redeem) with {c} client{'s' if c > 1 else ''}, vs the PL/pgSQL peer",
                        "TPS", series("redeem", ours), series("PL/pgSQL peer", peer),
                        note=f"bare UPDATE+INSERT: {statistics.median(x['v'] for x in bare):,.0f} TPS (median)"
                        if bare else None))
        points.append((c, ours, peer, bare))
    plot_clients(points)
    return rows


@case("tenants", "1,000 tenants vs 1 tenant (per-transaction authentication)", needs=("main", "tenants"))
def case_tenants():
    def side(keytable):
        script = render_script("tenants", SEQ="bench_seq_mt", KEYTABLE=keytable)
        return lambda: check_redemptions(pgbench(MAIN_DB, script), "voucher.redemption", "bench_seq_mt",
                                         TENANTS * PER_TENANT)
    r = alternate({"1000 tenants": side("bench_mt_key"), "1 tenant": side("bench_mono_key")}, before=reset_main)
    return [row("T", f"redeem with per-transaction auth, consecutive transactions in {TENANTS:,} tenants "
                f"({PER_TENANT} vouchers each) vs all {TENANTS * PER_TENANT // 1000}k in 1 tenant (ours both)",
                "TPS", series(f"{TENANTS} tenants", r["1000 tenants"]), series("1 tenant", r["1 tenant"]))]


def grow_main(target):
    """Adds single-use shop vouchers P<n> to voucher.code and peer.code (same rows) up to `target`."""
    m = STATE["main"]
    have = m["shop_vouchers"]
    if have >= target:
        return
    t0 = time.time()
    log(f"  growing the tenant's shop campaign from {have:,} to {target:,} vouchers")
    step = 1_000_000
    for lo in range(have + 1, target + 1, step):
        hi = min(lo + step - 1, target)
        sql(MAIN_DB, f"""
SET session_replication_role = replica;  -- rows are valid by construction: skip the per-row FK checks
CREATE TEMP TABLE grow AS
SELECT k.tenant, voucher._uuid_v7() AS voucher_id, k.shop, 'P' || n AS code
  FROM bench_key k, generate_series({lo}, {hi}) n;
INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code) SELECT * FROM grow;
INSERT INTO peer.code (tenant_id, voucher_id, campaign_id, code) SELECT * FROM grow;
""")
    sql(MAIN_DB, "VACUUM ANALYZE voucher.code, peer.code;\nCHECKPOINT;")
    m["shop_vouchers"] = target
    log(f"  grown in {time.time() - t0:.0f} s")


@case("scale", "shop redeem TPS and p95 at 100k, 1M, 10M vouchers in one tenant, vs the peer", needs=("main",))
def case_scale():
    rows, at = [], {}
    for i, n in enumerate(SCALES):
        grow_main(n)
        log(f"  {n:,} vouchers")
        r = alternate({"ours": shop_side("ours", stride=SCALE_STRIDE, n=n),
                       "peer": shop_side("peer", stride=SCALE_STRIDE, n=n)}, before=reset_main)
        at[n] = r
        rows.append(row(f"S{i + 1}", f"shop `redeem` (as P1), {fmt_count(n)} vouchers in the tenant, picked "
                        f"spread over the table, {CLIENTS} clients, vs the PL/pgSQL peer", "TPS",
                        series("redeem", r["ours"]), series("PL/pgSQL peer", r["peer"])))
    lo, hi = SCALES[0], SCALES[-1]
    peer_ratio = (statistics.median(s["v"] for s in at[hi]["peer"])
                  / statistics.median(s["v"] for s in at[lo]["peer"]))
    rows.append(row(f"S{len(SCALES) + 1}", f"shop `redeem` TPS at {fmt_count(hi)} vs at {fmt_count(lo)} vouchers "
                    f"(rows S{len(SCALES)} and S1, ours)", "TPS",
                    series(f"redeem @{fmt_count(hi)}", at[hi]["ours"]),
                    series(f"redeem @{fmt_count(lo)}", at[lo]["ours"]),
                    goal=(">=", 0.8),
                    note=f"the PL/pgSQL peer's own ratio {fmt_count(hi)}/{fmt_count(lo)}: {peer_ratio:.2f}x"))
    return rows


# ---- 8. brute-force protection ---------------------------------------------------------------
# Shop-shaped redemptions (customer and client named) with the tenant's protection on vs off,
# also while another identity is locked out; then what a locked-out guesser can push: refused
# attempts per second and the audit rows they cost, against an unprotected guesser.
THROTTLE_SQL = f"""
CREATE OR REPLACE FUNCTION public.bench_guess(code text, who text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM * FROM voucher.redeem(code, customer => who, client => '198.51.100.66');
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;
GRANT EXECUTE ON FUNCTION public.bench_guess(text, text) TO {APP_ROLE};
"""


def throttle_configure(protection, locked_out=None):
    """Sets the bench tenant's protection; with locked_out, locks that customer out for an hour
    (ten failed guesses) first. Every earlier lock-out is lifted."""
    stmts = ["SELECT voucher.authenticate(key, true) IS NOT NULL FROM bench_key;",
             "SELECT voucher.configure('brute_force_protection', 'true');",
             "SELECT voucher.configure('customer_lockout_period', '1h');",
             "SELECT voucher.unlock('customer', w) FROM unnest(ARRAY['bystander', 'guesser']) w;",
             "SELECT voucher.unlock('client', '198.51.100.66');"]
    if locked_out:
        stmts.append(f"SELECT public.bench_guess('NOPE' || n, '{locked_out}') FROM generate_series(1, 10) n;")
    stmts.append(f"SELECT voucher.configure('brute_force_protection', '{'true' if protection else 'false'}');")
    sql(MAIN_DB, "\n".join(stmts))


def reset_shop(side):
    reset_main(side)
    sql(MAIN_DB, """
SET client_min_messages = warning;
SET session_replication_role = replica;
TRUNCATE voucher.customer_usage, voucher.customer, voucher.redemption CASCADE;
RESET session_replication_role;
""")
    throttle_configure(side != "off", "bystander" if side == "attack" else None)


def throttle_shop_side():
    m = STATE["main"]
    script = render_script("redeem_shop", SEQ="bench_seq_ours", KEY=m["key"])
    return lambda: check_redemptions(pgbench(MAIN_DB, script), "voucher.redemption", "bench_seq_ours", POOL)


def guess_side(who):
    m = STATE["main"]
    script = render_script("guess_locked", KEY=m["key"], WHO=who)

    def run():
        before = int(scalar(MAIN_DB, "SELECT count(*) FROM voucher.audit_event"))
        s = pgbench(MAIN_DB, script)
        s["audit"] = int(scalar(MAIN_DB, "SELECT count(*) FROM voucher.audit_event")) - before
        return s
    return run


@case("throttle", "8. brute-force protection: shop-shaped redemption on vs off; a locked-out guesser",
      needs=("main",))
def case_throttle():
    sql(MAIN_DB, THROTTLE_SQL)
    r = alternate({"on": throttle_shop_side(), "off": throttle_shop_side(), "attack": throttle_shop_side()},
                  before=reset_shop)

    def before_guess(side):
        reset_main(side)
        throttle_configure(side == "locked", "guesser" if side == "locked" else None)
    g = alternate({"locked": guess_side("guesser"), "unprotected": guess_side("guesser")},
                  before=before_guess)
    per_k = {k: statistics.median(1000 * s["audit"] / max(1, s["tx"]) for s in v) for k, v in g.items()}
    throttle_configure(True)
    return [
        row("8a", f"shop-shaped `redeem(code, customer, client)`, {CLIENTS} clients: protection on vs off",
            "TPS", series("on", r["on"]), series("off", r["off"]), goal=(">=", 0.97)),
        row("8b", "the same while another customer is locked out (every call hashes and looks up its "
            "identities) vs off", "TPS", series("on, lock-out in force", r["attack"]), series("off", r["off"])),
        row("8c", f"a guesser on {CLIENTS} connections (one customer, one client): refused attempts "
            "(VC012) per second locked out vs guesses (VC001) per second unprotected", "TPS",
            series("locked out", g["locked"]), series("unprotected", g["unprotected"]),
            note=f"audit rows per 1,000 attempts: {per_k['locked']:.2f} locked out vs "
                 f"{per_k['unprotected']:.0f} unprotected"),
    ]


# ---- 7. verify_audit ---------------------------------------------------------------------------
# The audit log of one tenant holding AUDIT_ROWS sealed events: verify_audit() (every row's HMAC and
# the chain of seals, in Rust) against a plain SQL scan that reads the same rows and pushes each
# one's fields and stored hash through sha256(). Run it alone with:
#   BENCH_SKIP_INSTALL=1 BENCH_ONLY=audit make bench
def setup_audit():
    """voucher_audit: one tenant whose audit log holds AUDIT_ROWS redemption events (written
    directly, with their real row HMACs, as the superuser), sealed by two seal_audit() runs."""
    t0 = time.time()
    log(f"setting up {AUDIT_DB}: {AUDIT_ROWS:,} audit events in one tenant, sealed")
    fresh_db(AUDIT_DB)
    sql(AUDIT_DB, f"""
SET client_min_messages = warning;
CREATE TABLE bench_key (tenant uuid NOT NULL, key text NOT NULL);
INSERT INTO bench_key SELECT t, voucher.create_api_key('auditor', tenant => t)
  FROM voucher.create_tenant('bench audit') t;
INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, object_id,
                                 details, row_hash)
SELECT k.tenant, e.id, e.at, e.actor, 'redemption.created', 'voucher', e.object_id, e.details,
       voucher._audit_hash(k.tenant, e.id, e.at, e.actor::text, 'redemption.created', 'voucher',
                           e.object_id, e.details::text)
  FROM bench_key k,
       LATERAL (SELECT nextval('voucher.audit_event_id_seq') AS id, clock_timestamp() AS at,
                       jsonb_build_object('type', 'key', 'key_id', gen_random_uuid(),
                                          'role', 'redeemer') AS actor,
                       gen_random_uuid()::text AS object_id,
                       jsonb_build_object('redemption_id', gen_random_uuid(),
                                          'campaign_id', gen_random_uuid(), 'customer_id', NULL,
                                          'order_id', 'order-' || g, 'order_amount', 80,
                                          'amount', NULL, 'discount', 12, 'balance_after', NULL,
                                          'idempotency_key', 'order-' || g) AS details
                  FROM generate_series(1, {AUDIT_ROWS}) g) e;
""")
    # the first run fixes the horizon, the second seals everything before it
    sql(AUDIT_DB, "SELECT voucher.seal_audit();")
    sealed = int(scalar(AUDIT_DB, "SELECT voucher.seal_audit();"))
    sql(AUDIT_DB, "VACUUM ANALYZE voucher.audit_event, voucher.audit_chain;\nCHECKPOINT;")
    tenant, key = scalar(AUDIT_DB, "SELECT tenant, key FROM bench_key").split("|")
    rows = int(scalar(AUDIT_DB, f"SELECT count(*) FROM voucher.audit_event WHERE tenant_id = '{tenant}'"))
    if sealed < AUDIT_ROWS:
        raise Failure(f"seal_audit sealed {sealed:,} events, expected at least {AUDIT_ROWS:,}")
    STATE["audit"] = {"tenant": tenant, "key": key, "rows": rows}
    log(f"  {rows:,} events, {sealed:,} sealed; done in {time.time() - t0:.0f} s")


FIXTURES["audit"] = setup_audit


@case("audit", "7. verify_audit over 1e6 rows vs a plain SQL scan hashing the same rows", needs=("audit",))
def case_verify_audit():
    a = STATE["audit"]

    def verify():
        s = oneshot(AUDIT_DB, f"BEGIN;\nSELECT voucher.authenticate('{a['key']}') IS NOT NULL;",
                    ["SELECT ok, rows_checked FROM voucher.verify_audit();"], "COMMIT;", monitor=True)
        if f"t|{a['rows']}" not in s["out"]:
            raise Failure(f"verify_audit did not pass over {a['rows']:,} rows:\n{s['out'][-500:]}")
        return s

    def scan():
        # each row's fields and stored hash through SHA-256, like verification reads them
        s = oneshot(AUDIT_DB, "", [
            "SELECT count(*), sum(length(sha256(convert_to(e.actor::text || e.action || "
            "coalesce(e.object_type, '') || coalesce(e.object_id, '') || e.details::text || "
            "e.at::text, 'UTF8') || e.row_hash))) "
            f"FROM voucher.audit_event e WHERE e.tenant_id = '{a['tenant']}';"], monitor=True)
        if f"{a['rows']}|{32 * a['rows']}" not in s["out"]:
            raise Failure(f"the SQL scan did not see {a['rows']:,} rows:\n{s['out'][-500:]}")
        return s

    r = alternate({"verify_audit": verify, "sql_hash": scan})
    n = f"{a['rows']:,}"
    return [row("7", f"`verify_audit()` over {n} sealed audit rows vs `SELECT sum(length(sha256(row fields)))` "
                     "over the same rows", "ms",
                series("verify_audit", r["verify_audit"]), series("SQL sha256 scan", r["sql_hash"]),
                goal=("<=", 2.0)),
            row("7b", "peak private memory (RssAnon) of the backend during 7", "MB",
                series("verify_audit", r["verify_audit"], key="rss"),
                series("SQL sha256 scan", r["sql_hash"], key="rss"))]


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def plot_clients(points):
    os.makedirs(OUT, exist_ok=True)
    dat = os.path.join(WORK, "clients.dat")
    with open(dat, "w") as f:
        f.write("# clients ours_median ours_min ours_max bare_median bare_min bare_max peer_median peer_min peer_max\n")
        for c, ours, peer, bare in points:
            o = [s["v"] for s in ours]
            b = [s["v"] for s in bare] if bare else []
            p = [s["v"] for s in peer]
            bare_cols = f"{statistics.median(b)} {min(b)} {max(b)}" if b else "NaN NaN NaN"
            f.write(f"{c} {statistics.median(o)} {min(o)} {max(o)} {bare_cols} "
                    f"{statistics.median(p)} {min(p)} {max(p)}\n")
    png = os.path.join(OUT, "clients.png")
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        log("gnuplot not found: no picture")
        return
    terminals = subprocess.run([gnuplot, "-e", "set terminal"], capture_output=True, text=True)
    term = "pngcairo noenhanced size 1000,620 font 'sans,11'" if "pngcairo" in terminals.stdout + terminals.stderr \
        else "png noenhanced size 1000,620 font 'sans,11'"
    mode = "quick mode, " if QUICK else ""
    script = f"""
set terminal {term}
set output '{png}'
set title "voucher_ext: shop-shaped redemption throughput vs client count\\n({mode}{RUNS} runs x {SECONDS} s per point; line = median, bars = min-max; synchronous_commit = on)"
set xlabel 'pgbench clients'
set ylabel 'transactions per second'
set logscale x 2
set xrange [0.8:40]
set xtics ({", ".join(str(c) for c in CLIENT_COUNTS)})
set yrange [0:*]
set grid ytics xtics
set key bottom right box opaque
set datafile commentschars '#'
plot '{dat}' using 1:5:6:7 with yerrorlines lw 2 pt 7 ps 1.2 lc rgb '#888888' title 'bare UPDATE+INSERT (no customer, no audit){" - not run in quick mode" if QUICK else ""}', \\
     '{dat}' using 1:8:9:10 with yerrorlines lw 2 pt 9 ps 1.2 lc rgb '#c05020' title 'PL/pgSQL peer (bench/sql/peer.sql)', \\
     '{dat}' using 1:2:3:4 with yerrorlines lw 2 pt 5 ps 1.2 lc rgb '#1f5fbf' title 'voucher.redeem()'
"""
    p = subprocess.run([gnuplot], input=script, capture_output=True, text=True)
    if p.returncode != 0:
        log(f"gnuplot failed: {p.stderr.strip()}")
    else:
        log(f"wrote {os.path.relpath(png, ROOT)}")


def med(values):
    return statistics.median(values) if values else None


def fnum(v, unit):
    if v is None:
        return "—"
    if unit == "TPS":
        return f"{v:,.0f}"
    if unit == "MB":
        return f"{v:,.1f}"
    return f"{v:,.0f}" if v >= 100 else (f"{v:,.1f}" if v >= 10 else f"{v:,.2f}")


def cell(s, unit):
    vals = s["values"]
    if not vals:
        return "—"
    return f"{fnum(med(vals), unit)} ({fnum(min(vals), unit)}–{fnum(max(vals), unit)})"


UNIT_LABEL = {"TPS": "TPS ↑", "ms": "ms ↓", "MB": "MB ↓", "µs": "µs/tx ↓", "kinstr": "k instr/tx ↓"}


def table(results):
    head = ("| # | operation (ours vs baseline) | unit | ours: median (min–max) | baseline: median (min–max) "
            "| ratio ours/base | goal | result | p95 ms ours / base |")
    lines = [head, "|" + "---|" * 9]
    notes = []
    for c in CASES:
        res = results.get(c["name"])
        if res is None:
            continue
        if res.get("error"):
            lines.append(f"| {c['name']} | {c['title']} | | ERROR | | | | ERROR | |")
            notes.append(f"{c['name']}: {res['error'].splitlines()[0][:300]}")
            continue
        for r in res["rows"]:
            o, b = med(r["ours"]["values"]), med(r["base"]["values"])
            ratio = o / b if o is not None and b else None
            goal, result = "—", "info"
            if r["goal"]:
                cmp, x = r["goal"]
                goal = f"{'≥' if cmp == '>=' else '≤'} {x:.2f}×"
                ok = ratio is not None and (ratio >= x if cmp == ">=" else ratio <= x)
                result = "**PASS**" if ok else "**FAIL**"
            p95 = "—"
            if r["ours"].get("p95") and r["base"].get("p95"):
                p95 = f"{med(r['ours']['p95']):.2f} / {med(r['base']['p95']):.2f}"
            lines.append(
                f"| {r['id']} | {r['op'].replace('|', chr(92) + '|')} <br>*{r['ours']['label']}* vs *{r['base']['label']}* | "
                f"{UNIT_LABEL[r['unit']]} | {cell(r['ours'], r['unit'])} | {cell(r['base'], r['unit'])} | "
                f"{'—' if ratio is None else f'{ratio:.2f}×'} | {goal} | {result} | {p95} |")
            if r.get("note"):
                notes.append(f"{r['id']}: {r['note']}")
    return "\n".join(lines), notes


def environment(meta):
    return (f"{meta['mode']} mode: {meta['runs']} runs per side, {meta['seconds']} s per pgbench run, "
            f"{CLIENTS} clients unless stated. Wall time {meta['wall']}. Run {meta['date']}, "
            f"commit {meta['commit']}, library sha256 {meta['library']}.\n"
            f"Machine: {meta['machine']}. {meta['server']}; cluster settings: {meta['settings']}.")


def render(results, meta):
    tab, notes = table(results)
    legend = legend_text()
    reruns = [f"{k} ({v['finished']}" + (f", DIFFERENT library {v['library']}" if v.get("library", meta["library"])
                                          != meta["library"] else ", same library") + ")"
              for k, v in results.items() if v.get("finished", "") > meta["date"]]
    body = [environment(meta), "", tab, "", legend]
    if reruns:
        body += ["", "Re-run later and merged: " + ", ".join(reruns) + "."]
    if notes:
        body += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    md = ["# voucher_ext benchmark results", ""] + body + ["", "![redeem TPS vs clients](clients.png)", ""]
    return "\n".join(md), "\n".join(body)


def legend_text():
    return ("↑ higher is better (throughput, so the ratio is ours ÷ baseline TPS and ≥ 1 means we "
            "are faster); ↓ lower is better (time, memory, the server's CPU or the instructions per "
            "transaction, "
            "so the ratio is ours ÷ baseline and ≤ 1 means we are faster). Medians of all runs; PASS/FAIL compares the ratio of "
            "the medians with the goal.")


def update_readme(block):
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- latest:begin -->", "<!-- latest:end -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(path, "w") as f:
            f.write(head + begin + "\n" + block + "\n" + end + tail)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            model = m.group(1).strip() if m else model
        with open("/proc/meminfo") as f:
            mem = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) / 1024 / 1024
    except OSError:
        mem = 0
    return f"{os.cpu_count()} vCPU {model}, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def git_commit():
    try:
        head = subprocess.check_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.check_output(["git", "-C", ROOT, "status", "--porcelain", "src", "sql", "Cargo.toml"],
                                        text=True).strip()
        return head + (" + uncommitted changes in src/sql" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_hash():
    lib = os.path.join(subprocess.check_output([PG_CONFIG, "--pkglibdir"], text=True).strip(), "voucher_ext.so")
    try:
        with open(lib, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------------------------
# Encryption at rest (issue 14): upsert_customer vs a plaintext insert; rotate_data_key
# ---------------------------------------------------------------------------------------------

CRYPTO_DB = "voucher_crypto"
ROTATE_CUSTOMERS = env_int("BENCH_ROTATE_CUSTOMERS", 20_000 if QUICK else 1_000_000)
ROTATE_SETUP_SESSIONS = 4   # the customers are made by this many sessions at once


def setup_crypto():
    """voucher_crypto: tenant 'crypto' with an admin key, the plain table bare_customer (the
    customer table's shape before encryption), sequences for the upsert runs."""
    fresh_db(CRYPTO_DB)
    create_app_role()
    sql(CRYPTO_DB, f"""
SET client_min_messages = warning;
CREATE TABLE crypto_key (tenant uuid NOT NULL, key text NOT NULL);
DO $$
DECLARE t uuid := voucher.create_tenant('crypto');
BEGIN
    INSERT INTO crypto_key VALUES (t, voucher.create_api_key('admin', tenant => t));
END $$;
CREATE TABLE bare_customer (tenant_id uuid NOT NULL, customer_id uuid NOT NULL, source_id text NOT NULL,
    email text, name text, metadata jsonb NOT NULL DEFAULT '{{}}', created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, customer_id),
    UNIQUE (tenant_id, source_id));
CREATE SEQUENCE crypto_seq_ours;
CREATE SEQUENCE crypto_seq_bare;
GRANT voucher_client TO {APP_ROLE};
GRANT SELECT, INSERT ON bare_customer TO {APP_ROLE};
-- row E1f's floor: the plaintext INSERT plus its audit row, through a function (as bench/sql/floor.sql)
CREATE TABLE bare_customer_audit (LIKE voucher.audit_event INCLUDING ALL);
CREATE SEQUENCE bare_customer_audit_seq AS bigint;
GRANT SELECT, INSERT ON bare_customer_audit TO {APP_ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
CREATE FUNCTION bare_upsert_customer(t uuid, sid text, em text, nm text, md jsonb)
RETURNS uuid LANGUAGE plpgsql SECURITY DEFINER AS $f$
DECLARE id uuid;
BEGIN
    WITH c AS (
        INSERT INTO public.bare_customer AS b (tenant_id, customer_id, source_id, email, name, metadata)
        VALUES ($1, gen_random_uuid(), $2, $3, $4, $5)
        ON CONFLICT (tenant_id, source_id) DO NOTHING
        RETURNING b.tenant_id, b.customer_id),
    ev AS (SELECT nextval('public.bare_customer_audit_seq') AS eid, now() AS at, c.* FROM c),
    a AS (
        INSERT INTO public.bare_customer_audit (tenant_id, event_id, at, actor, action, object_type,
                                                object_id, details, row_hash)
        SELECT ev.tenant_id, ev.eid, ev.at, '{{"type": "key", "role": "admin"}}', 'customer.created',
               'customer', ev.customer_id::text, '{{}}',
               sha256(convert_to(ev.tenant_id::text || ev.eid || ev.at || ev.customer_id::text, 'UTF8'))
          FROM ev
        RETURNING object_id)
    SELECT a.object_id::uuid INTO id FROM a;
    RETURN id;
END
$f$;
ALTER FUNCTION bare_upsert_customer(uuid, text, text, text, jsonb) OWNER TO {APP_ROLE};
""")
    tenant, key = scalar(CRYPTO_DB, "SELECT tenant, key FROM crypto_key").split("|")
    STATE["crypto"] = {"tenant": tenant, "key": key}


FIXTURES["crypto"] = setup_crypto


def reset_crypto(_side=None):
    sql(CRYPTO_DB, """
SET client_min_messages = warning;
SET session_replication_role = replica;
TRUNCATE voucher.customer, voucher.redemption, bare_customer, bare_customer_audit, voucher.audit_event,
         voucher.audit_chain CASCADE;
RESET session_replication_role;
VACUUM ANALYZE voucher.customer, bare_customer;
CHECKPOINT;
""")


LOOKUPS = 20_000 if QUICK else 100_000


def lookup_row(tenant):
    """Row E3: the one step of a redemption with a customer that encryption changed. Before
    (0.1.0) redeem found the customer by an index probe on (tenant_id, source_id text); now it
    computes the blind index (HMAC-SHA256 of the id, in Rust) and probes (tenant_id,
    source_index bytea). Both look-ups, LOOKUPS of them in one statement (nested loop of index
    probes), on two tables of LOOKUPS customers shaped like the two indexes; the hash is SQL's
    sha256() here, standing in for the HMAC (which is two SHA-256 compressions more per call).
    Nothing else of redeem changed for a known customer (no decryption)."""
    n = LOOKUPS
    sql(CRYPTO_DB, f"""
SET client_min_messages = warning;
DROP TABLE IF EXISTS lookup_plain, lookup_blind;
CREATE TABLE lookup_plain (tenant_id uuid NOT NULL, customer_id uuid NOT NULL, source_id text NOT NULL,
                           PRIMARY KEY (tenant_id, customer_id), UNIQUE (tenant_id, source_id));
CREATE TABLE lookup_blind (tenant_id uuid NOT NULL, customer_id uuid NOT NULL, source_index bytea NOT NULL,
                           PRIMARY KEY (tenant_id, customer_id), UNIQUE (tenant_id, source_index));
INSERT INTO lookup_plain SELECT '{tenant}', gen_random_uuid(), 'cust-' || g FROM generate_series(1, {n}) g;
INSERT INTO lookup_blind SELECT '{tenant}', gen_random_uuid(), sha256(convert_to('cust-' || g, 'UTF8'))
  FROM generate_series(1, {n}) g;
VACUUM ANALYZE lookup_plain, lookup_blind;
""")
    setup = "SET enable_hashjoin = off; SET enable_mergejoin = off; SET max_parallel_workers_per_gather = 0;"

    def probe(table, cond):
        def run():
            s = oneshot(CRYPTO_DB, setup, [f"SELECT count(c.customer_id) FROM generate_series(1, {n}) g "
                                           f"JOIN {table} c ON c.tenant_id = '{tenant}' AND {cond};"])
            if f"{n}" not in s["out"].split():
                raise Failure(f"{table}: not every look-up found its customer:\n{s['out'][-300:]}")
            s.pop("out", None)
            return s
        return run

    r = alternate({"blind": probe("lookup_blind", "c.source_index = sha256(convert_to('cust-' || g, 'UTF8'))"),
                   "plain": probe("lookup_plain", "c.source_id = 'cust-' || g")})
    us = {k: med([x["v"] for x in v]) * 1000 / n for k, v in r.items()}
    sql(CRYPTO_DB, "DROP TABLE lookup_plain, lookup_blind;")
    return row("E3", f"redeem with a customer, the step encryption changed: {n:,} look-ups of a customer by its id "
               "through the blind index (hash + bytea probe) vs the plaintext text index (0.1.0)", "ms",
               series("blind index", r["blind"]), series("plaintext index", r["plain"]),
               note=f"per look-up {us['blind']:.2f} µs vs {us['plain']:.2f} µs: {us['blind'] - us['plain']:+.2f} µs "
                    "per redemption with a customer (compare with its latency in rows 1-6)")


@case("crypto", "E. encryption at rest: upsert_customer vs plaintext INSERT; rotate_data_key; the redeem look-up",
      needs=("crypto",))
def case_crypto():
    c = STATE["crypto"]
    ours = render_script("upsert_ours", KEY=c["key"], SEQ="crypto_seq_ours")
    bare = render_script("upsert_bare", TENANT=c["tenant"], SEQ="crypto_seq_bare")
    floor = render_script("upsert_floor", TENANT=c["tenant"], SEQ="crypto_seq_bare")

    def floor_run():
        return check_audit(pgbench(CRYPTO_DB, floor), "bare_customer_audit", CRYPTO_DB)
    r = alternate({"upsert": lambda: pgbench(CRYPTO_DB, ours), "insert": lambda: pgbench(CRYPTO_DB, bare),
                   "floor": floor_run}, before=reset_crypto)
    rows = [row("E1", f"`upsert_customer(id, email, name, metadata)` of new customers, encrypted, {CLIENTS} clients, "
                "vs plaintext INSERT of the same fields", "TPS", series("upsert (AES-GCM)", r["upsert"]),
                series("plaintext INSERT", r["insert"]), goal=(">=", 0.7)),
            row("E1f", "floor: the plaintext INSERT plus its audit row, through a PL/pgSQL SECURITY DEFINER "
                "function, vs the plaintext INSERT", "TPS", series("function(+audit)", r["floor"]),
                series("plaintext INSERT", r["insert"]),
                note="what a customer write in the contract's shape (a function, an audit row in the same "
                     "transaction) costs before any encryption, blind index, key or RLS: compare with E1's goal"),
            row("E1g", "E1's `upsert_customer` vs that floor: what encryption, blind indexes, the customer's own key, "
                "the tenant context and RLS add", "TPS", series("upsert (AES-GCM)", r["upsert"]),
                series("function(+audit)", r["floor"])),
            row("E1c", "server CPU per transaction (as P1c): E1's `upsert_customer` vs the plaintext INSERT",
                "µs", cpu_series("upsert (AES-GCM)", r["upsert"]), cpu_series("INSERT", r["insert"])),
            row("E1fc", "server CPU per transaction: E1f's floor function vs the plaintext INSERT", "µs",
                cpu_series("function(+audit)", r["floor"]), cpu_series("INSERT", r["insert"]))]
    rows.append(lookup_row(c["tenant"]))
    # rotate_data_key over ROTATE_CUSTOMERS customers: each has 4 ciphertexts and its own key
    reset_crypto()
    n = ROTATE_CUSTOMERS
    log(f"  creating {n:,} customers for the rotation ({ROTATE_SETUP_SESSIONS} sessions)")
    started = time.time()

    def create(part):
        lo, hi = part * n // ROTATE_SETUP_SESSIONS + 1, (part + 1) * n // ROTATE_SETUP_SESSIONS
        sql(CRYPTO_DB, f"""
SELECT voucher.act_as((SELECT tenant FROM crypto_key), session => true);
SELECT count(voucher.upsert_customer('r' || g, 'r' || g || '@example.com', 'Rotated ' || g, '{{"n": 1}}'))
  FROM generate_series({lo}, {hi}) g;
""")
    workers = [threading.Thread(target=create, args=(p,)) for p in range(ROTATE_SETUP_SESSIONS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    made = int(scalar(CRYPTO_DB, "SELECT count(*) FROM voucher.customer"))
    if made != n:
        raise Failure(f"{made} customers made for the rotation, expected {n}")
    setup_s = time.time() - started
    log(f"  {n:,} customers in {setup_s:,.0f} s ({n / setup_s:,.0f}/s)")
    sql(CRYPTO_DB, "VACUUM ANALYZE voucher.customer; CHECKPOINT;")
    calls = -(-n // 10_000) + 1   # every batch, then the call that returns 0 (one more would start anew)
    timed = ["SELECT voucher.rotate_data_key(10000);"] * calls
    samples = []
    for i in range(max(1, RUNS // 2)):
        s = oneshot(CRYPTO_DB, "SELECT voucher.act_as((SELECT tenant FROM crypto_key), session => true);",
                    timed, monitor=True)
        moved = sum(int(x) for x in s["out"].split() if x.isdigit())
        if moved != n:
            raise Failure(f"rotate_data_key moved {moved} rows, expected {n}")
        s["rows_per_s"] = moved / (s["v"] / 1000.0)
        log(f"    rotation run {i + 1}: {s['v']:,.0f} ms, {s['rows_per_s']:,.0f} rows/s, "
            f"RssAnon peak {s['rss']:.1f} MB")
        s.pop("out", None)
        samples.append(s)
    rows.append(row("E2", f"`rotate_data_key(10000)` until 0 over {n:,} customers (each: 4 ciphertexts "
                    "re-encrypted, its own key re-wrapped), rows/s", "TPS", series("rows/s", samples, "rows_per_s"),
                    series("rows/s", samples, "rows_per_s"),
                    note=f"peak backend RssAnon {max(s['rss'] for s in samples):.1f} MB; the {n:,} customers "
                         f"made by {ROTATE_SETUP_SESSIONS} sessions of upsert_customer in {setup_s:,.0f} s"))
    return rows


# Case 9 (GDPR, issue 15): forget_customer of one customer with FORGET_REDEMPTIONS redemptions,
# and RETENTION_CUSTOMERS inactive customers forgotten by forget_inactive_customers in batches
# of 1,000 (one tenant), and by run_customer_retention(1000) (spread over RETENTION_TENANTS). The baselines do the same erasure on bare tables in plain SQL (the UPDATEs a DBA
# would write, without pseudonymous ids, keys, counts or audit rows). Run it alone with:
#   BENCH_SKIP_INSTALL=1 BENCH_ONLY=privacy make bench
def setup_privacy():
    """voucher_privacy: one tenant with an admin key, customer retention set to 30 days, an
    unlimited voucher P-HOT; schema bare with customer and redemption tables."""
    fresh_db(PRIVACY_DB)
    sql(PRIVACY_DB, """
SET client_min_messages = warning;
CREATE TABLE bench_key (tenant uuid NOT NULL, key text NOT NULL);
DO $$
DECLARE t uuid := voucher.create_tenant('bench privacy');
        k text := voucher.create_api_key('admin', tenant => t);
BEGIN
    INSERT INTO bench_key VALUES (t, k);
    PERFORM voucher.authenticate(k);
    PERFORM voucher.configure('customer_retention_days', '30');
    PERFORM voucher.add_code(voucher.create_campaign('bench open', redemption_limit => NULL), 'P-HOT');
END $$;
CREATE SCHEMA bare;
CREATE TABLE bare.customer (customer_id uuid PRIMARY KEY, source_id text UNIQUE, email text,
                            name text, metadata jsonb, updated_at timestamptz, forgotten_at timestamptz);
CREATE TABLE bare.redemption (redemption_id uuid PRIMARY KEY, customer_id uuid, metadata jsonb);
CREATE INDEX ON bare.redemption (customer_id);
""")
    # case 9c: RETENTION_TENANTS more tenants with retention on, for run_customer_retention
    sql(PRIVACY_DB, f"""
SET client_min_messages = warning;
CREATE TABLE bench_retention_key (key text NOT NULL);
DO $$
DECLARE t uuid;
        k text;
BEGIN
    FOR i IN 1..{RETENTION_TENANTS} LOOP
        t := voucher.create_tenant('bench retention ' || i);
        k := voucher.create_api_key('admin', tenant => t);
        INSERT INTO bench_retention_key VALUES (k);
    END LOOP;
END $$;""")
    keys = scalar(PRIVACY_DB, "SELECT string_agg(key, ' ') FROM bench_retention_key").split()
    for k in keys:
        sql(PRIVACY_DB, f"BEGIN;\nSELECT voucher.authenticate('{k}');\n"
                        "SELECT voucher.configure('customer_retention_days', '30');\nCOMMIT;")
    STATE["privacy"] = {"key": scalar(PRIVACY_DB, "SELECT key FROM bench_key"), "tenant_keys": keys}


FIXTURES["privacy"] = setup_privacy


@case("privacy", "9. GDPR: forget_customer with 1,000 redemptions; retention over 10,000 customers",
      needs=("privacy",))
def case_privacy():
    key = STATE["privacy"]["key"]
    auth = f"BEGIN;\nSELECT voucher.authenticate('{key}') IS NOT NULL;"
    n_red, n_cust = FORGET_REDEMPTIONS, RETENTION_CUSTOMERS

    def forget():
        who = "bench-" + uuid.uuid4().hex[:12]
        sql(PRIVACY_DB, f"""{auth}
SELECT voucher.upsert_customer('{who}', '{who}@example.com', 'Bench Person', '{{"tier": "gold"}}');
SELECT count(r.discount) FROM generate_series(1, {n_red}) g,
       LATERAL voucher.redeem('P-HOT', customer => '{who}',
                              metadata => jsonb_build_object('ship_to', g || ' Main Street')) r;
COMMIT;
VACUUM ANALYZE voucher.redemption, voucher.customer;""")
        s = oneshot(PRIVACY_DB, auth, [f"SELECT voucher.forget_customer('{who}');"], "COMMIT;")
        if f'"redemptions": {n_red}' not in s["out"]:
            raise Failure(f"forget_customer did not report {n_red} redemptions:\n{s['out'][-500:]}")
        return s

    def forget_bare():
        who = uuid.uuid4()
        sql(PRIVACY_DB, f"""
INSERT INTO bare.customer VALUES ('{who}', 'bench-{who}', 'x@example.com', 'Bench Person', '{{}}', now());
INSERT INTO bare.redemption SELECT gen_random_uuid(), '{who}', jsonb_build_object('ship_to', g || ' Main Street')
  FROM generate_series(1, {n_red}) g;
VACUUM ANALYZE bare.redemption, bare.customer;""")
        return oneshot(PRIVACY_DB, "BEGIN;", [
            f"UPDATE bare.customer SET source_id = 'forgotten:' || gen_random_uuid(), email = NULL, "
            f"name = NULL, metadata = NULL, forgotten_at = now() WHERE customer_id = '{who}';",
            f"UPDATE bare.redemption SET metadata = NULL WHERE customer_id = '{who}';"], "COMMIT;")

    def retention():
        tag = uuid.uuid4().hex[:8]
        sql(PRIVACY_DB, f"""{auth}
SELECT count(voucher.upsert_customer('old-{tag}-' || g, 'old' || g || '@example.com', 'Old ' || g))
  FROM generate_series(1, {n_cust}) g;
COMMIT;
SET session_replication_role = replica;
UPDATE voucher.customer SET updated_at = now() - interval '400 days' WHERE forgotten_at IS NULL;
RESET session_replication_role;
VACUUM ANALYZE voucher.customer;""")
        batches = -(-n_cust // 1000)
        s = oneshot(PRIVACY_DB, auth, ["SELECT voucher.forget_inactive_customers(1000);"] * batches, "COMMIT;")
        left = scalar(PRIVACY_DB, "SELECT count(*) FROM voucher.customer WHERE forgotten_at IS NULL")
        if left != "0":
            raise Failure(f"{left} inactive customers were not forgotten")
        return s

    def retention_bare():
        sql(PRIVACY_DB, f"""
INSERT INTO bare.customer SELECT gen_random_uuid(), 'old-' || gen_random_uuid(), 'x@example.com', 'Old',
       '{{}}', now() - interval '400 days' FROM generate_series(1, {n_cust});
VACUUM ANALYZE bare.customer;""")
        return oneshot(PRIVACY_DB, "BEGIN;", [
            "UPDATE bare.customer SET source_id = 'forgotten:' || gen_random_uuid(), email = NULL, name = NULL, "
            "metadata = NULL, forgotten_at = now() "
            "WHERE forgotten_at IS NULL AND updated_at < now() - interval '30 days';"], "COMMIT;")

    def retention_all():
        tag = uuid.uuid4().hex[:8]
        per_tenant = n_cust // len(STATE["privacy"]["tenant_keys"])
        for k in STATE["privacy"]["tenant_keys"]:
            sql(PRIVACY_DB, f"""BEGIN;
SELECT voucher.authenticate('{k}') IS NOT NULL;
SELECT count(voucher.upsert_customer('all-{tag}-' || g, 'all' || g || '@example.com', 'All ' || g))
  FROM generate_series(1, {per_tenant}) g;
COMMIT;""")
        sql(PRIVACY_DB, """
SET session_replication_role = replica;
UPDATE voucher.customer SET updated_at = now() - interval '400 days' WHERE forgotten_at IS NULL;
RESET session_replication_role;
VACUUM ANALYZE voucher.customer;""")
        batches = -(-n_cust // 1000)
        s = oneshot(PRIVACY_DB, "BEGIN;", ["SELECT voucher.run_customer_retention(1000);"] * batches, "COMMIT;")
        left = scalar(PRIVACY_DB, "SELECT count(*) FROM voucher.customer WHERE forgotten_at IS NULL")
        if left != "0":
            raise Failure(f"{left} inactive customers were not forgotten by run_customer_retention")
        return s

    f = alternate({"forget": forget, "bare": forget_bare})
    r = alternate({"retention": retention, "bare": retention_bare})
    ra = alternate({"all tenants": retention_all, "bare": retention_bare})
    per_s = n_cust / (med([x["v"] for x in r["retention"]]) / 1000)
    per_s_all = n_cust / (med([x["v"] for x in ra["all tenants"]]) / 1000)
    return [row("9a", f"`forget_customer` of one customer with {n_red:,} redemptions vs the same erasure in "
                      "plain UPDATEs of bare tables", "ms",
                series("forget_customer", f["forget"]), series("bare UPDATEs", f["bare"])),
            row("9b", f"{n_cust:,} inactive customers forgotten by `forget_inactive_customers(1000)` vs one "
                      "UPDATE of bare rows", "ms",
                series("retention", r["retention"]), series("bare UPDATE", r["bare"]),
                note=f"{per_s:,.0f} customers/s through the retention function (median)"),
            row("9c", f"{n_cust:,} inactive customers of {len(STATE['privacy']['tenant_keys'])} tenants forgotten by "
                      "`run_customer_retention(1000)` (operator, every tenant) vs one UPDATE of bare rows", "ms",
                series("all tenants", ra["all tenants"]), series("bare UPDATE", ra["bare"]),
                note=f"{per_s_all:,.0f} customers/s across tenants (median)")]


def main():
    global PGI
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help="socket directory of the benchmark cluster")
    ap.add_argument("--port", default="54340")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--render", action="store_true",
                    help="only re-render latest.md (and the table in bench/README.md) from latest.json")
    args = ap.parse_args()
    if args.list:
        for c in CASES:
            print(f"{c['name']:10} {c['title']}")
        return 0
    json_path = os.path.join(OUT, "latest.json")
    if args.render:
        with open(json_path) as f:
            saved = json.load(f)
        publish(saved["results"], saved["meta"])
        return 0
    if not args.host:
        ap.error("--host is required")
    unknown = [n for n in ONLY if n not in {c["name"] for c in CASES}]
    if unknown:
        ap.error(f"unknown case(s) in BENCH_ONLY: {', '.join(unknown)} (see --list)")
    PGI = PG(args.host, args.port)
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(OUT, exist_ok=True)
    t0 = time.time()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    results, meta = {}, None
    if ONLY and os.path.exists(json_path):
        with open(json_path) as f:
            saved = json.load(f)
        results, meta = saved["results"], saved["meta"]

    fresh_meta = {"mode": "quick" if QUICK else "full", "runs": RUNS, "seconds": SECONDS, "date": started,
                  "commit": git_commit(), "library": library_hash(), "machine": machine()}
    settings = scalar("postgres", """SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name)
      FROM pg_settings WHERE name IN ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'max_connections',
      'fsync', 'synchronous_commit', 'full_page_writes', 'wal_level', 'shared_preload_libraries')""")
    server = scalar("postgres", "SELECT split_part(version(), ' on ', 1)")

    selected = [c for c in CASES if not ONLY or c["name"] in ONLY]
    needs = {n for c in selected for n in c["needs"]}
    for db in ([GEN_DB] if "gen" in needs else []) + ([MAIN_DB] if needs & {"main", "tenants"} else []) \
            + ([AUDIT_DB] if "audit" in needs else []) + ([PRIVACY_DB] if "privacy" in needs else []):
        fresh_db(db)
    for c in selected:
        log(f"case {c['name']}: {c['title']}")
        tc = time.time()
        try:
            need(*c["needs"])
            rows = c["fn"]()
            if not rows:
                log("  (not measured)")
                continue
            results[c["name"]] = {"rows": rows, "seconds": round(time.time() - tc)}
        except Failure as e:
            log(f"  FAILED: {e}")
            results[c["name"]] = {"error": str(e), "seconds": round(time.time() - tc)}
        if ONLY:
            results[c["name"]]["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            results[c["name"]]["library"] = fresh_meta["library"]
        log(f"  case {c['name']} took {time.time() - tc:.0f} s")

    wall = time.time() - t0
    wall_s = f"{int(wall // 60)} min {int(wall % 60)} s"
    if meta is None or not ONLY:
        meta = dict(fresh_meta, server=server, settings=settings, wall=wall_s + " (bench.py, without building)")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    publish(results, meta)
    log(f"wrote {os.path.relpath(os.path.join(OUT, 'latest.md'), ROOT)} ({wall_s})")
    return 1 if any(r.get("error") for r in results.values()) else 0


def publish(results, meta):
    md, body = render(results, meta)
    with open(os.path.join(OUT, "latest.md"), "w") as f:
        f.write(md)
    if not QUICK:
        update_readme(body)
    print()
    print(md)


if __name__ == "__main__":
    sys.exit(main())
