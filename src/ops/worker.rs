//! The audit sealer: when the library is preloaded, a launcher background worker wakes every
//! `voucher.seal_interval` seconds, lists the databases that accept connections, and for each one
//! starts a short-lived worker connected to it, which calls `voucher.seal_audit()` if the
//! extension is installed there, and exits. The launcher waits for it before it starts the next.
//!
//! - Errors: a failing database worker logs its error and exits; the launcher logs nothing more
//!   and tries that database again at the next interval. If the launcher itself fails, the
//!   postmaster restarts it after 10 seconds.
//! - Shutdown: SIGTERM wakes the launcher, which stops before starting another database worker;
//!   a running database worker ends its transaction (the postmaster signals it too).
//! - Locks: sealing writes only `audit_chain` and `audit_state` (writers insert into
//!   `audit_event` and never wait on either); the database worker sets a `lock_timeout`, so a
//!   manual `seal_audit()` holding a tenant's state row makes it give up, not queue.
//! - `voucher.seal_interval = 0` turns sealing off (the launcher keeps waiting for a reload).
//! - privacy (issue 15): every `voucher.customer_retention_interval` seconds (0, the default:
//!   never) the launcher also starts, database by database, a worker that calls
//!   `voucher.run_customer_retention(1000)` in transactions of their own until a call forgets
//!   fewer than 1000 customers, at most 10 calls per database and run (the rest waits for the
//!   next run). Sealing waits while a retention run works, and the other way round.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::common::gucs;

const LIBRARY: &str = "voucher_ext";

/// Registers the launcher; only while `shared_preload_libraries` is being processed.
pub fn register() {
    // SAFETY: reads a postmaster global.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("voucher_ext audit sealer")
        .set_type("voucher_ext sealer")
        .set_library(LIBRARY)
        .set_function("voucher_seal_launcher")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

fn interval() -> Option<Duration> {
    let s = gucs::SEAL_INTERVAL.get();
    (s > 0).then(|| Duration::from_secs(s as u64))
}

// --- privacy: the customer-retention schedule ---
fn retention_interval() -> Option<Duration> {
    let s = gucs::CUSTOMER_RETENTION_INTERVAL.get();
    (s > 0).then(|| Duration::from_secs(s as u64))
}

/// After a reload: a shorter interval takes effect now, a longer one after the current wait.
fn rescheduled(due: Option<Instant>, interval: Option<Duration>) -> Option<Instant> {
    match (due, interval.map(|i| Instant::now() + i)) {
        (Some(d), Some(n)) => Some(d.min(n)),
        (_, n) => n,
    }
}
// --- end privacy ---

/// The launcher's main loop.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn voucher_seal_launcher(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // no database: the launcher reads only the shared catalog pg_database
    BackgroundWorker::connect_worker_to_spi(None, None);
    log!("voucher_ext audit sealer started");
    let mut due = interval().map(|i| Instant::now() + i);
    let mut retention_due = retention_interval().map(|i| Instant::now() + i); // privacy
    loop {
        let next = [due, retention_due].into_iter().flatten().min();
        let wait = next.map(|d| d.saturating_duration_since(Instant::now()));
        // a zero timeout would mean "wait forever" to wait_latch
        if !BackgroundWorker::wait_latch(wait.map(|w| w.max(Duration::from_millis(1)))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the standard reload in a background worker's main loop.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            due = rescheduled(due, interval());
            retention_due = rescheduled(retention_due, retention_interval());
        }
        if due.is_some_and(|d| Instant::now() >= d) {
            every_database(&SEAL);
            due = interval().map(|i| Instant::now() + i);
        }
        if retention_due.is_some_and(|d| Instant::now() >= d) {
            every_database(&RETENTION); // privacy
            retention_due = retention_interval().map(|i| Instant::now() + i);
        }
    }
    log!("voucher_ext audit sealer stopped");
}

