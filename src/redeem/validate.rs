//! `validate`: would this code redeem? Reports the verdict without changing anything.

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use super::rules::{judge, Request, Verdict};
use super::statements::{evaluate, looks_mistyped, MISTYPED};
use crate::common::error::{api, Result};
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;

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
