//! The audit trail.
//!
//! - Every row is written in the transaction of the change it records, with
//!   `row_hash = HMAC-SHA256(audit key, canonical row)` (`hash`). The key is a file in the data
//!   directory (`key`), created on first use; it never appears in SQL text.
//! - The chain is sealed afterwards by `voucher.seal_audit()` (`seal`): `chain_hash =
//!   HMAC(previous chain_hash || row_hash)` per tenant in event order, stored in `audit_chain`.
//!   Writers never touch a shared head row, so the audit costs redemption no serialization point.
//!   Sealing stops at a horizon no still-running transaction can write below (event ids come from
//!   a sequence, each writer takes its transaction id first), so a late commit can never land
//!   inside the sealed part of the chain.
//! - Before a seal, each row is covered by its own HMAC only: a changed, forged or renumbered row
//!   is caught, a deleted unsealed row is not. After a seal, deletions and insertions are caught
//!   too, and `verify_audit` (`verify`) names the first bad row.
//! - Failed attempts (refused redemptions, refused keys) and `act_as` must be recorded although
//!   the failing call raises and its transaction rolls back (`pending`).
//! - `retention`: `purge_audit` and the tenant's retention period.
//!
//! Exports: `write`, `write_durably`, `flush_pending`, `take_xid` and the transaction hooks;
//! other capabilities record events through `crate::common::events`, which `install` wires here.

pub mod hash;
pub mod key;
pub mod pending;
pub mod retention;
pub mod seal;
pub mod verify;
pub mod write;

pub use pending::{flush_pending, write_durably};
pub use write::{take_xid, write};

/// Makes this module the recorder of `crate::common::events`.
pub fn install() {
    crate::common::events::install(crate::common::events::Recorder {
        write,
        write_durably,
        flush_pending,
    });
}

/// Before commit: write the events still waiting.
pub fn pre_commit() {
    pending::pre_commit();
}

/// At the end of a top-level transaction.
pub fn end_of_transaction(committed: bool) {
    pending::end_of_transaction(committed);
    retention::end_of_transaction();
}
