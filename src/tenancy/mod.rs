//! Tenancy: who is calling and what they may do.
//!
//! - `context`: the tenant context (tenant, key, role) in backend memory, named by a token that
//!   plain SQL cannot forge; `authenticate`, `act_as`, `logout`, `authorize`.
//! - `keys`: API key format, hashing and comparison; `roles`: the key-role permission matrix.
//! - `revocation`: the shared-memory counter that makes key changes visible at the next call.
//! - `definer`: running table work as `voucher_definer`, so row-level security applies.
//! - `tenants`: `create_tenant`, `create_api_key`.

pub mod auth;
pub mod context;
pub mod definer;
pub mod keys;
pub mod revocation;
pub mod roles;
pub mod tenants;
