//! The data migration of the 0.1.0 -> 0.2.0 upgrade (sql/upgrade/voucher_ext--0.1.0--0.2.0.sql,
//! section crypto): 0.1.0 stored customers and redemption metadata in plaintext, and only Rust
//! reaches the master key. `voucher._crypto_migrate_plaintext()` exists only while that script
//! runs (the script creates it, calls it, drops it; no install script declares it: `sql = false`).
//!
//! For every tenant it creates the tenant's keys if missing (the master key file is created on
//! first use like any first encryption), then for every customer not migrated yet
//! (`source_index IS NULL`): the ciphertexts of source_id, email, name and metadata (each bound to
//! its tenant, table, column and row like upsert_customer writes them) into the script's
//! temporary columns `_source_id_ct`, `_email_ct`, `_name_ct`, `_metadata_ct`, the two blind
//! indexes, `key_id`, and the customer's own key (`audit_key`); for every redemption
//! with metadata not migrated yet (`_metadata_ct IS NULL`): its ciphertext and `key_id`. The
//! script then replaces the plaintext columns by the ciphertexts and drops the temporary ones.
//! Idempotent (done rows are skipped); superuser and the extension script only; writes no audit
//! rows (the script disables the direct-DML audit triggers around the call: audit rows of 0.1.0
//! stay as they are, README "Upgrading").

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use super::keyring;
use super::store::{self, Place};
use crate::common::error::{api, Result, VoucherError};

type Tenant = [u8; 16];

/// Rows read per round trip.
const BATCH: i64 = 1000;

/// Encrypts the plaintext of a 0.1.0 database in place (see the module doc). Returns the number
/// of customer and redemption rows it encrypted.
#[pg_extern(sql = false, volatile, parallel_unsafe)]
fn migrate_plaintext() -> i64 {
    api(|| {
        // SAFETY: plain reads of backend globals.
        let (superuser, in_script) = unsafe { (pg_sys::superuser(), pg_sys::creating_extension) };
        if !superuser || !in_script {
            return Err(VoucherError::forbidden_hint(
                "voucher_ext: _crypto_migrate_plaintext runs only inside ALTER EXTENSION voucher_ext UPDATE",
                "it is part of the upgrade script from 0.1.0",
            ));
        }
        let tenants: Vec<pgrx::Uuid> = Spi::connect(|c| {
            c.select(
                "SELECT tenant_id FROM voucher.tenant ORDER BY tenant_id",
                None,
                &[],
            )
            .expect("tenants")
            .filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten())
            .collect()
        });
        let mut done = 0i64;
        for t in tenants {
            let tenant: Tenant = *t.as_bytes();
            done += Spi::connect_mut(|client| -> Result<i64> {
                Ok(customers(client, &tenant)? + redemptions(client, &tenant)?)
            })?;
        }
        Ok(done)
    })
}

/// One encryption under the tenant's active data key, bound to its place.
fn seal(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    key_id: &mut Option<i32>,
    place: Place,
    plain: &str,
) -> Result<Vec<u8>> {
    let (id, key) = store::reserve(client, tenant)?;
    if key_id.is_some_and(|k| k != id) {
        return Err(VoucherError::NotReady(
            "voucher_ext: the tenant's data key changed during the migration".into(),
        ));
    }
    *key_id = Some(id);
    Ok(store::seal_with(id, &key, tenant, place, plain.as_bytes()))
}

