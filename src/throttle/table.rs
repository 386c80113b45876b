//! Where the counters live: a fixed-size table of `counter::Slot`s.
//!
//! Preloaded (`shared_preload_libraries`), the table is in shared memory, claimed at server start
//! (`voucher.throttle_entries` slots, 88 bytes each), shared by every backend and guarded by 16
//! LWLocks, one per partition of the buckets. Counters are plain memory: the rollback of the
//! failing transaction does not undo them; a server restart forgets them.
//!
//! Not preloaded, each backend keeps its own, smaller table (4,096 slots): counters survive
//! rollbacks but are not shared, so an attacker spread over N connections gets N times the
//! threshold. Preload the library in production.
//!
//! Slots are found by a keyed hash of (kind, tenant, identity) (HMAC-SHA256 under the audit key,
//! 128 bits kept): the identity itself is never stored.
//!
//! `horizon` holds the latest end of any lock-out: while it is in the past nothing can be locked,
//! and a call that failed nothing never touches the table (an atomic read is all it costs).

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, Ordering};

use pgrx::pg_sys;

use super::counter::{bucket_of, find, victim, Ended, Failure, Kind, Micros, Policy, Slot, WAYS};
use crate::common::gucs;

const PARTITIONS: usize = 16;
const LOCAL_SLOTS: usize = 4096;
const TRANCHE: &std::ffi::CStr = c"voucher_ext throttle";

#[repr(C)]
struct Header {
    buckets: u64,
    horizon: AtomicI64,
}

/// One identity, hashed.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub kind: Kind,
    pub tenant: [u8; 16],
    pub key: [u8; 16],
}

/// The shared table, or null when not preloaded.
static mut SHARED: *mut Header = std::ptr::null_mut();
static mut PREV_REQUEST: Option<unsafe extern "C-unwind" fn()> = None;
static mut PREV_STARTUP: Option<unsafe extern "C-unwind" fn()> = None;
/// The tranche's locks, looked up once per backend.
static mut LOCKS: *mut pg_sys::LWLockPadded = std::ptr::null_mut();

thread_local! {
    static LOCAL: RefCell<(Vec<Slot>, Micros)> = const { RefCell::new((Vec::new(), 0)) };
}

fn shared_slots() -> usize {
    let n = gucs::THROTTLE_ENTRIES.get().max(WAYS as i32) as usize;
    n / WAYS * WAYS
}

fn shared_size() -> usize {
    std::mem::size_of::<Header>() + shared_slots() * std::mem::size_of::<Slot>()
}

/// From `_PG_init` while preloading: asks for the shared memory and the locks.
pub fn init() {
    // SAFETY: hooks are chained once, in the postmaster, during library load.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: runs in the postmaster's shmem request phase.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(shared_size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), PARTITIONS as i32);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: the standard ShmemInitStruct pattern under AddinShmemInitLock; all zero is an
    // empty table, so a fresh segment only needs its header.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let p =
            pg_sys::ShmemInitStruct(TRANCHE.as_ptr(), shared_size(), &mut found).cast::<Header>();
        if !found {
            std::ptr::write_bytes(p.cast::<u8>(), 0, shared_size());
            (*p).buckets = (shared_slots() / WAYS) as u64;
        }
        SHARED = p;
        pg_sys::LWLockRelease(init_lock);
    }
}

pub fn preloaded() -> bool {
    // SAFETY: set once at startup, inherited by backends.
    let p = unsafe { SHARED };
    !p.is_null()
}

fn header() -> Option<&'static Header> {
    // SAFETY: the segment lives as long as the server.
    unsafe {
        let p = SHARED;
        p.as_ref()
    }
}

/// Releases an LWLock when dropped, unless an ERROR already released it.
struct Held(*mut pg_sys::LWLock);
impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: the lock was acquired by this backend; error recovery releases it otherwise.
        unsafe {
            if pg_sys::InterruptHoldoffCount > 0 {
                pg_sys::LWLockRelease(self.0);
            }
        }
    }
}

