//! The rules of validation and redemption: the request's arguments checked, the voucher as the
//! look-up found it, and the verdict, applied in the documented order.

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use crate::codes::pattern::{self, MAX_CODE};
use crate::common::error::{api, Result, VoucherError};
use crate::customers::check_customer_id;

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
pub fn canonical_number(n: &AnyNumeric) -> String {
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

pub fn is_zero(n: &AnyNumeric) -> bool {
    n.to_string()
        .trim_start_matches('0')
        .trim_start_matches('.')
        .trim_start_matches('0')
        .is_empty()
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

/// The arguments of validate and redeem, checked.
pub struct Request<'a> {
    pub code: String,
    pub customer: Option<&'a str>,
    pub order_amount: Option<AnyNumeric>,
    pub amount: Option<AnyNumeric>,
}

impl<'a> Request<'a> {
    pub fn new(
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

/// One code, as the evaluation statement sees it.
pub struct Voucher {
    pub voucher_id: pgrx::Uuid,
    pub campaign_id: pgrx::Uuid,
    pub kind: String,
    pub balance: Option<AnyNumeric>,
    pub redemption_limit: Option<i32>,
    pub per_customer_limit: Option<i32>,
    pub disabled: bool,
    pub not_started: bool,
    pub expired: bool,
    pub used_up: bool,
    pub has_minimum: bool,
    pub below_minimum: bool,
    pub discount_type: Option<String>,
    pub discount: Option<AnyNumeric>,
    pub customer_used_up: bool,
}

/// The verdict on a request.
pub enum Verdict {
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

/// Applies the rules in their documented order: exists, enabled, started, not expired, uses
/// left, minimum order, per-customer limit, balance. Input a rule needs but did not get raises
/// 22023 when `strict` (redeem); validate skips what it cannot compute.
pub fn judge(found: Option<Voucher>, req: &Request, strict: bool) -> Result<Verdict> {
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
