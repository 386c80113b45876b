//! The statements of the hot path, prepared once per backend and kept: the look-up of a code
//! (`evaluate`), the one-statement fast claim, and the claim of an evaluated voucher, each writing
//! the redemption and its audit row in the same statement.

use std::cell::RefCell;

use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::AnyNumeric;

use super::discount::{discount, discount_call};
use super::rules::{judge, Request, Verdict, Voucher};
use crate::codes::pattern::Shape;
use crate::common::spi::run_kept;

/// A code's voucher and campaign columns, as stored: $1 tenant, $2 code. The rules are judged
/// in Rust (`evaluate`): the statement only looks the rows up, so starting it builds no
/// expressions beyond plain columns. The counters are read as their domains' base types
/// (sql/codes.sql): pgrx reads a column only as the type it has.
pub const EVALUATE_SQL: &str = "\
SELECT v.voucher_id, v.campaign_id, c.kind, v.balance::numeric, c.redemption_limit,
       c.per_customer_limit, v.active AND c.active, c.starts_at, c.expires_at,
       v.redeemed_count::integer,
       c.min_order_amount, c.discount_type, c.discount_value, c.max_discount, c.currency
  FROM voucher.code v
  JOIN voucher.campaign c ON c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
 WHERE v.tenant_id = $1 AND v.code = $2";

/// How often a customer (by the blind index of its source_id, crypto) used a campaign: $1 tenant,
/// $2 campaign, $3 blind index. Only asked for a campaign with a per-customer limit: for any
/// other the customer changes no verdict, and a look-up of it and its counter (two more tables,
/// each with its row-level security) was the larger part of starting `validate`'s statement
/// (issue 17 profile). The customer is a sub-select, not a join: each table is then probed by
/// its full unique key. As a join, planned on tables never analyzed (a fresh install, after a
/// TRUNCATE), every row estimate was 1 and the plan kept walked the tenant's customers by the
/// primary key's tenant_id prefix (50,325 buffers per call at 50,000 customers).
pub const USAGE_SQL: &str = "\
SELECT u.used FROM voucher.customer_usage u
 WHERE u.tenant_id = $1 AND u.campaign_id = $2
   AND u.customer_id = (SELECT cu.customer_id FROM voucher.customer cu
                         WHERE cu.tenant_id = $1 AND cu.source_index = $3)";

/// Wraps the CTEs `claim` (the UPDATE) and `rec` (the INSERT of the redemption, returning only
/// the columns the audit row names: RETURNING * built a projection of every column per call),
/// so the same statement writes the audit row (details from `voucher._redemption_details`,
/// details.rs; the row HMAC is computed over the jsonb exactly as stored) and returns
/// voucher_id, discount, balance_after. `actor` names the parameter that holds the actor as
/// `::jsonb::text` prints it (`audit::write::jsonb_text`), hashed as given (jsonb's text form is
/// a fixed point of parsing); `actor_jsonb` the same actor as jsonb (`audit::write::jsonb_datum`,
/// parsed once per backend), for the stored column.
pub fn with_audit(
    ctes: &str,
    actor: &str,
    actor_jsonb: &str,
    order_id: &str,
    idempotency_key: &str,
) -> String {
    format!(
        "WITH {ctes},
ev AS (
    SELECT nextval('voucher.audit_event_id_seq') AS id, now() AS at, rec.voucher_id,
           rec.discount, rec.balance_after,
           voucher._redemption_details(rec.redemption_id, rec.campaign_id, rec.customer_id,
                                       {order_id}, rec.order_amount, rec.amount, rec.discount,
                                       rec.balance_after, {idempotency_key}) AS details
      FROM rec),
audit AS (
    INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type,
                                     object_id, details, row_hash)
    SELECT $1, ev.id, ev.at, {actor_jsonb}, 'redemption.created', 'voucher', ev.voucher_id::text,
           ev.details,
           voucher._audit_hash($1, ev.id, ev.at, {actor}, 'redemption.created',
                               'voucher', ev.voucher_id::text, ev.details::text)
      FROM ev
    RETURNING event_id)
SELECT ev.voucher_id, ev.discount, ev.balance_after FROM ev CROSS JOIN audit"
    )
}

