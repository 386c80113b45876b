//! Validation and redemption (../shared/API.md, "Validation and redemption").
//!
//! The hot path of the product, so it is Rust over kept prepared statements. `validate` looks the
//! code up (its voucher and campaign rows, one statement of plain columns) and judges the rules
//! in Rust. `redeem`'s common case is ONE statement: a conditional UPDATE of the voucher that
//! re-checks every rule on the row itself, feeding the INSERT of the redemption and of its audit
//! row, so the row lock is held only from that UPDATE to commit. When it matches no row (a rule
//! failed, or the campaign limits redemptions per customer) the code is looked up and judged, to
//! say why, or to claim the customer's allowance first on its own counter row (customer_usage,
//! the same conditional way) and then the voucher. Idempotency keys are serialized by a
//! transaction-scoped advisory lock plus a unique index. Lock order is always redemption ->
//! customer_usage -> code, in rollback_redemption too, so the two cannot deadlock.
//!
//! Everything runs as voucher_definer, so row-level security applies to every statement.

use std::cell::RefCell;

use pgrx::datum::DatumWithOid;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{AnyNumeric, IntoDatum, JsonB};
use sha2::{Digest, Sha256};

use crate::audit;
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::common::error::{api, Result, VoucherError};
use crate::codes::pattern::{self, Shape, MAX_CODE};
use crate::common::rng;
use crate::tenancy::roles::Action;

/// Longest customer id, order id or idempotency key.
const MAX_TEXT: usize = 200;
/// Largest metadata document, serialized.
const MAX_METADATA: usize = 65_536;

// ---------------------------------------------------------------------------------------------
// Input checks, shared with the SQL functions through _money and _check_customer
// ---------------------------------------------------------------------------------------------

/// A money amount must be a finite, non-negative number below 10^15 with at most 4 decimals.
pub fn check_money(what: &str, amount: &AnyNumeric) -> Result<()> {
    let text = amount.to_string();
    if text == "NaN" || text.ends_with("Infinity") {
        return Err(VoucherError::invalid(format!(
            "{what} must be a finite number"
        )));
    }
    if text.starts_with('-') {
        return Err(VoucherError::invalid(format!(
            "{what} must not be negative"
        )));
    }
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if int.trim_start_matches('0').len() > 15 {
        return Err(VoucherError::invalid_hint(
            format!("{what} is too large"),
            "amounts must be below 10^15",
        ));
    }
    if frac.len() > 4 {
        return Err(VoucherError::invalid(format!(
            "{what} has more than 4 decimal places"
        )));
    }
    Ok(())
}

/// A numeric's value without trailing zeros: 10, 10.0 and 10.00 are one amount.
fn canonical_number(n: &AnyNumeric) -> String {
    let text = n.to_string();
    match text.split_once('.') {
        Some((int, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                int.to_string()
            } else {
                format!("{int}.{frac}")
            }
        }
        None => text,
    }
}

fn is_zero(n: &AnyNumeric) -> bool {
    n.to_string()
        .trim_start_matches('0')
        .trim_start_matches('.')
        .trim_start_matches('0')
        .is_empty()
}

pub fn check_customer_id(source_id: Option<&str>) -> Result<&str> {
    let id = source_id.ok_or(VoucherError::NullArgument("customer"))?;
    if id.trim().is_empty() {
        return Err(VoucherError::invalid("customer must not be empty"));
    }
    if id.chars().count() > MAX_TEXT {
        return Err(VoucherError::invalid(format!(
            "customer id is longer than {MAX_TEXT} characters"
        )));
    }
    Ok(id)
}

pub fn check_metadata(metadata: Option<&JsonB>) -> Result<()> {
    if let Some(JsonB(value)) = metadata {
        if !value.is_object() {
            return Err(VoucherError::invalid("metadata must be a JSON object"));
        }
        if value.to_string().len() > MAX_METADATA {
            return Err(VoucherError::invalid("metadata is larger than 64 kB"));
        }
    }
    Ok(())
}

/// Internal, for SQL functions: the money check, raising 22023.
#[pg_extern(immutable, parallel_safe, name = "_money")]
fn money_sql(amount: Option<AnyNumeric>, what: &str) -> Option<AnyNumeric> {
    api(|| {
        if let Some(a) = &amount {
            check_money(what, a)?;
        }
        Ok(amount)
    })
}

/// Internal, for upsert_customer: checks a customer's fields, raising 22023 / 22004.
#[pg_extern(immutable, parallel_safe, name = "_check_customer")]
fn check_customer_sql(
    source_id: Option<&str>,
    email: Option<&str>,
    name: Option<&str>,
    metadata: Option<JsonB>,
) {
    api(|| {
        check_customer_id(source_id)?;
        if let Some(e) = email {
            if e.chars().count() > 320 {
                return Err(VoucherError::invalid("email is longer than 320 characters"));
            }
            let parts: Vec<&str> = e.split('@').collect();
            if parts.len() != 2
                || parts
                    .iter()
                    .any(|p| p.is_empty() || p.chars().any(char::is_whitespace))
            {
                return Err(VoucherError::invalid("email is not an e-mail address"));
            }
        }
        if name.is_some_and(|n| n.chars().count() > MAX_TEXT) {
            return Err(VoucherError::invalid(format!(
                "name is longer than {MAX_TEXT} characters"
            )));
        }
        check_metadata(metadata.as_ref())
    })
}