type Plain = (
    pgrx::Uuid,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn customers(client: &mut SpiClient<'_>, tenant: &Tenant) -> Result<i64> {
    let keys = store::index_keys(client, tenant)?;
    let mut n = 0i64;
    loop {
        let rows: Vec<Plain> = client
            .select(
                "SELECT customer_id, source_id::text, email::text, name::text, metadata::text \
                   FROM voucher.customer WHERE tenant_id = $1 AND source_index IS NULL \
                  ORDER BY customer_id LIMIT $2",
                None,
                &[store::uuid(tenant).into(), BATCH.into()],
            )
            .expect("customers to migrate")
            .filter_map(|r| {
                Some((
                    r.get::<pgrx::Uuid>(1).ok()??,
                    r.get::<String>(2).ok()??,
                    r.get::<String>(3).ok()?,
                    r.get::<String>(4).ok()?,
                    r.get::<String>(5).ok()?,
                ))
            })
            .collect();
        if rows.is_empty() {
            return Ok(n);
        }
        for (id, source_id, email, name, metadata) in rows {
            let row = id.to_string();
            let place = |column| Place {
                table: "customer",
                column,
                row: &row,
            };
            let mut key_id = None;
            let source_ct = seal(client, tenant, &mut key_id, place("source_id"), &source_id)?;
            let email_ct = email
                .as_deref()
                .map(|e| seal(client, tenant, &mut key_id, place("email"), e))
                .transpose()?;
            let name_ct = name
                .as_deref()
                .map(|v| seal(client, tenant, &mut key_id, place("name"), v))
                .transpose()?;
            let meta = metadata.as_deref().unwrap_or("{}");
            let metadata_ct = seal(client, tenant, &mut key_id, place("metadata"), meta)?;
            let source_index = keyring::blind_index(&keys.source, &source_id);
            let email_index = email
                .as_deref()
                .map(|e| keyring::blind_index(&keys.email, &keyring::normalize_email(e)));
            // the customer's own key, under the same data key as its fields
            let (ck_id, dk) = store::reserve(client, tenant)?;
            if key_id.is_some_and(|k| k != ck_id) {
                return Err(VoucherError::NotReady(
                    "voucher_ext: the tenant's data key changed during the migration".into(),
                ));
            }
            let audit_key = super::customers::new_customer_key(ck_id, &dk, tenant, &row);
            client
                .update(
                    "UPDATE voucher.customer SET source_index = $3, email_index = $4, key_id = $5, \
                            _source_id_ct = $6, _email_ct = $7, _name_ct = $8, _metadata_ct = $9, \
                            audit_key = $10 \
                      WHERE tenant_id = $1 AND customer_id = $2",
                    None,
                    &[
                        store::uuid(tenant).into(),
                        id.into(),
                        source_index.into(),
                        email_index.into(),
                        key_id.into(),
                        source_ct.into(),
                        email_ct.into(),
                        name_ct.into(),
                        metadata_ct.into(),
                        audit_key.into(),
                    ],
                )
                .expect("customer encrypted");
            n += 1;
        }
    }
}

fn redemptions(client: &mut SpiClient<'_>, tenant: &Tenant) -> Result<i64> {
    let mut n = 0i64;
    loop {
        let rows: Vec<(pgrx::Uuid, String)> = client
            .select(
                "SELECT redemption_id, metadata::text FROM voucher.redemption \
                  WHERE tenant_id = $1 AND metadata IS NOT NULL AND _metadata_ct IS NULL \
                  ORDER BY redemption_id LIMIT $2",
                None,
                &[store::uuid(tenant).into(), BATCH.into()],
            )
            .expect("redemptions to migrate")
            .filter_map(|r| Some((r.get::<pgrx::Uuid>(1).ok()??, r.get::<String>(2).ok()??)))
            .collect();
        if rows.is_empty() {
            return Ok(n);
        }
        for (id, metadata) in rows {
            let row = id.to_string();
            let place = Place {
                table: "redemption",
                column: "metadata",
                row: &row,
            };
            let mut key_id = None;
            let ct = seal(client, tenant, &mut key_id, place, &metadata)?;
            client
                .update(
                    "UPDATE voucher.redemption SET key_id = $3, _metadata_ct = $4 \
                      WHERE tenant_id = $1 AND redemption_id = $2",
                    None,
                    &[
                        store::uuid(tenant).into(),
                        id.into(),
                        key_id.into(),
                        ct.into(),
                    ],
                )
                .expect("redemption encrypted");
            n += 1;
        }
    }
}
