//! Events that survive their transaction: failed attempts and `act_as` are recorded although the
//! failing call raises and its transaction rolls back. They wait in backend memory and are
//! written by the next transaction of the same backend (at the start of its next API call, or at
//! its commit), or at backend exit.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;

use super::write::write;
use crate::common::events::Event;

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static FLUSHED_IN_XACT: Cell<usize> = const { Cell::new(0) };
    static EXIT_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Records `e` even if the current transaction rolls back (see the module comment).
pub fn write_durably(e: Event) {
    if !crate::scale::standby::can_record() {
        return; // scale: a standby can never write it (README, "Scaling out")
    }
    ensure_exit_hook();
    PENDING.with(|p| p.borrow_mut().push(Pending(e)));
}

struct Pending(Event);

fn can_write_now() -> bool {
    // SAFETY: reads backend-local transaction state.
    unsafe {
        pg_sys::IsTransactionState()
            && !pg_sys::XactReadOnly
            && pg_sys::GetCurrentTransactionNestLevel() == 1
            && pg_sys::ParallelWorkerNumber < 0
    }
}

/// Writes waiting events in the current transaction. They stay queued until it commits.
pub fn flush_pending() {
    let waiting = PENDING.with(|p| p.borrow().len());
    let done = FLUSHED_IN_XACT.with(|f| f.get());
    if waiting <= done || !can_write_now() {
        return;
    }
    PENDING.with(|p| {
        let p = p.borrow();
        for pending in &p[done..] {
            write(&pending.0);
        }
    });
    FLUSHED_IN_XACT.with(|f| f.set(waiting));
}

/// At the end of a top-level transaction: what it wrote is done if it committed.
pub fn end_of_transaction(committed: bool) {
    let done = FLUSHED_IN_XACT.with(|f| f.replace(0));
    if committed && done > 0 {
        PENDING.with(|p| {
            p.borrow_mut().drain(..done);
        });
    }
}

/// Before commit: write what is still waiting, in a subtransaction so an audit failure can
/// never fail the caller's commit (it stays queued instead).
pub fn pre_commit() {
    let waiting = PENDING.with(|p| p.borrow().len());
    if waiting <= FLUSHED_IN_XACT.with(|f| f.get()) || !can_write_now() {
        return;
    }
    // SAFETY: the standard internal-subtransaction pattern, as PL/pgSQL exception blocks use it.
    unsafe {
        let oldcxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let ok = PgTryBuilder::new(|| {
            // at commit time no statement holds a snapshot any more
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            flush_in_subtransaction();
            pg_sys::PopActiveSnapshot();
            true
        })
        .catch_others(|_| false)
        .execute();
        if ok {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            FLUSHED_IN_XACT.with(|f| f.set(0));
        }
        pg_sys::MemoryContextSwitchTo(oldcxt);
        pg_sys::CurrentResourceOwner = owner;
    }
}

fn flush_in_subtransaction() {
    let done = FLUSHED_IN_XACT.with(|f| f.get());
    PENDING.with(|p| {
        for pending in &p.borrow()[done..] {
            write(&pending.0);
        }
    });
    FLUSHED_IN_XACT.with(|f| f.set(PENDING.with(|p| p.borrow().len())));
}

fn ensure_exit_hook() {
    if EXIT_HOOK.with(|h| h.replace(true)) {
        return;
    }
    // SAFETY: registered in this backend; runs before its shared memory is detached.
    unsafe { pg_sys::before_shmem_exit(Some(at_exit), pg_sys::Datum::from(0)) };
}

/// Backend exit: write what is still waiting, in a transaction of its own (normal exits only).
#[pg_guard]
unsafe extern "C-unwind" fn at_exit(code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let waiting = PENDING.with(|p| !p.borrow().is_empty());
    // SAFETY: reads backend state; a transaction is started only when none is open.
    unsafe {
        if code != 0 || !waiting || pg_sys::IsTransactionState() || pg_sys::RecoveryInProgress() {
            return;
        }
        PgTryBuilder::new(|| {
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            FLUSHED_IN_XACT.with(|f| f.set(0));
            flush_all();
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        })
        .catch_others(|_| ())
        .execute();
    }
}

fn flush_all() {
    let events: Vec<Pending> = PENDING.with(|p| p.borrow_mut().drain(..).collect());
    for e in &events {
        write(&e.0);
    }
}
