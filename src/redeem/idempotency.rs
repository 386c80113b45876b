//! Idempotency keys of `redeem`: the fingerprint of a request's arguments, the lock that makes a
//! racing twin wait, and the look-up of a key's first result.
//!
//! A retry with the same key returns the first result. The lock (transaction-scoped, on the
//! tenant and the key) makes a racing twin wait for the first call to commit or fail; the
//! look-up runs after it on a fresh snapshot, so it then shows the first call's row. The unique
//! index `redemption_idempotency_key_idx` stays the last word.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{AnyNumeric, JsonB};

use super::rules::{canonical_number, Request};
use super::statements::run;
use crate::common::error::{Result, VoucherError};

/// redemption_id, voucher_id, discount, balance_after, replayed
pub type RedeemRow = (pgrx::Uuid, pgrx::Uuid, AnyNumeric, Option<AnyNumeric>, bool);

/// The canonical bytes of a request's arguments, what its idempotency fingerprint covers.
fn canonical(req: &Request, order_id: Option<&str>, metadata: Option<&JsonB>) -> Vec<u8> {
    let mut h = Vec::new();
    let mut field = |v: Option<String>| match v {
        Some(s) => {
            h.push(1u8);
            h.extend_from_slice(&(s.len() as u64).to_le_bytes());
            h.extend_from_slice(s.as_bytes());
        }
        None => h.push(0u8),
    };
    field(Some(req.code.clone()));
    field(req.customer.map(str::to_string));
    field(req.order_amount.as_ref().map(canonical_number));
    field(req.amount.as_ref().map(canonical_number));
    field(order_id.map(str::to_string));
    field(metadata.map(|m| m.0.to_string()));
    h
}

/// A keyed hash (crypto: HMAC-SHA256 under the tenant's request-hash key) of the canonical
/// arguments: a replay under the same idempotency key must match, and the stored hash confirms
/// no guessed customer id.
pub fn fingerprint(
    tenant: &[u8; 16],
    req: &Request,
    order_id: Option<&str>,
    metadata: Option<&JsonB>,
) -> Result<Vec<u8>> {
    crate::crypto::request_hash(tenant, &canonical(req, order_id, metadata))
}

/// The unkeyed SHA-256 0.1.0 stored: a retry of a request made before the upgrade still matches.
fn legacy_fingerprint(req: &Request, order_id: Option<&str>, metadata: Option<&JsonB>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(canonical(req, order_id, metadata)).to_vec()
}

/// `hashtext(value)` under the database's default collation.
fn hashtext(value: &str) -> pg_sys::Datum {
    // SAFETY: a text datum made from a Rust string; hashtext reads it and returns an int4.
    unsafe {
        let text = pg_sys::cstring_to_text_with_len(value.as_ptr().cast(), value.len() as i32);
        pg_sys::OidFunctionCall1Coll(
            pg_sys::Oid::from(pg_sys::F_HASHTEXT),
            pg_sys::DEFAULT_COLLATION_OID,
            pg_sys::Datum::from(text),
        )
    }
}

/// Waits for, then holds until the end of the transaction, the lock of this tenant's key:
/// `pg_advisory_xact_lock(hashtext(tenant::text), hashtext(key))`, called directly (as a kept
/// statement it was an executor start and end per keyed call for one function call).
pub fn lock(tenant: pgrx::Uuid, key: &str) {
    let (a, b) = (
        hashtext(&crate::common::uuid_text(tenant.as_bytes())),
        hashtext(key),
    );
    // SAFETY: the SQL function's own C entry point with its two int4 arguments; it raises
    // (deadlock, cancel) as the statement did.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_advisory_xact_lock_int4,
            &[Some(a), Some(b)],
        );
    }
}

/// The first result under this key, if a committed redemption carries it (call after `lock`):
/// replayed if the arguments match, VC009 if they do not.
pub fn replay(
    client: &SpiClient<'_>,
    tenant: pgrx::Uuid,
    key: &str,
    hash: Option<&Vec<u8>>,
    req: &Request,
    order_id: Option<&str>,
    metadata: Option<&JsonB>,
) -> Result<Option<RedeemRow>> {
    let prior = match super::lookup::find_prior(tenant, key) {
        super::lookup::Prior::Row(row) => Some(*row),
        super::lookup::Prior::None => None,
        super::lookup::Prior::Fallback => find_by_statement(client, tenant, key),
    };
    let Some((redemption_id, voucher_id, discount, balance_after, stored)) = prior else {
        return Ok(None);
    };
    // crypto: a request stored by 0.1.0 holds the unkeyed SHA-256
    if stored.as_ref() != hash && stored != Some(legacy_fingerprint(req, order_id, metadata)) {
        return Err(VoucherError::rule("VC009"));
    }
    Ok(Some((
        redemption_id,
        voucher_id,
        discount,
        balance_after,
        true,
    )))
}

/// [`replay`]'s look-up as a statement, where the index probe (`lookup::find_prior`) cannot
/// answer (Citus, a policy or index changed by hand, another tenant's context).
fn find_by_statement(
    client: &SpiClient<'_>,
    tenant: pgrx::Uuid,
    key: &str,
) -> Option<super::lookup::PriorRow> {
    let types = [pgrx::Uuid::type_oid(), pg_sys::TEXTOID];
    let args: [DatumWithOid; 2] = [tenant.into(), key.into()];
    // by the unique index whatever the statistics say (run_kept plans it without sequential
    // scans): planned while the table was nearly empty, this look-up scanned every redemption
    // of the run, 0.5-1.5 ms per call after a few seconds of the issue 17 benchmark
    let prior = run(
        client,
        |s| &mut s.idempotency_find,
        || {
            "SELECT redemption_id, voucher_id, discount, balance_after, request_hash \
               FROM voucher.redemption WHERE tenant_id = $1 AND idempotency_key = $2"
                .into()
        },
        &types,
        true,
        &args,
    );
    if prior.is_empty() {
        return None;
    }
    let p = prior.first();
    Some((
        p.get(1).ok().flatten().expect("redemption_id"),
        p.get(2).ok().flatten().expect("voucher_id"),
        p.get(3).ok().flatten().expect("discount"),
        p.get(4).ok().flatten(),
        p.get::<Vec<u8>>(5).ok().flatten(),
    ))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn the_lock_is_the_advisory_lock_the_statement_took() {
        let tenant = pgrx::Uuid::from_bytes([7; 16]);
        super::lock(tenant, "order-42/retry");
        let held = Spi::get_one::<bool>(&format!(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' \
                AND pid = pg_backend_pid() AND mode = 'ExclusiveLock' AND objsubid = 2 \
                AND classid = hashtext('{tenant}'::uuid::text)::oid \
                AND objid = hashtext('order-42/retry')::oid)"
        ));
        assert_eq!(held, Ok(Some(true)));
    }
}