/// The customer a claim names, found by the blind index of its source_id ($6) and read FOR KEY
/// SHARE, as `crypto::customers::find_or_create` reads it: a `forget_customer` in progress makes
/// the claim wait, and the forgotten row then no longer matches. Part of the claim statements
/// (issue 17): as a statement of its own, with its executor start and end, plan check and SPI
/// call, this look-up was a tenth of a shop redemption's CPU. A claim that names a customer
/// claims nothing while the customer does not exist yet; the caller then creates it
/// (`find_or_create`) and claims again. A call without a customer takes the statement without
/// this part (`Customer::None`): it would cost that call a locking scan's start-up for nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Customer {
    None,
    ByIndex,
}

impl Customer {
    /// The CTE to put first (with its comma), or nothing.
    pub fn cte(self) -> &'static str {
        match self {
            Customer::None => "",
            Customer::ByIndex => {
                "cust AS (
    SELECT cu.customer_id FROM voucher.customer cu
     WHERE cu.tenant_id = $1 AND cu.source_index = $6
       FOR KEY SHARE),
"
            }
        }
    }

    /// The condition the claim adds: the named customer exists.
    pub fn found(self) -> &'static str {
        match self {
            Customer::None => "",
            Customer::ByIndex => "\n       AND EXISTS (SELECT FROM cust)",
        }
    }

    /// The redemption's customer_id.
    pub fn id(self) -> &'static str {
        match self {
            Customer::None => "NULL::uuid",
            Customer::ByIndex => "(SELECT cust.customer_id FROM cust)",
        }
    }
}

/// The common case in one statement: claim a use of the code if every rule passes and the
/// campaign has no per-customer limit (and a limit or a balance: vouchers without either take
/// hot.rs's spread claim), record the redemption and its audit row. When it matches
/// no row the caller evaluates the code to say why (or takes the per-customer path).
/// $1 tenant, $2 code, $3 order amount, $4 amount, $5 redemption id, $6 the customer's blind
/// index ([`Customer`]; unused by `Customer::None`), $7 order id, $8 idempotency key, $9 request
/// hash, $10 metadata (encrypted), $11 actor label, $12 actor (jsonb text, as [`with_audit`]
/// wants it), $13 the data key of the metadata, $14 the actor as jsonb.
pub fn fast_claim_sql(customer: Customer) -> String {
    let ctes = format!(
        "{head},
rec AS (
    INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id,
        customer_id, order_id, order_amount, amount, discount, balance_after, idempotency_key,
        request_hash, metadata, redeemed_by, key_id)
    SELECT $1, $5, claim.voucher_id, claim.campaign_id, {id}, $7, $3, claim.spend,
           claim.discount, claim.balance, $8, $9, $10, $11, $13
      FROM claim
    RETURNING redemption_id, voucher_id, campaign_id, customer_id, order_amount, amount,
              discount, balance_after)",
        head = fast_claim_head(customer),
        id = customer.id(),
    );
    with_audit(&ctes, "$12", "$14", "$7", "$8")
}

/// [`fast_claim_sql`]'s claim alone, for a call that writes the redemption and its audit row
/// itself (`direct`): the same parameters; returns [`claimed`]'s columns.
pub fn fast_claim_direct_sql(customer: Customer) -> String {
    claimed(
        &fast_claim_head(customer),
        customer.id(),
        "claim.spend",
        "claim.balance",
        "NULL::smallint",
    )
}

/// The statement of a claim for the direct writer (redeem's `direct`): the CTEs `head` (the last
/// one named `claim`, with `voucher_id`, `campaign_id` and `discount`), returning voucher_id,
/// campaign_id, customer_id, amount (what a gift card spent), discount, balance_after and
/// use_slot (`direct::RedemptionRow`), the others as given.
pub fn claimed(head: &str, customer_id: &str, amount: &str, balance: &str, slot: &str) -> String {
    format!(
        "WITH {head}
SELECT claim.voucher_id, claim.campaign_id, {customer_id}, {amount}, claim.discount,
       {balance}, {slot}
  FROM claim"
    )
}

