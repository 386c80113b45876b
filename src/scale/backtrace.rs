//! No Rust backtrace in an error's DETAIL.
//!
//! pgrx attaches `std::backtrace::Backtrace::capture()` to the DETAIL of a PostgreSQL error that
//! passed through Rust code. Whether that captures anything depends on the server's environment
//! (`RUST_BACKTRACE` / `RUST_LIB_BACKTRACE`): a server started from a shell that sets
//! `RUST_BACKTRACE=1` would hand callers a stack trace with the build's file paths. The standard
//! library reads `RUST_LIB_BACKTRACE` first and caches the answer on the first capture, so setting
//! it to 0 when the library is loaded (before any capture in this process) turns capturing off.

/// Called from `_PG_init`, before any Rust code of ours can panic.
pub fn disable_capture() {
    // SAFETY: a PostgreSQL backend (and the postmaster, when preloaded) is single-threaded, and
    // this runs while the library is being loaded, before any thread of ours exists.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
}

#[cfg(test)]
mod unit {
    /// What the standard library reads first: with it at 0, `Backtrace::capture()` captures
    /// nothing in a process that had not captured before (a test process may have: so the
    /// variable is what is checked here; tests/scale/standby.sh checks a server's output).
    #[test]
    fn capture_is_turned_off_through_the_environment() {
        super::disable_capture();
        assert_eq!(std::env::var("RUST_LIB_BACKTRACE").as_deref(), Ok("0"));
    }
}
