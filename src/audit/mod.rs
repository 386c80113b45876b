//! The audit trail: row HMACs at insert, the sealed chain, verification and retention.

mod write;
pub use write::*;