/// The CTEs of [`fast_claim_sql`] up to the claim (the customer's look-up and the UPDATE).
fn fast_claim_head(customer: Customer) -> String {
    format!(
        "{cust}claim AS (
    UPDATE voucher.code v
       SET redeemed_count = v.redeemed_count + 1,
           balance = v.balance - CASE WHEN c.kind = 'gift_card' THEN coalesce($4, $3) END
      FROM voucher.campaign c
     WHERE v.tenant_id = $1 AND v.code = $2
       AND c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
       AND v.active AND c.active{found}
       AND voucher._claimable(c.starts_at, c.expires_at, c.redemption_limit, v.redeemed_count,
                              c.min_order_amount, c.per_customer_limit, c.kind, v.balance,
                              c.discount_type, $3, $4, false)
    RETURNING v.voucher_id, v.campaign_id, v.balance,
              CASE WHEN c.kind = 'gift_card' THEN coalesce($4, $3) END AS spend,
              CASE WHEN c.kind = 'gift_card' THEN coalesce($4, $3) ELSE {discount} END AS discount)",
        discount = discount_call("$3"),
        cust = customer.cte(),
        found = customer.found(),
    )
}

/// Claims a use (and a gift card amount) of an evaluated voucher, and records the redemption
/// and its audit row, in one statement.
/// $1 tenant, $2 voucher, $3 redemption limit, $4 spend, $5 redemption id, $6 campaign,
/// $7 customer, $8 order id, $9 order amount, $10 discount, $11 idempotency key,
/// $12 request hash, $13 metadata (encrypted), $14 actor label, $15 actor (jsonb text, as
/// [`with_audit`] wants it), $16 the data key of the metadata, $17 the actor as jsonb.
pub fn claim_sql() -> String {
    let ctes = format!(
        "{CLAIM_HEAD},
rec AS (
    INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id,
        customer_id, order_id, order_amount, amount, discount, balance_after, idempotency_key,
        request_hash, metadata, redeemed_by, key_id)
    SELECT $1, $5, $2, $6, $7, $8, $9, $4, $10, claim.balance, $11, $12, $13, $14, $16 FROM claim
    RETURNING redemption_id, voucher_id, campaign_id, customer_id, order_amount, amount,
              discount, balance_after)"
    );
    with_audit(&ctes, "$15", "$17", "$8", "$11")
}

/// [`claim_sql`]'s UPDATE.
const CLAIM_HEAD: &str = "claim AS (
    UPDATE voucher.code v
       SET redeemed_count = v.redeemed_count + 1, balance = v.balance - $4
     WHERE v.tenant_id = $1 AND v.voucher_id = $2 AND v.active
       AND ($3::integer IS NULL OR v.redeemed_count < $3)
       AND ($4::numeric IS NULL OR v.balance >= $4)
    RETURNING v.voucher_id, v.balance, $6::uuid AS campaign_id, $10::numeric AS discount)";

/// [`claim_sql`]'s claim alone, for a call that writes the redemption and its audit row itself
/// (`direct`): the same parameters; returns [`claimed`]'s columns.
pub fn claim_direct_sql() -> String {
    claimed(
        CLAIM_HEAD,
        "$7::uuid",
        "$4::numeric",
        "claim.balance",
        "NULL::smallint",
    )
}

/// Prepared statements, kept for the life of the backend.
#[derive(Default)]
pub struct Statements {
    pub evaluate_read: Option<OwnedPreparedStatement>,
    pub usage_read: Option<OwnedPreparedStatement>,
    pub evaluate: Option<OwnedPreparedStatement>,
    pub usage: Option<OwnedPreparedStatement>,
    pub fast_claim: Option<OwnedPreparedStatement>,
    pub fast_claim_customer: Option<OwnedPreparedStatement>,
    pub claim: Option<OwnedPreparedStatement>,
    pub spread_claim: Option<OwnedPreparedStatement>,
    pub spread_claim_customer: Option<OwnedPreparedStatement>,
    /// the claims alone, for the direct writer
    pub fast_claim_direct: Option<OwnedPreparedStatement>,
    pub fast_claim_customer_direct: Option<OwnedPreparedStatement>,
    pub claim_direct: Option<OwnedPreparedStatement>,
    pub spread_claim_direct: Option<OwnedPreparedStatement>,
    pub spread_claim_customer_direct: Option<OwnedPreparedStatement>,
    pub idempotency_find: Option<OwnedPreparedStatement>,
    pub usage_claim: Option<OwnedPreparedStatement>,
}

