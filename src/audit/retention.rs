//! Retention: `purge_audit` removes sealed rows older than the tenant's retention; the chain
//! restarts from the last removed row's chain hash, so what remains still verifies.

use std::cell::Cell;

use pgrx::prelude::*;

use super::write::insert;
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::Event;
use crate::tenancy::context;
use crate::tenancy::context::actor_json;
use crate::tenancy::definer;
use crate::tenancy::roles::Action;

thread_local! {
    static PURGING: Cell<bool> = const { Cell::new(false) };
}

/// Internal, for the append-only trigger: is voucher.purge_audit() deleting right now?
#[pg_extern(stable, parallel_safe, name = "_audit_purging")]
fn audit_purging() -> bool {
    // scale: on a Citus worker, the coordinator's permit for this transaction
    PURGING.with(|p| p.get()) || crate::scale::cluster::purge_permitted_here()
}

/// At the end of a transaction: no purge is running any more.
pub fn end_of_transaction() {
    PURGING.with(|p| p.set(false));
}

fn purge_impl(older_than: Option<Interval>) -> Result<i64> {
    let ctx = context::authorize(Action::Administer)?;
    // SAFETY: checks the calling role.
    let superuser = unsafe { pg_sys::superuser_arg(definer::caller()) };
    if let Some(i) = &older_than {
        let short = Spi::get_one_with_args::<bool>("SELECT $1 < interval '1 day'", &[(*i).into()])
            .expect("interval comparison")
            .unwrap_or(true);
        if short && !superuser {
            return Err(VoucherError::invalid_hint(
                "older_than must be at least one day",
                "only a superuser may purge younger audit rows",
            ));
        }
    }
    let t = pgrx::Uuid::from_bytes(ctx.tenant);
    context::as_tenant_definer(ctx.tenant, || {
        Spi::connect_mut(|client| {
            // only sealed rows go, and the chain restarts from the last one removed
            let cut = client
                .update(
                    "SELECT max(e.event_id), count(*) FROM voucher.audit_event e \
                       JOIN voucher.tenant x ON x.tenant_id = e.tenant_id \
                       JOIN voucher.audit_state s ON s.tenant_id = e.tenant_id \
                      WHERE e.tenant_id = $1 AND e.at < now() - coalesce($2, x.audit_retention) \
                        AND e.event_id <= s.sealed_through",
                    None,
                    &[t.into(), older_than.into()],
                )
                .expect("purge horizon");
            let row = cut.first();
            let Some(through) = row.get::<i64>(1).ok().flatten() else {
                return Ok(0);
            };
            let head = client
                .update(
                    "SELECT chain_hash FROM voucher.audit_chain WHERE tenant_id = $1 AND event_id = $2",
                    None,
                    &[t.into(), through.into()],
                )
                .expect("chain head")
                .first()
                .get_one::<Vec<u8>>()
                .ok()
                .flatten();
            PURGING.with(|p| p.set(true));
            let permit = crate::scale::cluster::permit_purge(); // scale: the workers' triggers
            let n = client
                .update(
                    "DELETE FROM voucher.audit_event WHERE tenant_id = $1 AND event_id <= $2",
                    None,
                    &[t.into(), through.into()],
                )
                .expect("purge events")
                .len() as i64;
            client
                .update(
                    "DELETE FROM voucher.audit_chain WHERE tenant_id = $1 AND event_id <= $2",
                    None,
                    &[t.into(), through.into()],
                )
                .expect("purge chain");
            PURGING.with(|p| p.set(false));
            drop(permit);
            client
                .update(
                    "UPDATE voucher.audit_state SET purged_through = $2, purge_head = $3 \
                      WHERE tenant_id = $1",
                    None,
                    &[t.into(), through.into(), head.into()],
                )
                .expect("audit state");
            insert(
                client,
                &Event {
                    tenant: ctx.tenant,
                    actor: actor_json(Some(&ctx)),
                    action: "audit.purged",
                    object_type: Some("audit"),
                    object_id: None,
                    details: serde_json::json!({ "through_event": through, "rows": n }),
                    at: None,
                },
            );
            Ok(n)
        })
    })
}

/// Admin keys: removes the tenant's sealed audit rows older than its retention (default 12
/// months, voucher.set_audit_retention) or `older_than`; verification keeps working for the rest.
#[pg_extern(volatile, parallel_unsafe)]
fn purge_audit(older_than: default!(Option<Interval>, "NULL")) -> i64 {
    api(|| purge_impl(older_than))
}
