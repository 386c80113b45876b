"""The plaintext scan's workload (tests/crypto/plaintext_scan.sh runs it).

Creates customers with known, unique e-mail addresses, names, ids and metadata, redeems with
them (also a refused redemption, which writes an audit row quoting the customer), reads them
back through the view, finds them by e-mail, rotates the data key. Every value travels as a bound
parameter, the way an application should send it. Prints every personal string it used, one a
line, for the scan to search for.
"""
import os
import secrets
import sys

import psycopg
from psycopg.types.json import Jsonb

run = secrets.token_hex(4)
conn = psycopg.connect(host=os.environ["SCAN_HOST"], port=os.environ["SCAN_PORT"],
                       dbname=os.environ["SCAN_DB"], user="postgres", autocommit=True)
strings = []

with conn.transaction():
    tenant = conn.execute("SELECT voucher.create_tenant(%s)", [f"scan shop {run}"]).fetchone()[0]
    key = conn.execute("SELECT voucher.create_api_key('admin', tenant => %s)", [tenant]).fetchone()[0]


def tx():
    t = conn.transaction()
    t.__enter__()
    conn.execute("SELECT voucher.authenticate(%s)", [key])
    return t


t = tx()
camp = conn.execute("SELECT voucher.create_campaign(%s, redemption_limit => NULL, "
                    "per_customer_limit => 1)", [f"scan {run}"]).fetchone()[0]
conn.execute("SELECT voucher.add_code(%s, %s)", [camp, f"SCAN{run}".upper()])
t.__exit__(None, None, None)

for i in range(5):
    source_id = f"scan-src-{run}-{i}-zq"
    email = f"scan.person.{run}.{i}@example-mail.org"
    name = f"Scanperson Quenby {run} {i}"
    address = f"{i} Scanstreet {run}, Springfield"
    phone = f"+1-555-{run}-{i:04d}"
    strings += [source_id, email, name, address, phone]
    t = tx()
    conn.execute("SELECT voucher.upsert_customer(%s, %s, %s, %s)",
                 [source_id, email, name, Jsonb({"address": address})])
    conn.execute("SELECT * FROM voucher.redeem(code => %s, customer => %s, metadata => %s)",
                 [f"SCAN{run}".upper(), source_id, Jsonb({"phone": phone})])
    rows = conn.execute("SELECT count(*) FROM voucher.find_customer(%s)", [email]).fetchone()[0]
    assert rows == 1, f"find_customer found {rows}"
    t.__exit__(None, None, None)
    # refused (per-customer limit): the failed-redemption audit row quotes the customer
    try:
        t = tx()
        conn.execute("SELECT * FROM voucher.redeem(code => %s, customer => %s)",
                     [f"SCAN{run}".upper(), source_id])
        t.__exit__(None, None, None)
        sys.exit("the second redemption should have been refused")
    except psycopg.Error as e:
        t.__exit__(type(e), e, None)
        assert e.sqlstate == "VC005", e.sqlstate

# a customer created by a redemption alone
new_id = f"scan-newcomer-{run}-zq"
strings.append(new_id)
t = tx()
conn.execute("SELECT * FROM voucher.redeem(code => %s, customer => %s)", [f"SCAN{run}".upper(), new_id])
seen = {r[0] for r in conn.execute("SELECT source_id FROM voucher.customers")}
assert new_id in seen and len(seen) == 6, seen
t.__exit__(None, None, None)

# a data key rotation, to its end
t = tx()
while conn.execute("SELECT voucher.rotate_data_key(4)").fetchone()[0] > 0:
    pass
assert len({r[0] for r in conn.execute("SELECT email FROM voucher.customers")}) == 6
t.__exit__(None, None, None)

print("\n".join(strings))