thread_local! {
    static STATEMENTS: RefCell<Statements> = RefCell::new(Statements::default());
}

/// Runs a kept statement of this module, preparing it on first use.
pub fn run<'c>(
    client: &SpiClient<'c>,
    pick: fn(&mut Statements) -> &mut Option<OwnedPreparedStatement>,
    sql: impl FnOnce() -> String,
    types: &[pg_sys::Oid],
    mutating: bool,
    args: &[DatumWithOid],
) -> pgrx::spi::SpiTupleTable<'c> {
    STATEMENTS.with(|s| {
        run_kept(
            client,
            pick(&mut s.borrow_mut()),
            sql,
            types,
            mutating,
            None,
            args,
        )
    })
}

/// A code's voucher and campaign columns, in `EVALUATE_SQL`'s order: what the look-up found,
/// before the rules are judged. Filled from the kept statement, or by validate's direct index
/// look-up (`super::lookup`).
pub struct Columns {
    pub voucher_id: pgrx::Uuid,
    pub campaign_id: pgrx::Uuid,
    pub kind: String,
    pub balance: Option<AnyNumeric>,
    pub redemption_limit: Option<i32>,
    pub per_customer_limit: Option<i32>,
    /// the voucher's and the campaign's `active`, both
    pub active: bool,
    pub starts_at: Option<pg_sys::TimestampTz>,
    pub expires_at: Option<pg_sys::TimestampTz>,
    pub redeemed_count: i32,
    pub min_order_amount: Option<AnyNumeric>,
    pub discount_type: Option<String>,
    pub discount_value: Option<AnyNumeric>,
    pub max_discount: Option<AnyNumeric>,
    pub currency: Option<String>,
    /// where the probe found the voucher's row version (`lookup`; None from a statement): the
    /// claim locks it there instead of finding it again (`claim`)
    pub tid: Option<pg_sys::ItemPointerData>,
}

pub fn evaluate(
    client: &SpiClient<'_>,
    tenant: pgrx::Uuid,
    req: &Request,
    mutating: bool,
) -> Option<Voucher> {
    let uuid = pgrx::Uuid::type_oid();
    let text = pg_sys::TEXTOID;
    let args: [DatumWithOid; 2] = [tenant.into(), req.code.as_str().into()];
    let pick: fn(&mut Statements) -> &mut Option<OwnedPreparedStatement> = if mutating {
        |s| &mut s.evaluate
    } else {
        |s| &mut s.evaluate_read
    };
    let rows = run(
        client,
        pick,
        || EVALUATE_SQL.into(),
        &[uuid, text],
        mutating,
        &args,
    );
    if rows.is_empty() {
        return None;
    }
    let r = rows.first();
    let time = |i| {
        r.get::<TimestampWithTimeZone>(i)
            .ok()
            .flatten()
            .map(pg_sys::TimestampTz::from)
    };
    let columns = Columns {
        voucher_id: r.get(1).ok().flatten()?,
        campaign_id: r.get(2).ok().flatten()?,
        kind: r.get(3).ok().flatten()?,
        balance: r.get(4).ok().flatten(),
        redemption_limit: r.get(5).ok().flatten(),
        per_customer_limit: r.get(6).ok().flatten(),
        active: r.get::<bool>(7).ok().flatten().unwrap_or(false),
        starts_at: time(8),
        expires_at: time(9),
        redeemed_count: r.get(10).ok().flatten().unwrap_or(0),
        min_order_amount: r.get(11).ok().flatten(),
        discount_type: r.get(12).ok().flatten(),
        discount_value: r.get(13).ok().flatten(),
        max_discount: r.get(14).ok().flatten(),
        currency: r.get(15).ok().flatten(),
        tid: None,
    };
    Some(voucher_of(req, columns, |campaign, customer| {
        used(client, tenant, campaign, customer, mutating)
    }))
}

