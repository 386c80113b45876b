//! Personal data encrypted at rest (issue 14; README "Encryption at rest").
//!
//! - `envelope`: the ciphertext format (AES-256-GCM, versioned, names its key, AAD binds tenant,
//!   table, column and row). Pure Rust.
//! - `keyring`: the key hierarchy (master key -> tenant data and index keys -> customer keys),
//!   HKDF derivations, blind indexes, wrapping. Pure Rust.
//! - `master`: the master key file / command. `store`: tenant keys in `voucher.tenant_key`,
//!   cached per backend, and encrypt / decrypt / blind-index for the rest of the extension.
//! - `customers`: `upsert_customer`, `find_customer`, the look-up redemptions use, `_decrypt`
//!   for the views, per-customer keys for personal data in audit rows.
//! - `redemptions`: encrypted redemption metadata. `rotate`: `rotate_master_key`,
//!   `rotate_data_key`. `logcheck`: the warning about log settings that would log values.
//! - `migrate`: encrypts a 0.1.0 database's plaintext during ALTER EXTENSION UPDATE.
//!
//! Exports to the rest of the crate: `customers::{find_or_create, seal_for_audit}`,
//! `store::source_index`, `redemptions::seal_metadata`, `request_hash` (redeem's idempotency
//! fingerprints), `end_of_transaction`; `store` to `privacy` (forgetting
//! re-encrypts a pseudonym and opens a customer's audit data for its export).

pub mod customers;
pub mod envelope;
pub mod keyring;
mod logcheck;
mod master;
mod migrate;
pub mod redemptions;
mod rotate;
pub(crate) mod store;

/// The idempotency fingerprint of a redeem request (its canonical bytes): HMAC-SHA256 under the
/// tenant's request-hash key (HKDF of its index key, like the blind indexes), so a stored hash
/// cannot confirm a guessed customer id, code or order. Makes the tenant's keys on first use.
pub fn request_hash(tenant: &[u8; 16], canonical: &[u8]) -> crate::common::error::Result<Vec<u8>> {
    let keys = match store::index_keys_cached(tenant) {
        Some(k) => k,
        None => crate::tenancy::definer::as_definer(|| {
            pgrx::Spi::connect_mut(|client| store::index_keys(client, tenant))
        })?,
    };
    Ok(keyring::blind_index_bytes(&keys.request, canonical))
}

/// Called at the end of every transaction (see lib.rs).
pub fn end_of_transaction(committed: bool) {
    store::end_of_transaction(committed, true);
}

/// Registers the subtransaction callback (from _PG_init): a rolled-back savepoint drops what
/// it cached too.
pub fn init() {
    store::init_shmem();
    // SAFETY: registered once per backend, when the library is loaded.
    unsafe { pgrx::pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut()) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pgrx::pg_sys::SubXactEvent::Type,
    _my: pgrx::pg_sys::SubTransactionId,
    _parent: pgrx::pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pgrx::pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        store::end_of_transaction(false, false);
    }
}
