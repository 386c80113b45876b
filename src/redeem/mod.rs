//! Validation and redemption (../shared/API.md, "Validation and redemption").
//!
//! - `rules`: the request's arguments checked, the voucher as looked up, the verdict in the
//!   documented order.
//! - `discount`: the campaign's discount for an order, shared by validate and redeem.
//! - `statements`: the hot path's statements, prepared once per backend.
//! - `lookup`: the look-ups of a code and its campaign, an idempotency key and a customer (found
//!   and locked) by index probes, no statement.
//! - `claim`: the claim of an evaluated voucher (its row locked and updated), no statement.
//! - `direct`: the redemption's row and its audit row (and `upsert_customer`'s audit row)
//!   written without a statement.
//! - `idempotency`: idempotency keys (fingerprint, lock, look-up of the first result).
//! - `hot`: vouchers without a limit count their uses in 16 slot rows (voucher.code_use), so a
//!   hot voucher's redemptions do not queue on its row.
//! - `details`: the details of a redemption's audit row, built as jsonb in Rust.
//! - `validate` and `api` (`redeem`): the SQL-facing functions.
//!
//! Exports the SQL functions `validate`, `redeem`, `_discount`, `_money`,
//! `_redemption_details` and `_claimable` (the one-statement claims' rules); to Rust,
//! `lookup::lock_customer` (crypto's `find_or_create`) and `direct::AuditWriter`
//! (`upsert_customer`).

pub mod api;
mod claim;
pub mod details;
pub(crate) mod direct;
pub mod discount;
pub mod hot;
pub mod idempotency;
pub(crate) mod lookup;
pub mod rules;
pub mod statements;
pub mod validate;