/// The voucher as the rules see it: the looked-up columns compared with the request and the
/// clock, and for a per-customer limit the customer's uses of the campaign (`used`, asked only
/// then).
pub fn voucher_of(
    req: &Request,
    mut c: Columns,
    used: impl FnOnce(pgrx::Uuid, &str) -> i32,
) -> Voucher {
    let discount = discount(
        c.discount_type.as_deref(),
        c.discount_value.take(),
        c.max_discount.take(),
        c.currency.as_deref(),
        req.order_amount.clone(),
    );
    Voucher {
        discount,
        ..voucher_without_discount(req, c, used)
    }
}

/// [`voucher_of`] without the discount, which no rule looks at.
fn voucher_without_discount(
    req: &Request,
    c: Columns,
    used: impl FnOnce(pgrx::Uuid, &str) -> i32,
) -> Voucher {
    // now(): the transaction's start, as the SQL rules used to compare against
    // SAFETY: reads backend-local state.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let used = match (c.per_customer_limit, req.customer) {
        (Some(_), Some(customer)) => used(c.campaign_id, customer),
        _ => 0,
    };
    Voucher {
        voucher_id: c.voucher_id,
        campaign_id: c.campaign_id,
        kind: c.kind,
        balance: c.balance,
        redemption_limit: c.redemption_limit,
        per_customer_limit: c.per_customer_limit,
        disabled: !c.active,
        not_started: c.starts_at.is_some_and(|t| t > now),
        expired: c.expires_at.is_some_and(|t| t <= now),
        used_up: c.redemption_limit.is_some_and(|l| c.redeemed_count >= l),
        has_minimum: c.min_order_amount.is_some(),
        below_minimum: match (&req.order_amount, &c.min_order_amount) {
            (Some(o), Some(m)) => o < m,
            _ => false,
        },
        discount: None,
        discount_type: c.discount_type,
        customer_used_up: c.per_customer_limit.is_some_and(|l| used >= l),
    }
}

/// `voucher._claimable`: may the one-statement claims take this voucher? The rules, judged by
/// the code every other path judges them with ([`judge`], strict as redeem is): a voucher that
/// fails one, or a request that lacks what a rule needs, is not claimed here, and the caller's
/// evaluation then says why. Besides, the fast claim takes only vouchers with a limit or a
/// balance, the spread claim (`spread`, hot.rs) only those without either; neither takes a
/// campaign with a per-customer limit. The claims call it with their rows' columns, as the
/// UPDATE's condition (re-checked on the newest row version after a wait): as some twenty
/// operator expressions there, the rules cost 42k instructions per redemption, mostly each
/// operator's start (its privilege check and function look-up); as this call, 14k (issue 17,
/// callgrind).
#[pg_extern(stable, parallel_safe, name = "_claimable")]
#[allow(clippy::too_many_arguments)]
pub fn claimable(
    starts_at: Option<TimestampWithTimeZone>,
    expires_at: Option<TimestampWithTimeZone>,
    redemption_limit: Option<i32>,
    redeemed_count: Option<i32>,
    min_order_amount: Option<AnyNumeric>,
    per_customer_limit: Option<i32>,
    kind: Option<&str>,
    balance: Option<AnyNumeric>,
    discount_type: Option<&str>,
    order_amount: Option<AnyNumeric>,
    amount: Option<AnyNumeric>,
    spread: Option<bool>,
) -> bool {
    let (Some(kind), Some(spread)) = (kind, spread) else {
        return false;
    };
    let req = Request {
        code: String::new(),
        customer: None,
        order_amount,
        amount,
    };
    let columns = Columns {
        voucher_id: pgrx::Uuid::from_bytes([0; 16]),
        campaign_id: pgrx::Uuid::from_bytes([0; 16]),
        kind: kind.to_string(),
        balance,
        redemption_limit,
        per_customer_limit,
        // the claims check both rows' `active` themselves (plain columns cost nothing)
        active: true,
        starts_at: starts_at.map(pg_sys::TimestampTz::from),
        expires_at: expires_at.map(pg_sys::TimestampTz::from),
        redeemed_count: redeemed_count.unwrap_or(0),
        min_order_amount,
        discount_type: discount_type.map(str::to_string),
        discount_value: None,
        max_discount: None,
        currency: None,
        tid: None,
    };
    let v = voucher_without_discount(&req, columns, |_, _| 0);
    if v.per_customer_limit.is_some() || super::hot::spreads(&v) != spread {
        return false;
    }
    matches!(judge(Some(v), &req, true), Ok(Verdict::Valid { .. }))
}

