//! The interface through which `authenticate` (tenancy) consults the brute-force protection
//! (throttle, which depends on tenancy) without depending on it: throttle installs the guard
//! when the library loads; without it every bad key is simply `28000`.

use std::sync::OnceLock;

use crate::common::error::VoucherError;

pub struct AuthGuard {
    /// Is this connection's source locked out of authenticate? (Reads only.)
    pub locked: fn() -> bool,
    /// A bad key was presented: counts it, and says what to raise (28000, or VC012 past the
    /// threshold).
    pub failed: fn() -> VoucherError,
}

static GUARD: OnceLock<AuthGuard> = OnceLock::new();

/// Called once, when the library loads.
pub fn install(guard: AuthGuard) {
    let _ = GUARD.set(guard);
}

pub fn source_locked() -> bool {
    GUARD.get().is_some_and(|g| (g.locked)())
}

pub fn bad_key() -> VoucherError {
    GUARD.get().map_or(VoucherError::BadKey, |g| (g.failed)())
}