/// The arguments of validate and redeem, checked.
struct Request<'a> {
    code: String,
    customer: Option<&'a str>,
    order_amount: Option<AnyNumeric>,
    amount: Option<AnyNumeric>,
}

impl<'a> Request<'a> {
    fn new(
        code: Option<&str>,
        customer: Option<&'a str>,
        order_amount: Option<AnyNumeric>,
        amount: Option<AnyNumeric>,
    ) -> Result<Self> {
        let code = pattern::normalize(code.ok_or(VoucherError::NullArgument("code"))?);
        if code.is_empty() {
            return Err(VoucherError::invalid("code must not be empty"));
        }
        if code.len() > MAX_CODE {
            return Err(VoucherError::invalid(format!(
                "code is longer than {MAX_CODE} characters"
            )));
        }
        if let Some(c) = customer {
            check_customer_id(Some(c))?;
        }
        if let Some(o) = &order_amount {
            check_money("order_amount", o)?;
        }
        if let Some(a) = &amount {
            check_money("amount", a)?;
            if is_zero(a) {
                return Err(VoucherError::invalid("amount must be positive"));
            }
            if order_amount.as_ref().is_some_and(|o| a > o) {
                return Err(VoucherError::invalid("amount exceeds order_amount"));
            }
        }
        Ok(Request {
            code,
            customer,
            order_amount,
            amount,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation: the look-up in SQL, the rules and the discount in Rust
// ---------------------------------------------------------------------------------------------

/// Decimal places of a currency's minor unit (ISO 4217): discounts are rounded to it. No
/// currency (or an unlisted one): 2.
fn currency_scale(currency: Option<&str>) -> i32 {
    match currency {
        Some(
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
            | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF",
        ) => 0,
        Some("BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND") => 3,
        _ => 2,
    }
}

/// SQL's LEAST / GREATEST over numerics: NULLs are ignored, and of equal values the first one
/// given is kept (its scale is what the caller sees).
fn pick(values: impl IntoIterator<Item = Option<AnyNumeric>>, least: bool) -> Option<AnyNumeric> {
    values
        .into_iter()
        .flatten()
        .fold(None, |best, v| match best {
            Some(b) if (least && v >= b) || (!least && v <= b) => Some(b),
            _ => Some(v),
        })
}

/// The discount for an order of `order_amount` under a campaign's discount rule: percent of the
/// order rounded to the currency's minor unit (half away from zero) and capped by `max_discount`
/// and by the order, a fixed amount off (never more than the order), or the order brought down
/// to a fixed price; 0 without a rule. NULL where it needs the order and has none (percent).
/// Numeric arithmetic is PostgreSQL's own (numeric_mul, numeric_div, numeric_round), so amounts
/// and their scales are exactly what the same expression in SQL gives. Also `voucher._discount`,
/// for the redemption statement.
#[pg_extern(immutable, parallel_safe, name = "_discount")]
fn discount(
    discount_type: Option<&str>,
    value: Option<AnyNumeric>,
    max_discount: Option<AnyNumeric>,
    currency: Option<&str>,
    order_amount: Option<AnyNumeric>,
) -> Option<AnyNumeric> {
    match (discount_type, value) {
        (Some("percent"), Some(value)) => {
            let share = order_amount.clone().map(|o| {
                let raw = o * value / AnyNumeric::from(100);
                // SAFETY: numeric_round(numeric, int4) takes and returns valid datums.
                unsafe {
                    pgrx::direct_function_call::<AnyNumeric>(
                        pg_sys::numeric_round,
                        &[raw.into_datum(), currency_scale(currency).into_datum()],
                    )
                }
                .expect("round returns a number")
            });
            pick(
                [
                    share,
                    max_discount.or_else(|| order_amount.clone()),
                    order_amount,
                ],
                true,
            )
        }
        (Some("amount"), Some(value)) => {
            let cap = order_amount.unwrap_or_else(|| value.clone());
            pick([Some(value), Some(cap)], true)
        }
        (Some("fixed"), Some(value)) => pick(
            [order_amount.map(|o| o - value), Some(AnyNumeric::from(0))],
            false,
        ),
        _ => Some(AnyNumeric::from(0)),
    }
}

/// The discount of campaign `c` for an order of `order` (an SQL expression).
fn discount_call(order: &str) -> String {
    format!(
        "voucher._discount(c.discount_type, c.discount_value, c.max_discount, c.currency, {order})"
    )
}

/// A code's voucher and campaign columns, as stored: $1 tenant, $2 code, [$3 customer]. The
/// rules are judged in Rust (`evaluate`): the statement only looks the rows up, so starting it
/// builds no expressions beyond plain columns.
fn evaluate_sql(with_customer: bool) -> String {
    let (used, joins) = if with_customer {
        (
            "u.used",
            "LEFT JOIN voucher.customer cu ON cu.tenant_id = v.tenant_id AND cu.source_id = $3
  LEFT JOIN voucher.customer_usage u ON u.tenant_id = v.tenant_id
        AND u.campaign_id = v.campaign_id AND u.customer_id = cu.customer_id",
        )
    } else {
        ("NULL::integer", "")
    };
    format!(
        "SELECT v.voucher_id, v.campaign_id, c.kind, v.balance, c.redemption_limit,
       c.per_customer_limit, v.active AND c.active, c.starts_at, c.expires_at, v.redeemed_count,
       c.min_order_amount, c.discount_type, c.discount_value, c.max_discount, c.currency, {used}
  FROM voucher.code v
  JOIN voucher.campaign c ON c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
  {joins}
 WHERE v.tenant_id = $1 AND v.code = $2"
    )
}

/// Wraps the CTEs `claim` (the UPDATE) and `rec` (the INSERT of the redemption, RETURNING *)
/// so the same statement writes the audit row (the row HMAC is computed over the jsonb exactly
/// as stored) and returns voucher_id, discount, balance_after.
fn with_audit(ctes: &str, actor: &str, order_id: &str, idempotency_key: &str) -> String {
    format!(
        "WITH {ctes},
ev AS (
    SELECT nextval('voucher.audit_event_id_seq') AS id, now() AS at, rec.voucher_id,
           rec.discount, rec.balance_after,
           jsonb_build_object('redemption_id', rec.redemption_id, 'campaign_id', rec.campaign_id,
                              'customer_id', rec.customer_id, 'order_id', {order_id},
                              'order_amount', rec.order_amount, 'amount', rec.amount,
                              'discount', rec.discount, 'balance_after', rec.balance_after,
                              'idempotency_key', {idempotency_key}) AS details
      FROM rec),
audit AS (
    INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type,
                                     object_id, details, row_hash)
    SELECT $1, ev.id, ev.at, {actor}::jsonb, 'redemption.created', 'voucher', ev.voucher_id::text,
           ev.details,
           voucher._audit_hash($1, ev.id, ev.at, {actor}::jsonb::text, 'redemption.created',
                               'voucher', ev.voucher_id::text, ev.details::text)
      FROM ev
    RETURNING event_id)
SELECT ev.voucher_id, ev.discount, ev.balance_after FROM ev CROSS JOIN audit"
    )
}

/// The common case in one statement: claim a use of the code if every rule passes and the
/// campaign has no per-customer limit, record the redemption and its audit row. When it matches
/// no row the caller evaluates the code to say why (or takes the per-customer path).
/// $1 tenant, $2 code, $3 order amount, $4 amount, $5 redemption id, $6 customer, $7 order id,
/// $8 idempotency key, $9 request hash, $10 metadata, $11 actor label, $12 actor (jsonb text).
fn fast_claim_sql() -> String {
    let ctes = format!(
        "claim AS (
    UPDATE voucher.code v
       SET redeemed_count = v.redeemed_count + 1,
           balance = v.balance - CASE WHEN c.kind = 'gift_card' THEN coalesce($4, $3) END
      FROM voucher.campaign c
     WHERE v.tenant_id = $1 AND v.code = $2
       AND c.tenant_id = v.tenant_id AND c.campaign_id = v.campaign_id
       AND v.active AND c.active
       AND (c.starts_at IS NULL OR c.starts_at <= now())
       AND (c.expires_at IS NULL OR c.expires_at > now())
       AND (c.redemption_limit IS NULL OR v.redeemed_count < c.redemption_limit)
       AND (c.min_order_amount IS NULL OR $3 >= c.min_order_amount)
       AND c.per_customer_limit IS NULL
       AND CASE WHEN c.kind = 'gift_card'
                THEN coalesce($4, $3) > 0 AND v.balance >= coalesce($4, $3)
                ELSE $4::numeric IS NULL
                     AND ($3 IS NOT NULL OR c.discount_type IS NULL
                          OR c.discount_type NOT IN ('percent', 'fixed')) END
    RETURNING v.voucher_id, v.campaign_id, v.balance,
              CASE WHEN c.kind = 'gift_card' THEN coalesce($4, $3) END AS spend,
              CASE WHEN c.kind = 'gift_card' THEN coalesce($4, $3) ELSE {discount} END AS discount),
rec AS (
    INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id,
        customer_id, order_id, order_amount, amount, discount, balance_after, idempotency_key,
        request_hash, metadata, redeemed_by)
    SELECT $1, $5, claim.voucher_id, claim.campaign_id, $6, $7, $3, claim.spend, claim.discount,
           claim.balance, $8, $9, $10, $11
      FROM claim
    RETURNING *)",
        discount = discount_call("$3")
    );
    with_audit(&ctes, "$12", "$7", "$8")
}

/// Claims a use (and a gift card amount) of an evaluated voucher, and records the redemption
/// and its audit row, in one statement.
/// $1 tenant, $2 voucher, $3 redemption limit, $4 spend, $5 redemption id, $6 campaign,
/// $7 customer, $8 order id, $9 order amount, $10 discount, $11 idempotency key,
/// $12 request hash, $13 metadata, $14 actor label, $15 actor (jsonb text).
fn claim_sql() -> String {
    let ctes = "claim AS (
    UPDATE voucher.code v
       SET redeemed_count = v.redeemed_count + 1, balance = v.balance - $4
     WHERE v.tenant_id = $1 AND v.voucher_id = $2 AND v.active
       AND ($3::integer IS NULL OR v.redeemed_count < $3)
       AND ($4::numeric IS NULL OR v.balance >= $4)
    RETURNING v.balance),
rec AS (
    INSERT INTO voucher.redemption (tenant_id, redemption_id, voucher_id, campaign_id,
        customer_id, order_id, order_amount, amount, discount, balance_after, idempotency_key,
        request_hash, metadata, redeemed_by)
    SELECT $1, $5, $2, $6, $7, $8, $9, $4, $10, claim.balance, $11, $12, $13, $14 FROM claim
    RETURNING *)";
    with_audit(ctes, "$15", "$8", "$11")
}

