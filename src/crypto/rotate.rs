//! Key rotation, both kinds audited:
//! - `rotate_master_key()` (superuser): appends a fresh master key to the file and re-wraps every
//!   tenant key under it. No data is rewritten.
//! - `rotate_data_key(batch_size)` (admin key): the first call makes a fresh data key (the old one
//!   is superseded: it still decrypts, never encrypts again); each call moves at most
//!   `batch_size` rows of the tenant to it; a call that finds nothing left retires the old key
//!   and returns 0. Each batch commits with its transaction, so a cancel or crash loses at most
//!   the batch in flight and the next call resumes.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use super::keyring;
use super::store::{self, Place};
use crate::common::error::{api, Result, VoucherError};
use crate::common::events::{self, Event};
use crate::tenancy::context;
use crate::tenancy::definer::as_definer;
use crate::tenancy::roles::Action;

type Tenant = [u8; 16];

const MAX_BATCH: i32 = 1_000_000;

fn rotate_master_impl() -> Result<i64> {
    // SAFETY: reads the current user's superuser flag.
    if !unsafe { pg_sys::superuser() } {
        return Err(VoucherError::forbidden_hint(
            "only a superuser may rotate the master key",
            "the master key lives in the server's files",
        ));
    }
    super::master::append_key()?;
    let ring = store::ring(true)?;
    let newest = ring.newest().0.to_string();
    let mut total = 0i64;
    for t in context::all_tenants() {
        let tenant = context::uuid_bytes(&t);
        let n = context::as_tenant_definer(tenant, || {
            Spi::connect_mut(|client| -> Result<i64> {
                let rows: Vec<(i32, String, Vec<u8>)> = client
                    .update(
                        "SELECT key_id, master_key_id, wrapped FROM voucher.tenant_key \
                          WHERE tenant_id = $1 AND wrapped IS NOT NULL AND master_key_id <> $2 \
                          ORDER BY key_id FOR UPDATE",
                        None,
                        &[t.into(), newest.as_str().into()],
                    )
                    .expect("tenant keys")
                    .filter_map(|r| {
                        Some((
                            r.get::<i32>(1).ok()??,
                            r.get::<String>(2).ok()??,
                            r.get::<Vec<u8>>(3).ok()??,
                        ))
                    })
                    .collect();
                for (key_id, fp, wrapped) in &rows {
                    let (new_fp, rewrapped) = store::rewrap(&tenant, *key_id, fp, wrapped)?;
                    client
                        .update(
                            "UPDATE voucher.tenant_key SET master_key_id = $3, wrapped = $4 \
                              WHERE tenant_id = $1 AND key_id = $2",
                            None,
                            &[t.into(), (*key_id).into(), new_fp.into(), rewrapped.into()],
                        )
                        .expect("re-wrap");
                }
                Ok(rows.len() as i64)
            })
        })?;
        if n > 0 {
            events::record(&Event {
                tenant,
                actor: context::actor_json(context::current().as_ref()),
                action: "master_key.rotated",
                object_type: Some("tenant"),
                object_id: Some(t.to_string()),
                details: serde_json::json!({ "rewrapped": n, "master_key": newest }),
                at: None,
            });
        }
        total += n;
    }
    Ok(total)
}

/// Re-wraps every tenant key under a fresh master key (appended to the master key file; with
/// voucher.master_key_command, the newest key the command prints). Superuser only. Returns the
/// number of keys re-wrapped.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_master_key() -> i64 {
    api(rotate_master_impl)
}

/// The tenant's rotation lock (transaction-scoped): rotations of one tenant, and the destruction
/// of its retired keys, run one at a time.
fn rotation_lock(client: &mut SpiClient<'_>, tenant: &Tenant) {
    client
        .update(
            "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('voucher.rotate_data_key'), \
                                                     pg_catalog.hashtext($1::text))",
            None,
            &[store::uuid(tenant).into()],
        )
        .expect("rotation lock");
}

fn int_list(client: &mut SpiClient<'_>, sql: &str, tenant: &Tenant) -> Vec<i32> {
    client
        .update(sql, None, &[store::uuid(tenant).into()])
        .expect("key list")
        .filter_map(|r| r.get::<i32>(1).ok().flatten())
        .collect()
}

