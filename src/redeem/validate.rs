//! `validate`: would this code redeem? Reports the verdict without changing anything.

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use super::lookup::{self, Found};
use super::rules::{judge, Request, Verdict};
use super::statements::{evaluate, looks_mistyped, used, voucher_of, MISTYPED};
use crate::common::error::{api, Result, VoucherError};
use crate::common::srf::TableIterator;
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;
use crate::throttle;

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
    client: Option<&str>,
) -> Result<ValidateRow> {
    let ctx = context::authorize(Action::Validate)?;
    let req = Request::new(code, customer, order_amount, None)?;
    // a locked-out identity learns nothing, also about codes that exist
    let guard = throttle::Guard::new(&ctx, req.customer, client)?;
    match guard.check() {
        Ok(()) => {}
        Err(e @ VoucherError::Rule { .. }) => {
            let (message, _, hint) = e.parts();
            let reason = match hint {
                Some(h) => format!("{message}: {h}"),
                None => message,
            };
            return Ok((
                false,
                reason,
                Some(e.sqlstate().to_string()),
                None,
                None,
                None,
            ));
        }
        Err(e) => return Err(e),
    }
    let tenant = ctx.tenant_uuid();
    // SPI only where the probes cannot answer alone: a per-customer limit, a code not found
    // (the typo check), or the statement as the fallback
    let row = as_definer(|| {
        let found = match lookup::find(tenant, &req.code) {
            Found::Row(columns) => Some(voucher_of(&req, *columns, |campaign, customer| {
                Spi::connect(|client| used(client, tenant, campaign, customer, false))
            })),
            Found::NoSuchCode => None,
            Found::Fallback => Spi::connect(|client| evaluate(client, tenant, &req, false)),
        };
        Ok(match judge(found, &req, false)? {
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
                if v.is_none() && Spi::connect(|client| looks_mistyped(client, tenant, &req.code)) {
                    reason = format!("{reason}: {MISTYPED}");
                }
                let (id, balance) = v.map_or((None, None), |v| (Some(v.voucher_id), v.balance));
                (false, reason, Some(sqlstate.to_string()), id, None, balance)
            }
        })
    })?;
    // a failed look-up counts towards a lock-out
    if row.2.as_deref() == Some("VC001") {
        guard.failed(&ctx)?;
    }
    Ok(row)
}

/// Would this code redeem? Reports the verdict without changing anything; never raises for a
/// business rule.
#[pg_extern(stable, parallel_restricted)]
#[allow(clippy::type_complexity)] // pgrx reads the result columns from this signature
fn validate(
    code: Option<&str>,
    customer: default!(Option<&str>, "NULL"),
    order_amount: default!(Option<AnyNumeric>, "NULL"),
    client: default!(Option<&str>, "NULL"),
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
    TableIterator::once(api(|| validate_impl(code, customer, order_amount, client)))
}