/// One code, as the evaluation statement sees it.
struct Voucher {
    voucher_id: pgrx::Uuid,
    campaign_id: pgrx::Uuid,
    kind: String,
    balance: Option<AnyNumeric>,
    redemption_limit: Option<i32>,
    per_customer_limit: Option<i32>,
    disabled: bool,
    not_started: bool,
    expired: bool,
    used_up: bool,
    has_minimum: bool,
    below_minimum: bool,
    discount_type: Option<String>,
    discount: Option<AnyNumeric>,
    customer_used_up: bool,
}

/// The verdict on a request.
enum Verdict {
    /// The code may be redeemed: the discount (None when it cannot be computed without
    /// order_amount, in validate) and what a gift card would spend.
    Valid {
        v: Voucher,
        discount: Option<AnyNumeric>,
        spend: Option<AnyNumeric>,
    },
    /// The first rule that fails, and the voucher if the code exists.
    Refused {
        sqlstate: &'static str,
        v: Option<Voucher>,
    },
}

/// Prepared statements, kept for the life of the backend.
#[derive(Default)]
struct Statements {
    evaluate_read: Option<OwnedPreparedStatement>,
    evaluate_read_customer: Option<OwnedPreparedStatement>,
    evaluate: Option<OwnedPreparedStatement>,
    evaluate_customer: Option<OwnedPreparedStatement>,
    fast_claim: Option<OwnedPreparedStatement>,
    claim: Option<OwnedPreparedStatement>,
}

