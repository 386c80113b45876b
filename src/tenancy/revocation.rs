//! Revocation without a query per call.
//!
//! A key must stop working at the next call after it is revoked, also in sessions that
//! authenticated with it earlier. Checking its row on every call costs a query per call, so when
//! the extension is in `shared_preload_libraries` a generation counter in shared memory stands in:
//! any committed change to `voucher.credential` that can invalidate a key (revocation, expiry or
//! role change, deletion, TRUNCATE) bumps it at commit, and a context re-reads its key only when
//! the generation moved since it last did. Expiry is checked against the clock on every call.
//!
//! Without preloading there is no shared memory: every call re-reads the key's row.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};

static GENERATION: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"voucher_ext key generation") };
/// Set in the postmaster when loaded from shared_preload_libraries; inherited by every backend.
static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This transaction changed credentials: bump the generation if it commits.
    static PENDING: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`: claims shared memory when we are being preloaded.
pub fn init() {
    // SAFETY: reads a postmaster flag during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(GENERATION);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// The current generation, or None when there is no shared memory.
pub fn current() -> Option<u64> {
    preloaded().then(|| GENERATION.get().load(Ordering::Acquire))
}

/// At the end of a top-level transaction.
pub fn end_of_transaction(committed: bool) {
    if PENDING.with(|p| p.replace(false)) && committed && preloaded() {
        GENERATION.get().fetch_add(1, Ordering::AcqRel);
    }
}

/// Internal, called by the trigger on voucher.credential.
#[pg_extern(volatile, parallel_unsafe, name = "_credentials_changed")]
fn credentials_changed() {
    PENDING.with(|p| p.set(true));
}

/// Is the extension preloaded (revocation checks from shared memory)?
#[pg_extern(stable, parallel_safe, name = "_preloaded")]
fn preloaded_sql() -> bool {
    preloaded()
}
