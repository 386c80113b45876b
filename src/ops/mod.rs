//! Operations: what a DBA needs around the extension rather than inside its API.
//!
//! - Backups: `sql/ops.sql` marks every table and sequence of the extension for `pg_dump`
//!   (`voucher._ops_mark_for_dump()`), so a dump restores every row; `tests/ops/dump_restore.sh`
//!   proves the round trip in every dump format, onto the same and onto a fresh cluster.
//! - Keys: `voucher.key_fingerprints()` shows which key files the server uses, by fingerprint
//!   (never the key), and whether they are the ones the stored data was written with.
//! - Sealing: [`worker`], a background worker that seals every database's audit chain every
//!   `voucher.seal_interval` when the library is preloaded.
//! - Upgrades: `sql/upgrade/` holds one script per release step; `tests/ops/upgrade.sh` installs
//!   the previous release, upgrades it and compares the schema with a fresh install.
//!
//! Exports: [`init`] (from `_PG_init`), the SQL function `voucher.key_fingerprints()`.

pub mod worker;

use pgrx::prelude::*;

use crate::audit::key;
use crate::common::error::{api, VoucherError};
use crate::tenancy::{context, definer};

/// Called from `_PG_init`.
pub fn init() {
    worker::register();
}

/// Superusers and operators: the key files this server uses, each with its fingerprint (a
/// truncated SHA-256 under a fixed label: it identifies the key, it does not reveal it), and how
/// many tenants' stored data was written with that key (`matching`) or with another one
/// (`other`). After a restore onto another server, `other > 0` means the key file was not
/// copied. Loading the audit key creates it when it does not exist yet.
#[pg_extern(volatile, parallel_unsafe)]
fn key_fingerprints() -> TableIterator<
    'static,
    (
        name!(key, String),
        name!(file, String),
        name!(fingerprint, String),
        name!(matching, i64),
        name!(other, i64),
    ),
> {
    let rows = api(|| {
        if !definer::is_operator(definer::caller()) {
            return Err(VoucherError::forbidden_hint(
                "only superusers and voucher_operator members may read key fingerprints",
                "connect as a superuser or as a member of voucher_operator",
            ));
        }
        let (file, fp) = key::key_identity()?;
        let (mut matching, mut other) = (0i64, 0i64);
        for t in context::all_tenants() {
            let stored = context::as_tenant_definer(*t, || {
                Spi::get_one_with_args::<String>(
                    "SELECT key_fingerprint FROM voucher.audit_state WHERE tenant_id = $1",
                    &[t.into()],
                )
            })
            .ok()
            .flatten();
            match stored {
                Some(s) if s == fp => matching += 1,
                Some(_) => other += 1,
                None => {}
            }
        }
        Ok(vec![("audit".to_string(), file, fp, matching, other)])
    });
    TableIterator::new(rows)
}