thread_local! {
    static STATEMENTS: RefCell<Statements> = RefCell::new(Statements::default());
}

fn oids(types: &[pg_sys::Oid]) -> Vec<pg_sys::PgOid> {
    types.iter().map(|&o| o.into()).collect()
}

/// Runs a kept statement, preparing it on first use. `mutating` statements see a fresh snapshot
/// (what concurrent transactions committed while we waited on a lock).
fn run<'c>(
    client: &SpiClient<'c>,
    pick: fn(&mut Statements) -> &mut Option<OwnedPreparedStatement>,
    sql: impl FnOnce() -> String,
    types: &[pg_sys::Oid],
    mutating: bool,
    args: &[DatumWithOid],
) -> pgrx::spi::SpiTupleTable<'c> {
    STATEMENTS.with(|s| {
        let mut s = s.borrow_mut();
        let slot = pick(&mut s);
        if slot.is_none() {
            let text = sql();
            let prepared = if mutating {
                client.prepare_mut(text.as_str(), &oids(types))
            } else {
                client.prepare(text.as_str(), &oids(types))
            };
            *slot = Some(prepared.expect("statement prepares").keep());
        }
        client
            .select(slot.as_ref().unwrap(), None, args)
            .expect("statement runs")
    })
}

fn evaluate(
    client: &SpiClient<'_>,
    tenant: pgrx::Uuid,
    req: &Request,
    mutating: bool,
) -> Option<Voucher> {
    let uuid = pgrx::Uuid::type_oid();
    let text = pg_sys::TEXTOID;
    let mut args: Vec<DatumWithOid> = vec![tenant.into(), req.code.as_str().into()];
    let rows = match (req.customer, mutating) {
        (None, false) => run(
            client,
            |s| &mut s.evaluate_read,
            || evaluate_sql(false),
            &[uuid, text],
            false,
            &args,
        ),
        (None, true) => run(
            client,
            |s| &mut s.evaluate,
            || evaluate_sql(false),
            &[uuid, text],
            true,
            &args,
        ),
        (Some(customer), m) => {
            args.push(customer.into());
            let types = [uuid, text, text];
            if m {
                run(
                    client,
                    |s| &mut s.evaluate_customer,
                    || evaluate_sql(true),
                    &types,
                    true,
                    &args,
                )
            } else {
                run(
                    client,
                    |s| &mut s.evaluate_read_customer,
                    || evaluate_sql(true),
                    &types,
                    false,
                    &args,
                )
            }
        }
    };
    if rows.is_empty() {
        return None;
    }
    let r = rows.first();
    // now(): the transaction's start, as the SQL rules used to compare against
    // SAFETY: reads backend-local state.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let time = |i| {
        r.get::<TimestampWithTimeZone>(i)
            .ok()
            .flatten()
            .map(pg_sys::TimestampTz::from)
    };
    let redemption_limit: Option<i32> = r.get(5).ok().flatten();
    let per_customer_limit: Option<i32> = r.get(6).ok().flatten();
    let redeemed: i32 = r.get(10).ok().flatten().unwrap_or(0);
    let minimum: Option<AnyNumeric> = r.get(11).ok().flatten();
    let discount_type: Option<String> = r.get(12).ok().flatten();
    let currency: Option<String> = r.get(15).ok().flatten();
    let used: i32 = r.get(16).ok().flatten().unwrap_or(0);
    Some(Voucher {
        voucher_id: r.get(1).ok().flatten()?,
        campaign_id: r.get(2).ok().flatten()?,
        kind: r.get(3).ok().flatten()?,
        balance: r.get(4).ok().flatten(),
        redemption_limit,
        per_customer_limit,
        disabled: !r.get::<bool>(7).ok().flatten().unwrap_or(false),
        not_started: time(8).is_some_and(|t| t > now),
        expired: time(9).is_some_and(|t| t <= now),
        used_up: redemption_limit.is_some_and(|l| redeemed >= l),
        has_minimum: minimum.is_some(),
        below_minimum: match (&req.order_amount, &minimum) {
            (Some(o), Some(m)) => o < m,
            _ => false,
        },
        discount: discount(
            discount_type.as_deref(),
            r.get(13).ok().flatten(),
            r.get(14).ok().flatten(),
            currency.as_deref(),
            req.order_amount.clone(),
        ),
        discount_type,
        customer_used_up: per_customer_limit.is_some_and(|l| used >= l),
    })
}