/// The customer's uses of a campaign (0: none yet, or no such customer).
pub fn used(
    client: &SpiClient<'_>,
    tenant: pgrx::Uuid,
    campaign: pgrx::Uuid,
    customer: &str,
    mutating: bool,
) -> i32 {
    // the customer's blind index (crypto): the look-up never decrypts
    let index = crate::crypto::customers::source_index_read(client, &tenant, customer)
        .unwrap_or_else(|e| e.raise());
    let args: [DatumWithOid; 3] = [tenant.into(), campaign.into(), index.into()];
    let pick: fn(&mut Statements) -> &mut Option<OwnedPreparedStatement> = if mutating {
        |s| &mut s.usage
    } else {
        |s| &mut s.usage_read
    };
    let uuid = pgrx::Uuid::type_oid();
    let rows = run(
        client,
        pick,
        || USAGE_SQL.into(),
        &[uuid, uuid, pg_sys::BYTEAOID],
        mutating,
        &args,
    );
    if rows.is_empty() {
        return 0;
    }
    rows.first().get::<i32>(1).ok().flatten().unwrap_or(0)
}

/// For a code that does not exist: does it look like a code of a check-character campaign with
/// a mistyped character? Checked after the lookup missed, never before: an imported code may
/// share a check-character campaign's shape without carrying its check character.
pub fn looks_mistyped(client: &SpiClient<'_>, tenant: pgrx::Uuid, code: &str) -> bool {
    let rows = client
        .select(
            "SELECT code_pattern, code_charset, code_prefix, code_postfix FROM voucher.campaign \
              WHERE tenant_id = $1 AND code_check_char",
            None,
            &[tenant.into()],
        )
        .expect("campaign lookup");
    rows.filter_map(|r| {
        let text = |i| r.get::<String>(i).ok().flatten().unwrap_or_default();
        Shape::parse(&text(1), &text(2), &text(3), &text(4), true).ok()
    })
    .any(|shape| shape.check_status(code) == Some(false))
}

pub const MISTYPED: &str = "the check character does not match: probably a typo";

#[cfg(test)]
mod unit {
    #[test]
    fn the_customer_is_looked_up_apart_by_its_blind_index() {
        // the customer is found by the blind index of its source_id (crypto), and only for the
        // per-customer limit: the code's own look-up names no customer
        assert!(super::USAGE_SQL.contains("cu.source_index = $3"));
        assert!(!super::EVALUATE_SQL.contains("$3"));
        assert!(!super::EVALUATE_SQL.contains("customer "));
    }

