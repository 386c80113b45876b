//! Hot standbys (and read-only transactions): reads work, writes are refused up front.
//!
//! A streaming standby runs every transaction read-only and cannot take a transaction id. A
//! writing API call refused here fails with the standard `25006` (read_only_sql_transaction)
//! before it has done anything, instead of failing half-way in whatever statement writes first
//! (a `nextval`, an `UPDATE`, or `GetTopTransactionId`, whose error is an `XX000`).
//!
//! The checks sit where every writing call passes anyway: `context::authorize` for a key role's
//! writing actions (`Action::writes`), `context::require_operator` for operators (all of whose calls write), the
//! sealer, and the audit writer as the last line.
//!
//! What a read-only server does not record, so that reads keep working there: `last_used_at` of
//! API keys, and the events that are written durably in a later transaction (refused keys,
//! failed redemptions): [`can_record`] says whether such an event can ever be written by this
//! backend.

use pgrx::pg_sys;

use crate::common::error::{Result, VoucherError};

/// Is this server a standby still in recovery?
pub fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Is the current transaction read-only (a standby's always are)?
fn read_only_transaction() -> bool {
    // SAFETY: reads a backend-local flag.
    unsafe { pg_sys::XactReadOnly }
}

/// `25006` if this server or transaction cannot write; `what` says what was refused.
pub fn refuse_writes(what: &str) -> Result<()> {
    if in_recovery() {
        Err(VoucherError::ReadOnly {
            message: format!("cannot {what} on a hot standby"),
            hint: "send writing calls to the primary; a standby serves authenticate, validate, \
                   verify_audit and the views",
        })
    } else if read_only_transaction() {
        Err(VoucherError::ReadOnly {
            message: format!("cannot {what} in a read-only transaction"),
            hint: "run it in a read-write transaction",
        })
    } else {
        Ok(())
    }
}

/// The last line, for code about to take a transaction id: raises `25006` on a standby, where
/// `GetTopTransactionId` would raise an `XX000`. A standard SQLSTATE, so it may unwind through
/// Rust frames.
pub fn assert_writable(what: &str) {
    if in_recovery() {
        if let Err(e) = refuse_writes(what) {
            e.raise();
        }
    }
}

/// Can an event queued for a later transaction ever be written by this backend? Not on a
/// standby: such events are dropped there rather than kept in memory for good.
pub fn can_record() -> bool {
    !in_recovery()
}