/// Applies the rules in their documented order: exists, enabled, started, not expired, uses
/// left, minimum order, per-customer limit, balance. Input a rule needs but did not get raises
/// 22023 when `strict` (redeem); validate skips what it cannot compute.
fn judge(found: Option<Voucher>, req: &Request, strict: bool) -> Result<Verdict> {
    let Some(v) = found else {
        return Ok(Verdict::Refused {
            sqlstate: "VC001",
            v: None,
        });
    };
    let refuse = |sqlstate, v| {
        Ok(Verdict::Refused {
            sqlstate,
            v: Some(v),
        })
    };
    if v.disabled {
        return refuse("VC008", v);
    }
    if v.not_started {
        return refuse("VC003", v);
    }
    if v.expired {
        return refuse("VC002", v);
    }
    if v.used_up {
        return refuse("VC004", v);
    }
    if v.has_minimum {
        if req.order_amount.is_none() {
            if strict {
                return Err(VoucherError::invalid_hint(
                    "this voucher needs order_amount",
                    "its campaign has a minimum order amount",
                ));
            }
        } else if v.below_minimum {
            return refuse("VC007", v);
        }
    }
    if v.per_customer_limit.is_some() {
        if req.customer.is_none() {
            if strict {
                return Err(VoucherError::invalid_hint(
                    "this voucher needs customer",
                    "its campaign limits redemptions per customer",
                ));
            }
        } else if v.customer_used_up {
            return refuse("VC005", v);
        }
    }
    if v.kind == "gift_card" {
        let Some(spend) = req.amount.clone().or_else(|| req.order_amount.clone()) else {
            if strict {
                return Err(VoucherError::invalid(
                    "a gift card redemption needs amount or order_amount",
                ));
            }
            return Ok(Verdict::Valid {
                v,
                discount: None,
                spend: None,
            });
        };
        if is_zero(&spend) {
            return Err(VoucherError::invalid("nothing to spend: order_amount is 0"));
        }
        if v.balance.as_ref().is_none_or(|b| &spend > b) {
            return refuse("VC006", v);
        }
        return Ok(Verdict::Valid {
            v,
            discount: Some(spend.clone()),
            spend: Some(spend),
        });
    }
    if req.amount.is_some() {
        return Err(VoucherError::invalid_hint(
            "amount applies to gift cards only",
            "pass order_amount for a discount voucher",
        ));
    }
    let needs_order = matches!(v.discount_type.as_deref(), Some("percent" | "fixed"));
    if needs_order && req.order_amount.is_none() {
        if strict {
            return Err(VoucherError::invalid(format!(
                "a {} discount needs order_amount",
                v.discount_type.as_deref().unwrap_or_default()
            )));
        }
        return Ok(Verdict::Valid {
            v,
            discount: None,
            spend: None,
        });
    }
    let discount = v.discount.clone();
    Ok(Verdict::Valid {
        v,
        discount,
        spend: None,
    })
}