    #[test]
    fn the_fast_claim_uses_every_parameter() {
        use super::Customer;
        let sql = super::fast_claim_sql(Customer::ByIndex);
        for n in 1..=14 {
            assert!(sql.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!sql.contains("$15"));
        // the audit row stores the actor passed as jsonb and hashes its text
        assert!(sql.contains("ev.at, $14, 'redemption.created'"));
        assert!(sql.contains("voucher._audit_hash($1, ev.id, ev.at, $12,"));
        assert!(!sql.contains("::jsonb,"));
        // the rules: judged by voucher._claimable (rules::judge), not restated in SQL
        assert!(sql.contains(
            "voucher._claimable(c.starts_at, c.expires_at, c.redemption_limit, v.redeemed_count,"
        ));
        assert!(sql.contains("c.discount_type, $3, $4, false)"));
        assert_eq!(sql.matches("now()").count(), 1, "the audit row's time only");
        assert!(sql.contains("'redemption.created'"));
        // the customer: found by its blind index, locked, required, recorded
        assert!(sql.starts_with("WITH cust AS ("));
        assert!(sql.contains("cu.source_index = $6\n       FOR KEY SHARE"));
        assert!(sql.contains("AND EXISTS (SELECT FROM cust)"));
        assert!(sql.contains("claim.campaign_id, (SELECT cust.customer_id FROM cust), $7"));
        // without one: every parameter but $6, and no look-up of a customer
        let none = super::fast_claim_sql(Customer::None);
        for n in (1..=14).filter(|&n| n != 6) {
            assert!(none.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!none.contains("$6") && !none.contains("FROM cust") && !none.contains("$15"));
        assert!(none.starts_with("WITH claim AS ("));
        assert!(none.contains("claim.campaign_id, NULL::uuid, $7"));
        let sql = super::claim_sql();
        for n in 1..=17 {
            assert!(sql.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!sql.contains("$18"));
        assert!(sql.contains("ev.at, $17, 'redemption.created'"));
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// `voucher._claimable` says what the claims' SQL conditions said before it replaced them,
    /// for every combination of: window (not started, open, expired, none), limit and uses,
    /// minimum order, per-customer limit, kind, balance, discount type, order amount and gift
    /// amount; for the fast claim and the spread claim.
    #[pg_test]
    fn claimable_is_the_sql_rules() {
        let differ = Spi::get_one::<i64>(
            "WITH g AS (
               SELECT s, e, l, cnt, m, o, p, k, b, d, a
                 FROM unnest(ARRAY[NULL, now() - interval '1 hour', now() + interval '1 hour'])
                      s,
                      unnest(ARRAY[NULL, now() + interval '1 hour', now() - interval '1 hour',
                                   now()]) e,
                      unnest(ARRAY[NULL, 1, 5]) l, unnest(ARRAY[0, 1, 5]) cnt,
                      unnest(ARRAY[NULL, 10]::numeric[]) m,
                      unnest(ARRAY[NULL, 0, 5, 10, 20.5]::numeric[]) o,
                      unnest(ARRAY[NULL, 2]) p, unnest(ARRAY['discount', 'gift_card']) k,
                      unnest(ARRAY[NULL, 0, 10, 100]::numeric[]) b,
                      unnest(ARRAY[NULL, 'percent', 'fixed', 'amount']) d,
                      unnest(ARRAY[NULL, 10, 15]::numeric[]) a)
             SELECT count(*) FILTER (WHERE fast IS DISTINCT FROM
                        voucher._claimable(s, e, l, cnt, m, p, k, b, d, o, a, false))
                  + count(*) FILTER (WHERE spread IS DISTINCT FROM
                        voucher._claimable(s, e, l, cnt, m, p, k, b, d, o, a, true))
               FROM g, LATERAL (SELECT
                 coalesce((s IS NULL OR s <= now()) AND (e IS NULL OR e > now())
                   AND (l IS NULL OR cnt < l) AND (m IS NULL OR o >= m) AND p IS NULL
                   AND NOT (l IS NULL AND k = 'discount')
                   AND CASE WHEN k = 'gift_card' THEN coalesce(a, o) > 0 AND b >= coalesce(a, o)
                            ELSE a IS NULL AND (o IS NOT NULL OR d IS NULL
                                                OR d NOT IN ('percent', 'fixed')) END,
                   false) AS fast,
                 coalesce(l IS NULL AND k = 'discount' AND p IS NULL
                   AND (s IS NULL OR s <= now()) AND (e IS NULL OR e > now())
                   AND (m IS NULL OR o >= m) AND a IS NULL
                   AND (o IS NOT NULL OR d IS NULL OR d NOT IN ('percent', 'fixed')),
                   false) AS spread) x",
        );
        assert_eq!(differ, Ok(Some(0)));
        // and the grid has both answers, for both claims
        let both = Spi::get_one::<bool>(
            "SELECT voucher._claimable(NULL, NULL, 1, 0, NULL, NULL, 'discount', NULL,
                                       NULL, NULL, NULL, false)
                AND NOT voucher._claimable(NULL, NULL, 1, 1, NULL, NULL, 'discount', NULL,
                                           NULL, NULL, NULL, false)
                AND voucher._claimable(NULL, NULL, NULL, 0, NULL, NULL, 'discount', NULL,
                                       NULL, NULL, NULL, true)
                AND NOT voucher._claimable(NULL, NULL, NULL, 0, NULL, NULL, 'discount', NULL,
                                           NULL, NULL, NULL, false)",
        );
        assert_eq!(both, Ok(Some(true)));
    }
}
