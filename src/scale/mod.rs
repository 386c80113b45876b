//! Scaling out: hot standbys for reads, Citus for tenants.
//!
//! - [`standby`]: what a read-only server (a hot standby, or a read-only transaction) refuses and
//!   what it leaves unrecorded. Exports `refuse_writes`, `refuse_action`, `can_record`.
//! - [`backtrace`]: keeps Rust backtraces out of the DETAIL of errors that reach callers.
//! - [`cluster`]: the tenant context on a Citus cluster (a self-proving token every node checks
//!   before row-level security trusts it).
//! - [`distribute`]: `voucher.distribute()`, the tables made Citus tables by `tenant_id`.
//! - [`redeem`]: a redemption's claim as single-shard statements on a cluster.
//! - [`statements`]: the audit, chain and code inserts as single-shard statements.
//! - [`token`]: the context token's claims, encoding and MAC.

pub mod backtrace;
pub mod cluster;
pub mod distribute;
pub mod redeem;
pub mod standby;
pub mod statements;
pub mod token;