type Row = (pgrx::Uuid, [Option<Vec<u8>>; 5]);

/// Up to `limit` customers under the `old` data keys, in primary key order after `after` (and
/// not after `up_to`), locked. There is no index on key_id (every new customer would pay for
/// one): the walk follows the primary key and skips rows already under the active key.
fn next_customers(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    old: &[i32],
    (after, up_to): (Option<pgrx::Uuid>, Option<pgrx::Uuid>),
    limit: i64,
) -> Vec<Row> {
    client
        .update(
            "SELECT customer_id, source_id, email, name, metadata, audit_key \
               FROM voucher.customer \
              WHERE tenant_id = $1 AND ($4::uuid IS NULL OR customer_id > $4) \
                AND ($5::uuid IS NULL OR customer_id <= $5) AND key_id = ANY($2) \
              ORDER BY customer_id LIMIT $3 FOR NO KEY UPDATE",
            None,
            &[
                store::uuid(tenant).into(),
                old.to_vec().into(),
                limit.into(),
                after.into(),
                up_to.into(),
            ],
        )
        .expect("customers to move")
        .map(|r| {
            (
                r.get::<pgrx::Uuid>(1).ok().flatten().expect("customer_id"),
                [2, 3, 4, 5, 6].map(|i| r.get::<Vec<u8>>(i).ok().flatten()),
            )
        })
        .collect()
}

/// Moves up to `limit` customers from the `old` data keys to the active key `to`, from where
/// the previous call stopped (`tenant_key.rotated_through` of `to`, committed with each batch:
/// a cancel or crash resumes there). At the end of the walk, rows still under an old key behind
/// it (written by a transaction that reserved encryptions before the rotation started) send the
/// walk back to the start.
fn move_customers(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    old: &[i32],
    to: i32,
    limit: i64,
) -> Result<i64> {
    let from = client
        .update(
            "SELECT rotated_through FROM voucher.tenant_key WHERE tenant_id = $1 AND key_id = $2",
            None,
            &[store::uuid(tenant).into(), to.into()],
        )
        .expect("rotation position")
        .first()
        .get_one::<pgrx::Uuid>()
        .ok()
        .flatten();
    let mut rows = next_customers(client, tenant, old, (from, None), limit);
    if (rows.len() as i64) < limit && from.is_some() {
        let more = limit - rows.len() as i64;
        rows.extend(next_customers(client, tenant, old, (None, from), more));
    }
    if let Some((last, _)) = rows.last() {
        client
            .update(
                "UPDATE voucher.tenant_key SET rotated_through = $3 \
                  WHERE tenant_id = $1 AND key_id = $2",
                None,
                &[store::uuid(tenant).into(), to.into(), (*last).into()],
            )
            .expect("rotation position");
    }
    if rows.is_empty() {
        return Ok(0);
    }
    const COLUMNS: [&str; 4] = ["source_id", "email", "name", "metadata"];
    let mut ids = Vec::with_capacity(rows.len());
    let mut cols: [Vec<Option<Vec<u8>>>; 5] = Default::default();
    let mut new_key = 0;
    for (id, fields) in &rows {
        let row = id.to_string();
        let (key_id, key) = store::reserve_for(client, tenant, 5)?;
        new_key = key_id;
        for (i, ct) in fields[..4].iter().enumerate() {
            let moved = match ct {
                None => None,
                Some(ct) => {
                    let place = Place {
                        table: "customer",
                        column: COLUMNS[i],
                        row: &row,
                    };
                    let plain = store::open(client, tenant, place, ct)?;
                    Some(store::seal_with(key_id, &key, tenant, place, &plain))
                }
            };
            cols[i].push(moved);
        }
        let audit_key = match &fields[4] {
            None => None,
            Some(w) => {
                let material = super::customers::open_customer_key(client, tenant, &row, w)?;
                Some(keyring::wrap_customer_key(
                    &key, key_id, tenant, &row, &material,
                ))
            }
        };
        cols[4].push(audit_key);
        ids.push(*id);
    }
    let [s, e, n, m, k] = cols;
    client
        .update(
            "UPDATE voucher.customer c SET key_id = $2, source_id = u.s, email = u.e, name = u.n, \
                    metadata = u.m, audit_key = u.k \
               FROM unnest($3::uuid[], $4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[], \
                           $8::bytea[]) AS u(id, s, e, n, m, k) \
              WHERE c.tenant_id = $1 AND c.customer_id = u.id",
            None,
            &[
                store::uuid(tenant).into(),
                new_key.into(),
                ids.into(),
                s.into(),
                e.into(),
                n.into(),
                m.into(),
                k.into(),
            ],
        )
        .expect("customers moved");
    Ok(rows.len() as i64)
}