/// For a code that does not exist: does it look like a code of a check-character campaign with
/// a mistyped character? Checked after the lookup missed, never before: an imported code may
/// share a check-character campaign's shape without carrying its check character.
fn looks_mistyped(client: &SpiClient<'_>, tenant: pgrx::Uuid, code: &str) -> bool {
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

const MISTYPED: &str = "the check character does not match: probably a typo";

// ---------------------------------------------------------------------------------------------
// validate
// ---------------------------------------------------------------------------------------------

/// valid, reason, sqlstate, voucher_id, discount, balance
type ValidateRow = (
    bool,
    String,
    Option<String>,
    Option<pgrx::Uuid>,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
);

fn validate_impl(
    code: Option<&str>,
    customer: Option<&str>,
    order_amount: Option<AnyNumeric>,
) -> Result<ValidateRow> {
    let ctx = context::authorize(Action::Validate)?;
    let req = Request::new(code, customer, order_amount, None)?;
    let tenant = ctx.tenant_uuid();
    as_definer(|| {
        Spi::connect(|client| {
            Ok(
                match judge(evaluate(client, tenant, &req, false), &req, false)? {
                    Verdict::Valid { v, discount, .. } => (
                        true,
                        "ok".to_string(),
                        None,
                        Some(v.voucher_id),
                        discount,
                        v.balance,
                    ),
                    Verdict::Refused { sqlstate, v } => {
                        let mut reason = crate::common::error::entry(sqlstate)
                            .expect("catalogued")
                            .message
                            .to_string();
                        if v.is_none() && looks_mistyped(client, tenant, &req.code) {
                            reason = format!("{reason}: {MISTYPED}");
                        }
                        let (id, balance) =
                            v.map_or((None, None), |v| (Some(v.voucher_id), v.balance));
                        (false, reason, Some(sqlstate.to_string()), id, None, balance)
                    }
                },
            )
        })
    })
}

/// Would this code redeem? Reports the verdict without changing anything; never raises for a
/// business rule.
#[pg_extern(stable, parallel_restricted)]
#[allow(clippy::type_complexity)] // pgrx reads the result columns from this signature
fn validate(
    code: Option<&str>,
    customer: default!(Option<&str>, "NULL"),
    order_amount: default!(Option<AnyNumeric>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(valid, bool),
        name!(reason, String),
        name!(sqlstate, Option<String>),
        name!(voucher_id, Option<pgrx::Uuid>),
        name!(discount, Option<AnyNumeric>),
        name!(balance, Option<AnyNumeric>),
    ),
> {
    TableIterator::once(api(|| validate_impl(code, customer, order_amount)))
}

// ---------------------------------------------------------------------------------------------
// redeem
// ---------------------------------------------------------------------------------------------

/// redemption_id, voucher_id, discount, balance_after, replayed
type RedeemRow = (pgrx::Uuid, pgrx::Uuid, AnyNumeric, Option<AnyNumeric>, bool);

/// SHA-256 over the canonical arguments: a replay under the same idempotency key must match.
fn fingerprint(req: &Request, order_id: Option<&str>, metadata: Option<&JsonB>) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut field = |v: Option<String>| match v {
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        None => h.update([0u8]),
    };
    field(Some(req.code.clone()));
    field(req.customer.map(str::to_string));
    field(req.order_amount.as_ref().map(canonical_number));
    field(req.amount.as_ref().map(canonical_number));
    field(order_id.map(str::to_string));
    field(metadata.map(|m| m.0.to_string()));
    h.finalize().to_vec()
}

fn customer_id(client: &mut SpiClient<'_>, tenant: pgrx::Uuid, source_id: &str) -> pgrx::Uuid {
    let find = |client: &mut SpiClient<'_>| {
        client
            .update(
                "SELECT customer_id FROM voucher.customer WHERE tenant_id = $1 AND source_id = $2",
                None,
                &[tenant.into(), source_id.into()],
            )
            .expect("customer lookup")
            .first()
            .get_one::<pgrx::Uuid>()
            .ok()
            .flatten()
    };
    if let Some(id) = find(client) {
        return id;
    }
    let created = client
        .update(
            "INSERT INTO voucher.customer (tenant_id, customer_id, source_id) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, source_id) DO NOTHING RETURNING customer_id",
            None,
            &[
                tenant.into(),
                pgrx::Uuid::from_bytes(rng::uuid_v7()).into(),
                source_id.into(),
            ],
        )
        .expect("customer insert")
        .first()
        .get_one::<pgrx::Uuid>()
        .ok()
        .flatten();
    created
        .or_else(|| find(client))
        .expect("the customer exists now")
}

