//! Plumbing every capability uses: errors and their SQLSTATEs, settings (GUCs), randomness.
//! Depends on nothing else in the crate.

pub mod auth_guard;
pub mod error;
pub mod events;
pub mod gucs;
pub mod index;
pub mod jsonb;
pub mod rng;
pub mod spi;