/// Runs `f` on the bucket `b`, holding its partition's lock (exclusive when `write`).
fn with_bucket<R>(b: usize, write: bool, f: impl FnOnce(&mut [Slot]) -> R) -> R {
    match header() {
        Some(h) => {
            // SAFETY: the tranche has PARTITIONS locks; slots follow the header; the partition
            // lock guards every bucket of the partition.
            unsafe {
                let cached = LOCKS;
                if cached.is_null() {
                    LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
                }
                let locks = LOCKS;
                let lock = &raw mut (*locks.add(b % PARTITIONS)).lock;
                let mode = if write {
                    pg_sys::LWLockMode::LW_EXCLUSIVE
                } else {
                    pg_sys::LWLockMode::LW_SHARED
                };
                pg_sys::LWLockAcquire(lock, mode);
                let _held = Held(lock);
                let slots = (h as *const Header).add(1).cast::<Slot>().cast_mut();
                let bucket = std::slice::from_raw_parts_mut(slots.add(b * WAYS), WAYS);
                f(bucket)
            }
        }
        None => LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.0.is_empty() {
                l.0 = vec![Slot::default(); LOCAL_SLOTS];
            }
            f(&mut l.0[b * WAYS..(b + 1) * WAYS])
        }),
    }
}

fn buckets() -> usize {
    header().map_or(LOCAL_SLOTS / WAYS, |h| h.buckets as usize)
}

fn horizon() -> Micros {
    match header() {
        Some(h) => h.horizon.load(Ordering::Acquire),
        None => LOCAL.with(|l| l.borrow().1),
    }
}

/// The backend-local table's horizon (the shared one is raised under the partition lock).
fn raise_horizon(until: Micros) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.1 = l.1.max(until);
    });
}

/// After an unlock: the horizon drops to the latest end of the lock-outs still in force (it only
/// grows otherwise), so the successful path is back to one atomic read once the last lock-out is
/// lifted. Holds every partition lock meanwhile (taken in order; nobody else holds two), so no
/// lock-out can start unseen.
pub fn recompute_horizon(now: Micros) {
    let latest = |slots: &[Slot]| {
        slots
            .iter()
            .filter(|s| !s.is_empty() && s.locked_until > now)
            .map(|s| s.locked_until)
            .max()
            .unwrap_or(0)
    };
    match header() {
        Some(h) => {
            // SAFETY: the tranche has PARTITIONS locks; with all of them held the whole table
            // is ours; the scan is plain Rust that cannot raise.
            unsafe {
                let cached = LOCKS;
                if cached.is_null() {
                    LOCKS = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
                }
                let held: Vec<Held> = (0..PARTITIONS)
                    .map(|i| {
                        let lock = &raw mut (*LOCKS.add(i)).lock;
                        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
                        Held(lock)
                    })
                    .collect();
                let slots = (h as *const Header).add(1).cast::<Slot>();
                let all = std::slice::from_raw_parts(slots, h.buckets as usize * WAYS);
                h.horizon.store(latest(all), Ordering::Release);
                drop(held);
            }
        }
        None => LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            l.1 = latest(&l.0);
        }),
    }
}

/// Could anything be locked out at `now`? One atomic read.
pub fn anything_locked(now: Micros) -> bool {
    horizon() > now
}

