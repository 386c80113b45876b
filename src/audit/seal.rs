//! Sealing: `chain_hash = HMAC(previous chain_hash || row_hash)` per tenant in event order, up
//! to a horizon no still-running transaction can write below.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use super::hash::Keyed;
use super::key::{fingerprint, with_key, KEY_BYTES};
use crate::common::error::{api, Result, VoucherError};
use crate::tenancy::context;
use crate::tenancy::definer;

fn xid8_now_next() -> u64 {
    // SAFETY: reads the shared next-xid counter.
    unsafe { pg_sys::ReadNextFullTransactionId().value }
}

/// Seals one tenant's chain as far as the horizon allows; returns how many events it sealed.
fn seal_tenant(client: &mut SpiClient<'_>, key: &[u8; KEY_BYTES], tenant: pgrx::Uuid) -> i64 {
    let t = *tenant;
    client
        .update(
            "INSERT INTO voucher.audit_state (tenant_id, key_fingerprint) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO NOTHING",
            None,
            &[tenant.into(), fingerprint(key).into()],
        )
        .expect("audit state");
    let state = client
        .update(
            "SELECT sealed_through, head, pending_through, pending_xmax::text::bigint, \
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint, sealed_rows, \
                    purged_through, purge_head \
               FROM voucher.audit_state WHERE tenant_id = $1 FOR UPDATE",
            None,
            &[tenant.into()],
        )
        .expect("audit state");
    let s = state.first();
    let sealed_through = s.get::<i64>(1).ok().flatten().unwrap_or(0);
    let head = s.get::<Vec<u8>>(2).ok().flatten();
    let pending_through = s.get::<i64>(3).ok().flatten();
    let pending_xmax = s.get::<i64>(4).ok().flatten();
    let mut xmin = s.get::<i64>(5).ok().flatten().unwrap_or(0);
    if crate::scale::cluster::active() {
        // scale: that row came from a worker; the horizon is the coordinator's, whose
        // transactions take the event ids
        xmin = crate::scale::cluster::local_xmin(client);
    }
    let mut sealed_rows = s.get::<i64>(6).ok().flatten().unwrap_or(0);
    let purge_head = s.get::<Vec<u8>>(8).ok().flatten();

    // A horizon past the next transaction id was taken on another cluster (the state came
    // back from a dump): every transaction of that cluster has ended, so what it covers is
    // sealable now.
    let xmin = match pending_xmax {
        Some(xmax) if xmax > xid8_now_next() as i64 => xmax,
        _ => xmin,
    };
    let mut sealed_now = 0i64;
    if let (Some(through), Some(xmax)) = (pending_through, pending_xmax) {
        if xmin >= xmax && through > sealed_through {
            let keyed = Keyed::new(key);
            let mut prev = head
                .or(purge_head)
                .unwrap_or_else(|| keyed.genesis(&t).to_vec());
            // in batches, so memory stays bounded however much waits to be sealed
            let mut after = sealed_through;
            loop {
                let rows = client
                    .update(
                        "SELECT event_id, row_hash FROM voucher.audit_event \
                          WHERE tenant_id = $1 AND event_id > $2 AND event_id <= $3 \
                          ORDER BY event_id LIMIT 10000",
                        None,
                        &[tenant.into(), after.into(), through.into()],
                    )
                    .expect("events to seal");
                let mut ids = Vec::with_capacity(rows.len());
                let mut hashes = Vec::with_capacity(rows.len());
                for r in rows {
                    let id = r.get::<i64>(1).ok().flatten().expect("event_id");
                    let rh = r.get::<Vec<u8>>(2).ok().flatten().unwrap_or_default();
                    let h = keyed.chain(&prev, id, &rh);
                    prev = h.to_vec();
                    ids.push(id);
                    hashes.push(h.to_vec());
                }
                // SAFETY: SPI_tuptable is the result just consumed (no query ran since); SPI
                // would keep it until the connection ends.
                unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
                let Some(&last) = ids.last() else { break };
                after = last;
                sealed_now += ids.len() as i64;
                if crate::scale::cluster::active() {
                    // scale: Citus runs INSERT ... SELECT as a COPY, which RLS refuses
                    crate::scale::cluster::insert_chain(client, tenant, &ids, &hashes);
                    continue;
                }
                client
                    .update(
                        "INSERT INTO voucher.audit_chain (tenant_id, event_id, chain_hash) \
                         SELECT $1, u.id, u.h FROM unnest($2::bigint[], $3::bytea[]) AS u(id, h)",
                        None,
                        &[tenant.into(), ids.into(), hashes.into()],
                    )
                    .expect("chain insert");
            }
            sealed_rows += sealed_now;
            client
                .update(
                    "UPDATE voucher.audit_state SET sealed_through = $2, head = $3, \
                            sealed_rows = $4, sealed_at = now() WHERE tenant_id = $1",
                    None,
                    &[
                        tenant.into(),
                        through.into(),
                        prev.into(),
                        sealed_rows.into(),
                    ],
                )
                .expect("audit state");
        }
    }
    // The next horizon: events up to the sequence's current value, sealable once every
    // transaction that might still hold one of them (all older than `next`) has ended. The
    // sequence is read before the next-xid counter, and writers take their xid before an id.
    let last = client
        .update(
            "SELECT last_value FROM voucher.audit_event_id_seq",
            None,
            &[],
        )
        .expect("sequence")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0);
    let next = xid8_now_next() as i64;
    client
        .update(
            "UPDATE voucher.audit_state SET pending_through = $2, pending_xmax = $3::text::xid8 \
              WHERE tenant_id = $1",
            None,
            &[tenant.into(), last.into(), next.to_string().into()],
        )
        .expect("audit state");
    sealed_now
}

fn seal_impl() -> Result<i64> {
    let caller = definer::caller();
    if !definer::is_operator(caller) {
        return Err(VoucherError::forbidden_hint(
            "only voucher_operator members may seal the audit log",
            "schedule SELECT voucher.seal_audit() as an operator, e.g. with pg_cron",
        ));
    }
    crate::scale::standby::refuse_writes("seal the audit log")?;
    if crate::scale::cluster::worker_node() {
        // scale: its event ids and horizon are the coordinator's; a worker's would corrupt them
        return Err(VoucherError::NotReady(
            "this is a Citus worker node: the audit log is sealed on the coordinator".into(),
        ));
    }
    with_key(|key, _| {
        let tenants = context::all_tenants();
        tenants
            .into_iter()
            .map(|t| {
                context::as_tenant_definer(*t, || Spi::connect_mut(|c| seal_tenant(c, key, t)))
            })
            .sum()
    })
}

/// Operators: extends every tenant's audit chain over the events no running transaction can
/// still add to; returns how many events were sealed. Run it periodically (pg_cron or any
/// scheduler); an event becomes sealable at the second run after it was written.
#[pg_extern(volatile, parallel_unsafe)]
fn seal_audit() -> i64 {
    api(seal_impl)
}