/// A per-database worker the launcher starts: its entry point, name and type.
struct Job {
    function: &'static str,
    name: &'static str,
    kind: &'static str,
}

const SEAL: Job = Job {
    function: "voucher_seal_database",
    name: "voucher_ext audit sealer (database)",
    kind: "voucher_ext sealer",
};

const RETENTION: Job = Job {
    function: "voucher_retention_database",
    name: "voucher_ext customer retention (database)",
    kind: "voucher_ext retention",
};

/// Starts `job` in a worker for each database in turn, waiting for each.
fn every_database(job: &Job) {
    // SAFETY: a catalog scan inside a transaction.
    let databases = BackgroundWorker::transaction(|| unsafe { databases() });
    for db in databases {
        if BackgroundWorker::sigterm_received() {
            return;
        }
        let started = BackgroundWorkerBuilder::new(job.name)
            .set_type(job.kind)
            .set_library(LIBRARY)
            .set_function(job.function)
            .enable_spi_access()
            .set_argument(Some(pg_sys::Datum::from(u32::from(db))))
            // SAFETY: reads this process's pid.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match started {
            Ok(worker) => {
                let _ = worker.wait_for_shutdown();
            }
            Err(_) => {
                warning!(
                    "voucher_ext audit sealer: could not start a worker for database {}; \
                     retrying at the next interval (raise max_worker_processes?)",
                    u32::from(db)
                );
                return;
            }
        }
    }
}

/// The databases a worker may connect to: not templates, accepting connections, valid.
///
/// # Safety
/// Inside a transaction.
unsafe fn databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let db = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            // datconnlimit -2 marks a database whose DROP was interrupted
            if db.datallowconn && !db.datistemplate && db.datconnlimit != -2 {
                out.push(db.oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, lock);
    }
    out
}

/// A database worker: seals the database's audit chains if the extension is installed, exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn voucher_seal_database(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    BackgroundWorker::transaction(|| {
        Spi::run("SET LOCAL lock_timeout = '2s'").expect("lock_timeout");
        let installed = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'voucher_ext')",
        );
        // scale: a Citus worker node leaves sealing to the coordinator
        if installed == Ok(Some(true)) && !crate::scale::cluster::worker_node() {
            let sealed = Spi::get_one::<i64>("SELECT voucher.seal_audit()");
            if let Ok(Some(n)) = sealed {
                if n > 0 {
                    debug1!("voucher_ext audit sealer: sealed {n} events");
                }
            }
        }
    });
}

// --- privacy (issue 15): customer retention in every database ---

/// Customers per `run_customer_retention` call, and calls per database and run.
const RETENTION_BATCH: i32 = 1000;
const RETENTION_CALLS: usize = 10;

/// A database worker: runs customer retention if the installed extension has it, exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn voucher_retention_database(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let mut total = 0i64;
    for _ in 0..RETENTION_CALLS {
        if BackgroundWorker::sigterm_received() {
            break;
        }
        let forgotten = BackgroundWorker::transaction(|| {
            Spi::run("SET LOCAL lock_timeout = '2s'").expect("lock_timeout");
            let present = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'voucher_ext') \
                    AND to_regprocedure('voucher.run_customer_retention(integer)') IS NOT NULL",
            );
            // scale: a Citus worker node leaves retention to the coordinator (master key)
            if present != Ok(Some(true)) || crate::scale::cluster::worker_node() {
                return 0;
            }
            Spi::get_one_with_args::<i64>(
                "SELECT voucher.run_customer_retention($1)",
                &[RETENTION_BATCH.into()],
            )
            .expect("run_customer_retention")
            .unwrap_or(0)
        });
        total += forgotten;
        if forgotten < i64::from(RETENTION_BATCH) {
            break;
        }
    }
    if total > 0 {
        log!(
            "voucher_ext customer retention: {total} customers forgotten in database {}",
            u32::from(db)
        );
    }
}
