//! GDPR rights inside the database (issue 15; README "GDPR"): know, forget, consent, retention.
//!
//! The SQL-facing functions are SQL in `sql/privacy.sql`: `export_customer`, `forget_customer`,
//! `set_consent`, the view `consents`, and `forget_inactive_customers` (retention in bounded
//! batches). They touch personal fields only through a few internal functions; those that need
//! the tenant's keys (src/crypto/) are Rust, in `keys`: the blind-index look-up of a customer,
//! opening what audit rows hold about a customer under its own key, and the pseudonymization
//! that destroys that key.
//!
//! `retention`: `run_customer_retention`, the same retention across every tenant, for operators,
//! schedulers and the background worker.
//!
//! Exports to the rest of the crate: nothing; `upsert_customer` (src/crypto/customers.rs) asks
//! `voucher._profile_allowed` before storing personal fields (`VC014` otherwise), and redemptions
//! look customers up `FOR KEY SHARE` so that a racing forget is seen.

pub mod keys;
pub mod retention;
pub mod standby;