fn rotate_data_impl(batch_size: Option<i32>) -> Result<i64> {
    let ctx = context::authorize(Action::Administer)?;
    let batch = batch_size.unwrap_or(10_000);
    if !(1..=MAX_BATCH).contains(&batch) {
        return Err(VoucherError::invalid(format!(
            "batch_size must be between 1 and {MAX_BATCH}"
        )));
    }
    let tenant = ctx.tenant;
    let actor = context::actor_json(Some(&ctx));
    let mut events = vec![];
    let moved = as_definer(|| {
        Spi::connect_mut(|client| -> Result<i64> {
            rotation_lock(client, &tenant); // one rotation of a tenant at a time
            store::index_keys(client, &tenant)?; // makes the tenant's keys on first use
            let in_progress = !int_list(
                client,
                "SELECT key_id FROM voucher.tenant_key WHERE tenant_id = $1 AND kind = 'data' \
                   AND state = 'active' AND superseded_by IS NOT NULL",
                &tenant,
            )
            .is_empty();
            if !in_progress {
                let current = int_list(
                    client,
                    "SELECT key_id FROM voucher.tenant_key WHERE tenant_id = $1 AND kind = 'data' \
                       AND state = 'active' AND superseded_by IS NULL FOR UPDATE",
                    &tenant,
                );
                let fresh = store::next_key_id(client);
                client
                    .update(
                        "UPDATE voucher.tenant_key SET superseded_by = $2 \
                          WHERE tenant_id = $1 AND key_id = ANY($3)",
                        None,
                        &[
                            store::uuid(&tenant).into(),
                            fresh.into(),
                            current.clone().into(),
                        ],
                    )
                    .expect("supersede");
                store::insert_key(client, &tenant, fresh, "data", false)?;
                store::keys_changed();
                events.push((
                    "data_key.rotation_started",
                    serde_json::json!({ "from": current, "to": fresh }),
                ));
            }
            // every data key but the active one: superseded keys, and retired keys a backend
            // still wrote under from a block it had reserved before the rotation
            let old = int_list(
                client,
                "SELECT key_id FROM voucher.tenant_key WHERE tenant_id = $1 AND kind = 'data' \
                   AND state <> 'destroyed' AND superseded_by IS NOT NULL ORDER BY key_id",
                &tenant,
            );
            // the key rows move to (the tenant's one active data key), which keeps the position
            let to = int_list(
                client,
                "SELECT key_id FROM voucher.tenant_key WHERE tenant_id = $1 AND kind = 'data' \
                   AND state = 'active' AND superseded_by IS NULL",
                &tenant,
            )
            .first()
            .copied()
            .ok_or_else(|| {
                VoucherError::NotReady("voucher_ext: the tenant has no data key".into())
            })?;
            let limit = i64::from(batch);
            let mut moved = move_customers(client, &tenant, &old, to, limit)?;
            if moved < limit {
                moved += super::redemptions::move_metadata(client, &tenant, &old, limit - moved)?;
            }
            if moved == 0 {
                let retired = int_list(
                    client,
                    "UPDATE voucher.tenant_key k SET state = 'retired', retired_at = now() \
                      WHERE k.tenant_id = $1 AND k.kind = 'data' AND k.state = 'active' \
                        AND k.superseded_by IS NOT NULL \
                        AND NOT EXISTS (SELECT 1 FROM voucher.customer c \
                                         WHERE c.tenant_id = k.tenant_id AND c.key_id = k.key_id) \
                        AND NOT EXISTS (SELECT 1 FROM voucher.redemption r \
                                         WHERE r.tenant_id = k.tenant_id AND r.key_id = k.key_id) \
                     RETURNING k.key_id",
                    &tenant,
                );
                if !retired.is_empty() {
                    events.push((
                        "data_key.retired",
                        serde_json::json!({ "key_ids": retired }),
                    ));
                }
            } else {
                events.push(("data_key.rows_moved", serde_json::json!({ "rows": moved })));
            }
            Ok(moved)
        })
    })?;
    for (action, details) in events {
        events::record(&Event {
            tenant,
            actor: actor.clone(),
            action,
            object_type: Some("tenant"),
            object_id: Some(store::uuid(&tenant).to_string()),
            details,
            at: None,
        });
    }
    Ok(moved)
}

