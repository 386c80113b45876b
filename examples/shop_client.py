#!/usr/bin/env python3
"""How a web shop calls voucher_ext: psycopg 3 with a connection pool.

There is no voucher service to talk to: the shop sends SQL to its own PostgreSQL. Per checkout
request it borrows a pooled connection and, in ONE transaction,

    1. authenticates with the tenant's API key  (voucher.authenticate)
    2. redeems the code                          (voucher.redeem)
    3. commits (and records the order in the same transaction, if it likes).

The tenant context set by authenticate lives only as long as that transaction, so the next
request that borrows the same connection starts with no tenant at all: nothing leaks between
pooled transactions, whichever tenant used the connection before.

Failures a customer can cause arrive as documented SQLSTATEs (VC001 no such voucher, VC004
limit reached, ...). psycopg exposes them as `exc.sqlstate`, which the shop maps to a message.

Run it:
    pip install 'psycopg[binary]' psycopg_pool
    python3 examples/shop_client.py "host=/path/to/socket dbname=shop user=shop_app" vk_... [CODE]
or with VOUCHER_DSN and VOUCHER_API_KEY set in the environment. The role in the connection
string must be a member of voucher_client; the key must be an admin key (the demo creates a
campaign and a code for itself) unless CODE names an existing voucher.
"""

import os
import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal

import psycopg
from psycopg_pool import ConnectionPool

# What the shop shows its customer for each business-rule failure (see the README's Errors).
CUSTOMER_MESSAGES = {
    "VC001": "This voucher code does not exist.",
    "VC002": "This voucher has expired.",
    "VC003": "This voucher is not valid yet.",
    "VC004": "This voucher has already been used up.",
    "VC005": "You have already used this voucher as often as allowed.",
    "VC006": "The gift card balance is too low for this amount.",
    "VC007": "Your order is below the minimum amount for this voucher.",
    "VC008": "This voucher is disabled.",
    "VC009": "This request was already sent with different details.",
    "VC012": "Too many failed attempts. Please try again later.",
}
# The shop's own configuration problems: log them and page someone; the customer only learns
# that vouchers are unavailable right now.
#   28000: the API key is bad, revoked or expired.  42501: the key's role may not do this.
OPERATOR_ERRORS = {"28000", "42501"}
UNAVAILABLE = "Vouchers cannot be redeemed right now. Please try again later."


@dataclass(frozen=True)
class Redemption:
    redemption_id: uuid.UUID
    discount: Decimal
    balance_after: Decimal | None
    replayed: bool  # True when an idempotency key repeated an earlier request


def make_pool(dsn: str, min_size: int = 4, max_size: int = 8) -> ConnectionPool:
    """A pool of autocommit connections: every transaction is an explicit conn.transaction()."""
    return ConnectionPool(dsn, min_size=min_size, max_size=max_size,
                          kwargs={"autocommit": True}, open=True)


def redeem(pool: ConnectionPool, api_key: str, code: str, customer: str | None = None,
           order_amount: Decimal | None = None,
           idempotency_key: str | None = None) -> Redemption:
    """Redeems `code` for the tenant that `api_key` belongs to; raises psycopg.Error on failure.

    The key and every other value travel as bind parameters (%s), never inside the SQL text:
    with log_statement = all a literal key would end up in the server log.
    """
    with pool.connection() as conn:
        with conn.transaction():  # BEGIN ... COMMIT, or ROLLBACK if anything raises
            conn.execute("SELECT voucher.authenticate(%s)", [api_key])
            row = conn.execute(
                "SELECT redemption_id, discount, balance_after, replayed"
                "  FROM voucher.redeem(code => %s, customer => %s, order_amount => %s,"
                "                      idempotency_key => %s)",
                [code, customer, order_amount, idempotency_key],
            ).fetchone()
            # ... the shop would insert its order row here, in the same transaction ...
    # Leaving conn.transaction() committed; the tenant context ended with the transaction.
    return Redemption(*row)


def customer_message(exc: psycopg.Error) -> str:
    """Maps a failed redeem() to what the customer sees."""
    return CUSTOMER_MESSAGES.get(exc.sqlstate, UNAVAILABLE)


def checkout(pool: ConnectionPool, api_key: str, code: str, customer: str,
             order_amount: Decimal) -> str:
    """What a checkout request handler does with a voucher code: redeem, or explain why not."""
    try:
        r = redeem(pool, api_key, code, customer=customer, order_amount=order_amount,
                   idempotency_key=f"order-{uuid.uuid4()}")  # a real shop: its order id
    except psycopg.Error as exc:
        if exc.sqlstate in OPERATOR_ERRORS or exc.sqlstate not in CUSTOMER_MESSAGES:
            print(f"  [log] voucher call failed: SQLSTATE {exc.sqlstate}: {exc}", file=sys.stderr)
        return f"refused ({exc.sqlstate}): {customer_message(exc)}"
    return f"redeemed: discount {r.discount}, redemption {r.redemption_id}"


def main() -> int:
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("VOUCHER_DSN")
    api_key = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("VOUCHER_API_KEY")
    if not dsn or not api_key:
        print("usage:" + __doc__.split("Run it:")[1], file=sys.stderr)
        return 2
    code = sys.argv[3] if len(sys.argv) > 3 else None

    with make_pool(dsn, min_size=1, max_size=2) as pool:
        if code is None:
            # Set-up for the demo, with the admin key: a 10 % campaign whose one code can be
            # used twice.
            code = f"DEMO-{uuid.uuid4().hex[:8].upper()}"
            with pool.connection() as conn, conn.transaction():
                conn.execute("SELECT voucher.authenticate(%s)", [api_key])
                conn.execute(
                    "SELECT voucher.add_code(voucher.create_campaign(%s, discount_type => 'percent',"
                    " discount_value => 10, redemption_limit => 2), %s)",
                    [f"shop_client demo {code}", code])
            print(f"created voucher {code} (10 % off, 2 uses)")

        for attempt in range(1, 4):  # the third attempt finds the limit reached: VC004
            print(f"checkout {attempt}:", checkout(pool, api_key, code, "cust-42", Decimal("80.00")))
        print("checkout with a bad key:", checkout(pool, "vk_not_a_real_key", code, "cust-42",
                                                   Decimal("80.00")))
        print("checkout with no such code:", checkout(pool, api_key, "NO-SUCH-CODE", "cust-42",
                                                      Decimal("80.00")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