/// Is the horizon passed with lock-outs possibly unreported? Then the first caller to see it
/// claims the sweep (resets the horizon) and must call `sweep`.
pub fn claim_sweep(now: Micros) -> bool {
    let h = horizon();
    if h == 0 || h > now {
        return false;
    }
    match header() {
        Some(hd) => hd
            .horizon
            .compare_exchange(h, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok(),
        None => LOCAL.with(|l| {
            l.borrow_mut().1 = 0;
            true
        }),
    }
}

/// What `check` found.
pub enum Checked {
    Clear,
    /// locked out until then (the attempt is counted for the summary)
    Locked(Micros),
    /// a lock-out that ended and is not reported yet (the slot forgets it now)
    Ended(Ended),
}

/// Is `id` locked out at `now`? Takes the lock exclusively only when there is something to
/// change: a refused attempt to count, or an ended lock-out to hand over for its report.
pub fn check(id: &Identity, now: Micros) -> Checked {
    let b = bucket_of(&id.key, buckets());
    let pending = with_bucket(b, false, |bucket| {
        find(bucket, &id.key).is_some_and(|i| bucket[i].locked_until != 0)
    });
    if !pending {
        return Checked::Clear;
    }
    with_bucket(b, true, |bucket| {
        let Some(i) = find(bucket, &id.key) else {
            return Checked::Clear;
        };
        if let Some(until) = bucket[i].locked(now) {
            bucket[i].refuse(now);
            return Checked::Locked(until);
        }
        bucket[i]
            .take_ended(now)
            .map_or(Checked::Clear, Checked::Ended)
    })
}

/// Locked out at `now`: until when. Reads only.
pub fn peek(id: &Identity, now: Micros) -> Option<Micros> {
    let b = bucket_of(&id.key, buckets());
    with_bucket(b, false, |bucket| {
        find(bucket, &id.key).and_then(|i| bucket[i].locked(now))
    })
}

/// Counts a failure of `id`. Returns what it did, and a lock-out that ended unreported in the
/// slot it used (its own earlier one, or an evicted identity's).
pub fn fail(id: &Identity, now: Micros, policy: &Policy) -> (Failure, Option<Ended>) {
    let b = bucket_of(&id.key, buckets());
    let (failure, ended) = with_bucket(b, true, |bucket| {
        let (i, ended) = match find(bucket, &id.key) {
            Some(i) => {
                let ended = bucket[i].take_ended(now);
                (i, ended)
            }
            None => {
                let i = victim(bucket, now);
                let old = bucket[i];
                let ended = (!old.is_empty() && old.locked_until != 0).then(|| {
                    let mut o = old;
                    o.lift(now)
                });
                bucket[i] = Slot::new(id.key, id.tenant, id.kind, now);
                (i, ended)
            }
        };
        let failure = bucket[i].fail(now, policy);
        // raised while the partition is held, so recompute_horizon cannot miss this lock-out
        if let (Failure::LockedNow { until, .. }, Some(h)) = (failure, header()) {
            h.horizon.fetch_max(until, Ordering::AcqRel);
        }
        (failure, ended)
    });
    if let (Failure::LockedNow { until, .. }, None) = (failure, header()) {
        raise_horizon(until);
    }
    (failure, ended)
}

/// Lifts the lock-out of `id` (and forgets its failures). None if it has no counter.
pub fn unlock(id: &Identity, now: Micros) -> Option<(bool, Ended)> {
    let b = bucket_of(&id.key, buckets());
    with_bucket(b, true, |bucket| {
        let i = find(bucket, &id.key)?;
        let was_locked = bucket[i].locked(now).is_some();
        let had_lock = bucket[i].locked_until != 0;
        let ended = bucket[i].lift(now);
        Some((was_locked || had_lock, ended))
    })
}

/// Takes every ended, unreported lock-out of the table.
pub fn sweep(now: Micros) -> Vec<Ended> {
    let mut out = Vec::new();
    for b in 0..buckets() {
        with_bucket(b, true, |bucket| {
            out.extend(bucket.iter_mut().filter_map(|s| s.take_ended(now)));
        });
    }
    out
}

/// Copies of the slots `keep` selects (for the lockouts view).
pub fn list(mut keep: impl FnMut(&Slot) -> bool) -> Vec<Slot> {
    let mut out = Vec::new();
    for b in 0..buckets() {
        with_bucket(b, false, |bucket| {
            out.extend(bucket.iter().filter(|s| !s.is_empty() && keep(s)).copied());
        });
    }
    out
}

/// Slots in the table, whether it is shared, and the horizon (0: no lock-out since the last
/// sweep or unlock).
pub fn capacity() -> (usize, bool, Micros) {
    (buckets() * WAYS, preloaded(), horizon())
}