/// Moves the tenant's personal data to a fresh data key, at most `batch_size` rows per call;
/// returns the rows moved by this call, 0 when done (then the old key is retired).
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_data_key(batch_size: default!(Option<i32>, "10000")) -> i64 {
    api(|| rotate_data_impl(batch_size))
}

/// The tenant's retired data keys that were retired at least `older_than` ago and that no row
/// uses, destroyed: their wrapped bytes erased (state `destroyed`), audited. The wait gives a
/// transaction that reserved encryptions under the key before the rotation time to end (README
/// "Encryption at rest"); a retired key some row still uses is left for rotate_data_key to move.
fn destroy_retired_impl(older_than: Option<pgrx::datum::Interval>) -> Result<Vec<i32>> {
    let ctx = context::authorize(Action::Administer)?;
    let older_than = older_than.ok_or(VoucherError::NullArgument("older_than"))?;
    let tenant = ctx.tenant;
    let destroyed = as_definer(|| {
        Spi::connect_mut(|client| -> Result<Vec<i32>> {
            if client
                .select("SELECT $1 < interval '0'", None, &[older_than.into()])
                .expect("interval")
                .first()
                .get_one::<bool>()
                .ok()
                .flatten()
                == Some(true)
            {
                return Err(VoucherError::invalid("older_than must not be negative"));
            }
            rotation_lock(client, &tenant); // not while a rotation of the tenant moves rows
            let ids: Vec<i32> = client
                .update(
                    "UPDATE voucher.tenant_key k \
                        SET state = 'destroyed', wrapped = NULL, master_key_id = NULL, \
                            destroyed_at = now() \
                      WHERE k.tenant_id = $1 AND k.kind = 'data' AND k.state = 'retired' \
                        AND k.retired_at <= now() - $2 \
                        AND NOT EXISTS (SELECT 1 FROM voucher.customer c \
                                         WHERE c.tenant_id = k.tenant_id AND c.key_id = k.key_id) \
                        AND NOT EXISTS (SELECT 1 FROM voucher.redemption r \
                                         WHERE r.tenant_id = k.tenant_id AND r.key_id = k.key_id) \
                     RETURNING k.key_id",
                    None,
                    &[store::uuid(&tenant).into(), older_than.into()],
                )
                .expect("destroy retired keys")
                .filter_map(|r| r.get::<i32>(1).ok().flatten())
                .collect();
            if !ids.is_empty() {
                store::keys_changed();
            }
            Ok(ids)
        })
    })?;
    if !destroyed.is_empty() {
        events::record(&Event {
            tenant,
            actor: context::actor_json(Some(&ctx)),
            action: "data_key.destroyed",
            object_type: Some("tenant"),
            object_id: Some(store::uuid(&tenant).to_string()),
            details: serde_json::json!({ "key_ids": destroyed }),
            at: None,
        });
    }
    Ok(destroyed)
}

/// Destroys the tenant's data keys retired at least `older_than` ago that no row uses: their
/// wrapped key bytes are erased for good (state `destroyed`), audited. Returns their ids.
#[pg_extern(volatile, parallel_unsafe)]
fn destroy_retired_keys(
    older_than: default!(Option<pgrx::datum::Interval>, "'1 day'"),
) -> TableIterator<'static, (name!(key_id, i32),)> {
    TableIterator::new(
        api(|| destroy_retired_impl(older_than))
            .into_iter()
            .map(|k| (k,)),
    )
}
