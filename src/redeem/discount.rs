//! The discount of a campaign's rule for an order: one function for validate (Rust) and redeem's
//! claim statement (`voucher._discount`), so the two cannot disagree.

use pgrx::prelude::*;
use pgrx::{AnyNumeric, IntoDatum};

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
pub fn discount(
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
pub fn discount_call(order: &str) -> String {
    format!(
        "voucher._discount(c.discount_type, c.discount_value, c.max_discount, c.currency, {order})"
    )
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