#[allow(clippy::too_many_arguments)]
fn redeem_impl(
    code: Option<&str>,
    customer: Option<&str>,
    order_amount: Option<AnyNumeric>,
    amount: Option<AnyNumeric>,
    order_id: Option<&str>,
    idempotency_key: Option<&str>,
    metadata: Option<JsonB>,
) -> Result<RedeemRow> {
    let ctx = context::authorize(Action::Redeem)?;
    let req = Request::new(code, customer, order_amount, amount)?;
    if order_id.is_some_and(|o| o.chars().count() > MAX_TEXT)
        || idempotency_key.is_some_and(|k| k.chars().count() > MAX_TEXT)
    {
        return Err(VoucherError::invalid(format!(
            "order_id and idempotency_key are at most {MAX_TEXT} characters"
        )));
    }
    if idempotency_key == Some("") {
        return Err(VoucherError::invalid("idempotency_key must not be empty"));
    }
    check_metadata(metadata.as_ref())?;
    let hash = idempotency_key.map(|_| fingerprint(&req, order_id, metadata.as_ref()));
    let tenant = ctx.tenant_uuid();
    let actor = context::actor_label(&ctx);
    let actor_json = audit::actor_json(Some(&ctx)).to_string();

    let outcome = as_definer(|| {
        Spi::connect_mut(|client| {
            // A retry with the same key returns the first result. The lock makes a racing twin
            // wait for the first call to commit (or fail); the fresh snapshot then shows its row.
            if let Some(key) = idempotency_key {
                client
                    .update(
                        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1::text), \
                                                                 pg_catalog.hashtext($2))",
                        None,
                        &[tenant.into(), key.into()],
                    )
                    .expect("advisory lock");
                let prior = client
                    .update(
                        "SELECT redemption_id, voucher_id, discount, balance_after, request_hash \
                           FROM voucher.redemption WHERE tenant_id = $1 AND idempotency_key = $2",
                        None,
                        &[tenant.into(), key.into()],
                    )
                    .expect("idempotency lookup");
                if !prior.is_empty() {
                    let p = prior.first();
                    if p.get::<Vec<u8>>(5).ok().flatten() != hash {
                        return Err(VoucherError::rule("VC009"));
                    }
                    return Ok((
                        p.get(1).ok().flatten().expect("redemption_id"),
                        p.get(2).ok().flatten().expect("voucher_id"),
                        p.get(3).ok().flatten().expect("discount"),
                        p.get(4).ok().flatten(),
                        true,
                    ));
                }
            }

            let cust = req.customer.map(|c| customer_id(client, tenant, c));
            let uuid = pgrx::Uuid::type_oid();
            let numeric = pg_sys::NUMERICOID;
            let text = pg_sys::TEXTOID;
            let redemption_id = pgrx::Uuid::from_bytes(rng::uuid_v7());
            audit::take_xid();

            let fast = run(
                client,
                |s| &mut s.fast_claim,
                fast_claim_sql,
                &[
                    uuid,
                    text,
                    numeric,
                    numeric,
                    uuid,
                    uuid,
                    text,
                    text,
                    pg_sys::BYTEAOID,
                    pg_sys::JSONBOID,
                    text,
                    text,
                ],
                true,
                &[
                    tenant.into(),
                    req.code.as_str().into(),
                    req.order_amount.clone().into(),
                    req.amount.clone().into(),
                    redemption_id.into(),
                    cust.into(),
                    order_id.into(),
                    idempotency_key.into(),
                    hash.clone().into(),
                    metadata.as_ref().map(|m| JsonB(m.0.clone())).into(),
                    actor.as_str().into(),
                    actor_json.as_str().into(),
                ],
            );
            if !fast.is_empty() {
                let row = fast.first();
                return Ok((
                    redemption_id,
                    row.get(1).ok().flatten().expect("voucher_id"),
                    row.get(2).ok().flatten().expect("discount"),
                    row.get(3).ok().flatten(),
                    false,
                ));
            }

            // The code was refused, or its campaign limits redemptions per customer: evaluate it
            // to say why, or to claim the customer's allowance first.
            let (v, discount, spend) =
                match judge(evaluate(client, tenant, &req, true), &req, true)? {
                    Verdict::Valid { v, discount, spend } => (v, discount, spend),
                    Verdict::Refused {
                        sqlstate: "VC001", ..
                    } if looks_mistyped(client, tenant, &req.code) => {
                        return Err(VoucherError::rule_with_hint(
                            "VC001",
                            MISTYPED,
                            "check the code for a mistyped character",
                        ));
                    }
                    Verdict::Refused { sqlstate, .. } => return Err(VoucherError::rule(sqlstate)),
                };

            if let (Some(limit), Some(cust)) = (v.per_customer_limit, cust) {
                let claimed = client
                    .update(
                        "INSERT INTO voucher.customer_usage AS u (tenant_id, campaign_id, customer_id, used) \
                         VALUES ($1, $2, $3, 1) \
                         ON CONFLICT (tenant_id, campaign_id, customer_id) \
                         DO UPDATE SET used = u.used + 1 WHERE u.used < $4 RETURNING used",
                        None,
                        &[tenant.into(), v.campaign_id.into(), cust.into(), limit.into()],
                    )
                    .expect("usage claim");
                if claimed.is_empty() {
                    return Err(VoucherError::rule("VC005"));
                }
            }

            // The claim and its record, one statement: a conditional UPDATE (a concurrent redeemer
            // that got there first makes it match no row, and a fresh evaluation says why) feeding
            // the INSERT of the redemption.
            let discount = discount.unwrap_or_else(|| AnyNumeric::from(0));
            let claimed = run(
                client,
                |s| &mut s.claim,
                claim_sql,
                &[
                    uuid,
                    uuid,
                    pg_sys::INT4OID,
                    numeric,
                    uuid,
                    uuid,
                    uuid,
                    text,
                    numeric,
                    numeric,
                    text,
                    pg_sys::BYTEAOID,
                    pg_sys::JSONBOID,
                    text,
                    text,
                ],
                true,
                &[
                    tenant.into(),
                    v.voucher_id.into(),
                    v.redemption_limit.into(),
                    spend.into(),
                    redemption_id.into(),
                    v.campaign_id.into(),
                    cust.into(),
                    order_id.into(),
                    req.order_amount.clone().into(),
                    discount.clone().into(),
                    idempotency_key.into(),
                    hash.into(),
                    metadata.into(),
                    actor.as_str().into(),
                    actor_json.as_str().into(),
                ],
            );
            if claimed.is_empty() {
                return Err(
                    match judge(evaluate(client, tenant, &req, true), &req, true)? {
                        Verdict::Refused { sqlstate, .. } => VoucherError::rule(sqlstate),
                        Verdict::Valid { .. } => VoucherError::rule("VC004"),
                    },
                );
            }
            let balance_after = claimed.first().get::<AnyNumeric>(3).ok().flatten();
            Ok((redemption_id, v.voucher_id, discount, balance_after, false))
        })
    });
    // A refused redemption is recorded although the error will roll this transaction back.
    if let Err(VoucherError::Rule { sqlstate, .. }) = &outcome {
        audit::write_durably(audit::Event {
            tenant: ctx.tenant,
            actor: audit::actor_json(Some(&ctx)),
            action: "redemption.failed",
            object_type: Some("voucher"),
            object_id: None,
            details: serde_json::json!({
                "code": req.code, "sqlstate": sqlstate,
                "reason": crate::common::error::entry(sqlstate).map(|e| e.message),
                "customer": req.customer, "order_id": order_id,
            }),
            at: Some(unsafe { pg_sys::GetCurrentTimestamp() }),
        });
    }
    outcome
}

