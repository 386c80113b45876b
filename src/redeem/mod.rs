//! Validation and redemption: the rules and the discount, the statements of the hot path, and
//! the SQL-facing `validate` and `redeem`.

pub mod api;
