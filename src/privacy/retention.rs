//! Customer retention across every tenant: `voucher.run_customer_retention(batch_size)`, for a
//! scheduler (pg_cron) and for the background worker (src/ops/worker.rs, setting
//! `voucher.customer_retention_interval`).
//!
//! - Who: operators and superusers (as `seal_audit`); refused with 25006 on a standby.
//! - Per tenant: only tenants whose `customer_retention_days` is set; each one's customers are
//!   forgotten under that tenant's own context (`context::acting_for`, role admin, the operator
//!   named in the audit rows), by the same `voucher._forget_inactive` a tenant's admin runs, so
//!   row-level security and the `customer.forgotten` audit rows stay per tenant.
//! - Bounded: at most `batch_size` customers per call across all tenants. First every tenant
//!   gets an equal share (at least 1), in an order that starts at a random tenant, so a tenant
//!   with a large backlog cannot starve the others; what is left of the budget then goes to the
//!   tenants that used their whole share.
//! - Resumable: what was forgotten no longer qualifies, so the next call continues; call it until
//!   it returns 0.
//! - Failure of one tenant (e.g. its keys cannot be opened): its subtransaction is rolled back,
//!   a WARNING names the tenant and the error (never a customer), the other tenants go on.
//!   Cancellation and shutdown (SQLSTATE class 57) and resource errors (53) end the call.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::common::error::{api, Result, VoucherError};
use crate::common::rng;
use crate::tenancy::context;
use crate::tenancy::definer;
use crate::tenancy::roles::KeyRole;

/// The tenants with retention on.
fn tenants_with_retention() -> Vec<pgrx::Uuid> {
    context::all_tenants()
        .into_iter()
        .filter(|t| {
            let days = context::as_tenant_definer(**t, || {
                Spi::get_one_with_args::<i32>(
                    "SELECT voucher._privacy_setting($1, 'customer_retention_days')::integer",
                    &[(*t).into()],
                )
            });
            matches!(days, Ok(Some(d)) if d > 0)
        })
        .collect()
}

enum Outcome {
    Forgot(i64),
    /// The tenant's batch failed and was rolled back; the call goes on.
    Failed,
}

/// Forgets up to `budget` inactive customers of `tenant`, in a subtransaction.
fn forget_for(tenant: pgrx::Uuid, budget: i32, operator: pg_sys::Oid) -> Outcome {
    let run = || {
        context::acting_for(*tenant, KeyRole::Admin, operator, || {
            context::as_tenant_definer(*tenant, || {
                Spi::get_one_with_args::<i64>(
                    "SELECT voucher._forget_inactive($1, $2)",
                    &[tenant.into(), budget.into()],
                )
            })
        })
    };
    // SAFETY: the internal-subtransaction pattern of PL/pgSQL exception blocks (as in
    // src/audit/pending.rs); no SPI connection is open across it.
    unsafe {
        let oldcxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let result: std::result::Result<i64, Box<CaughtError>> =
            PgTryBuilder::new(|| Ok(run().ok().flatten().unwrap_or(0)))
                .catch_others(|e| Err(Box::new(e)))
                .execute();
        match &result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(oldcxt);
        pg_sys::CurrentResourceOwner = owner;
        let e = match result {
            Ok(n) => return Outcome::Forgot(n),
            Err(e) => e,
        };
        let (code, message) = match e.as_ref() {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                (sqlstate(r.sql_error_code() as i32), r.message().to_string())
            }
            CaughtError::RustPanic { .. } => (*e).rethrow(),
        };
        if code.starts_with("57") || code.starts_with("53") {
            (*e).rethrow();
        }
        warning!("voucher_ext customer retention: tenant {tenant} skipped: {code}: {message}");
        Outcome::Failed
    }
}

/// The five characters of a SQLSTATE from Postgres' packed form (MAKE_SQLSTATE).
fn sqlstate(packed: i32) -> String {
    (0..5)
        .map(|i| char::from(((packed >> (6 * i)) & 0x3F) as u8 + b'0'))
        .collect()
}

fn run_impl(batch_size: Option<i32>) -> Result<i64> {
    let operator = definer::caller();
    if !definer::is_operator(operator) {
        return Err(VoucherError::forbidden_hint(
            "only voucher_operator members may run customer retention for every tenant",
            "an admin key forgets its own tenant's inactive customers with \
             voucher.forget_inactive_customers()",
        ));
    }
    let batch = batch_size.ok_or(VoucherError::NullArgument("batch_size"))?;
    if !(1..=100_000).contains(&batch) {
        return Err(VoucherError::invalid(
            "batch_size must be between 1 and 100000",
        ));
    }
    crate::scale::standby::refuse_writes("run customer retention")?;
    let mut tenants = tenants_with_retention();
    if tenants.is_empty() {
        return Ok(0);
    }
    let start = u64::from_le_bytes(rng::os_bytes::<8>()) % tenants.len() as u64;
    tenants.rotate_left(start as usize);
    let share = (batch / tenants.len() as i32).max(1);
    let mut left = batch as i64;
    let mut more = Vec::new();
    for t in tenants {
        if left == 0 {
            break;
        }
        let ask = (share as i64).min(left) as i32;
        if let Outcome::Forgot(n) = forget_for(t, ask, operator) {
            left -= n;
            if n == ask as i64 {
                more.push(t);
            }
        }
    }
    for t in more {
        if left == 0 {
            break;
        }
        if let Outcome::Forgot(n) = forget_for(t, left as i32, operator) {
            left -= n;
        }
    }
    Ok(batch as i64 - left)
}

#[cfg(test)]
mod tests {
    use super::sqlstate;
    use pgrx::PgSqlErrorCode;

    #[test]
    fn sqlstates_unpack() {
        assert_eq!(
            sqlstate(PgSqlErrorCode::ERRCODE_QUERY_CANCELED as i32),
            "57014"
        );
        assert_eq!(
            sqlstate(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED as i32),
            "XX001"
        );
        assert_eq!(
            sqlstate(PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN as i32),
            "57P01"
        );
    }
}

/// Operators: forgets, in one bounded batch across every tenant with `customer_retention_days`
/// set, customers without activity for longer than their tenant keeps them (each tenant under
/// its own context and audit log). Returns how many; call it until it returns 0.
#[pg_extern(volatile, parallel_unsafe)]
fn run_customer_retention(batch_size: default!(Option<i32>, 1000)) -> i64 {
    api(|| run_impl(batch_size))
}