/// Redeems a code atomically; raises on failure. `amount` spends from a gift card.
#[pg_extern(volatile, parallel_unsafe)]
fn redeem(
    code: Option<&str>,
    customer: default!(Option<&str>, "NULL"),
    order_amount: default!(Option<AnyNumeric>, "NULL"),
    amount: default!(Option<AnyNumeric>, "NULL"),
    order_id: default!(Option<&str>, "NULL"),
    idempotency_key: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(redemption_id, pgrx::Uuid),
        name!(voucher_id, pgrx::Uuid),
        name!(discount, AnyNumeric),
        name!(balance_after, Option<AnyNumeric>),
        name!(replayed, bool),
    ),
> {
    TableIterator::once(api(|| {
        redeem_impl(
            code,
            customer,
            order_amount,
            amount,
            order_id,
            idempotency_key,
            metadata,
        )
    }))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// `_discount` (Rust, over PostgreSQL's numeric functions) gives what the rule written in
    /// SQL gives, value and scale, over every discount type, cap, currency scale and order.
    #[pg_test]
    fn discount_is_the_sql_rule() {
        let (checked, different) = Spi::get_two::<i64, i64>(
            "WITH cases AS (
               SELECT t, CASE WHEN t IS NOT NULL THEN v END AS v, m, cur, o
                 FROM unnest(ARRAY['percent', 'amount', 'fixed', NULL]) t,
                      unnest('{0, 0.5, 10, 12.5, 33.3333, 100, 250.00}'::numeric[]) v,
                      unnest('{NULL, 0, 5, 7.25}'::numeric[]) m,
                      unnest(ARRAY[NULL, 'EUR', 'JPY', 'KWD', 'ZZZ']) cur,
                      unnest('{NULL, 0, 0.01, 19.99, 80, 123.4567, 1000, 999999999999.9999}'::numeric[]) o)
             SELECT count(*), count(*) FILTER (WHERE
                    voucher._discount(t, v, m, cur, o)::text IS DISTINCT FROM (CASE t
                      WHEN 'percent' THEN least(round(o * v / 100, CASE WHEN cur = 'JPY' THEN 0
                                                                        WHEN cur = 'KWD' THEN 3
                                                                        ELSE 2 END),
                                                coalesce(m, o), o)
                      WHEN 'amount' THEN least(v, coalesce(o, v))
                      WHEN 'fixed' THEN greatest(o - v, 0)
                      ELSE 0 END)::text)
               FROM cases",
        )
        .unwrap();
        assert_eq!((checked, different), (Some(4 * 7 * 4 * 5 * 8), Some(0)));
    }
}

#[cfg(test)]
mod unit {
    #[test]
    fn evaluation_variants_differ_only_in_customer_joins() {
        let plain = super::evaluate_sql(false);
        let with = super::evaluate_sql(true);
        assert!(with.contains("cu.source_id = $3"));
        assert!(!plain.contains("$3"));
    }

    #[test]
    fn the_fast_claim_uses_every_parameter() {
        let sql = super::fast_claim_sql();
        for n in 1..=12 {
            assert!(sql.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!sql.contains("$13"));
        assert!(sql.contains("per_customer_limit IS NULL"));
        assert!(sql.contains("'redemption.created'"));
        let sql = super::claim_sql();
        for n in 1..=15 {
            assert!(sql.contains(&format!("${n}")), "${n} unused");
        }
        assert!(!sql.contains("$16"));
    }
}
