//! Every setting of the extension, registered from `_PG_init` under the reserved prefix
//! `voucher.`. The README's "Settings" section documents each one.

use std::ffi::{CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// Internal: the token that ties this session to its tenant context (see `tenancy/context.rs`).
/// Only C code sets it; only superusers could, and even they cannot forge a context with it.
pub static CONTEXT_TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Largest share of a code pattern's space that generated codes may occupy.
pub static MAX_CODE_SPACE_FILL: GucSetting<f64> = GucSetting::<f64>::new(0.1);

/// Where the audit HMAC key lives (default: voucher_audit.key in the data directory).
pub static AUDIT_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Where the master key of the encryption at rest lives (default: voucher_master.key in the data
/// directory), and a command that prints it instead (crypto).
pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MASTER_KEY_COMMAND: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// How stale `last_used_at` of an API key may get before authentication refreshes it.
pub static KEY_LAST_USED_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);

// Brute-force protection of authenticate (src/throttle/): per source address, platform-wide.
/// Slots of the shared failure-counter table (server start).
pub static THROTTLE_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(65_536);
/// Failed authenticate calls per source address within the window that lock it out.
pub static AUTH_FAILURE_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(20);
pub static AUTH_FAILURE_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(60);
/// The first lock-out's length (each repeated one doubles, up to an hour).
pub static AUTH_LOCKOUT: GucSetting<i32> = GucSetting::<i32>::new(60);
/// Seconds between the background worker's seals of every database's audit chain (0: off).
pub static SEAL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5);
/// Seconds between the background worker's customer-retention runs in every database (0: off;
/// privacy, src/privacy/retention.rs).
pub static CUSTOMER_RETENTION_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(0);

pub fn init() {
    GucRegistry::define_int_guc(
        c"voucher.seal_interval",
        c"Seconds between the background worker's seals of every database's audit chain.",
        c"Only when voucher_ext is in shared_preload_libraries; 0 turns the worker's sealing off (seal with voucher.seal_audit() from a scheduler instead).",
        &SEAL_INTERVAL,
        0,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"voucher.customer_retention_interval",
        c"Seconds between the background worker's customer-retention runs in every database.",
        c"Only when voucher_ext is in shared_preload_libraries; 0 (the default) turns them off. Each run calls voucher.run_customer_retention(1000) until it returns less than 1000, at most 100 times.",
        &CUSTOMER_RETENTION_INTERVAL,
        0,
        604_800,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"voucher.context_token",
        c"Internal: ties the session to the tenant context set by voucher.authenticate.",
        c"Set only by the extension; changing it by hand never grants a tenant context.",
        &CONTEXT_TOKEN,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL
            | GucFlags::SUPERUSER_ONLY
            | GucFlags::DISALLOW_IN_FILE
            | GucFlags::DISALLOW_IN_AUTO_FILE,
    );
    GucRegistry::define_float_guc(
        c"voucher.max_code_space_fill",
        c"Largest share of a pattern's code space that generated codes may fill.",
        c"generate_codes refuses (VC011) a request that would fill more of the space, so codes stay hard to guess and generation never runs out of fresh codes.",
        &MAX_CODE_SPACE_FILL,
        0.000001,
        0.5,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"voucher.key_last_used_interval",
        c"Seconds between refreshes of an API key's last_used_at.",
        c"Authentication writes last_used_at at most this often per key, so it does not turn every authentication into a write on one hot row.",
        &KEY_LAST_USED_INTERVAL,
        0,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"voucher.audit_key_file",
        c"File holding the 32-byte key of the audit log's HMACs.",
        c"Empty: voucher_audit.key in the data directory, created on first use. Back it up with the database: without it verify_audit cannot check the log.",
        &AUDIT_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    // a server-start setting can only be defined while preloading (FATAL afterwards)
    // SAFETY: reads a postmaster flag during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"voucher.throttle_entries",
            c"Slots of the shared table of failure counters (brute-force protection).",
            c"88 bytes each, claimed at server start when preloaded; the oldest counters without a lock-out are evicted when a bucket is full.",
            &THROTTLE_ENTRIES,
            1024,
            16_777_216,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"voucher.auth_failure_threshold",
        c"Failed authenticate calls per source address within voucher.auth_failure_window that lock it out.",
        c"Past it, further bad keys from that address get VC012 instead of 28000; valid keys are still accepted.",
        &AUTH_FAILURE_THRESHOLD,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"voucher.auth_failure_window",
        c"The sliding window failed authenticate calls are counted in.",
        c"",
        &AUTH_FAILURE_WINDOW,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"voucher.auth_lockout",
        c"How long a source address's first lock-out of authenticate lasts.",
        c"Each repeated lock-out within a day doubles it, up to an hour.",
        &AUTH_LOCKOUT,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"voucher.master_key_file",
        c"File holding the master key(s) of the encryption at rest, one per line, newest last.",
        c"Empty: voucher_master.key in the data directory, created (mode 0600) on first use when no tenant key exists yet. Back it up apart from the database: without it no personal data can be decrypted.",
        &MASTER_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"voucher.master_key_command",
        c"Command that prints the master key(s) (64 hex digits a line, newest last) instead of the file.",
        c"Run with /bin/sh by the backend that needs the key, like ssl_passphrase_command. Empty: use voucher.master_key_file.",
        &MASTER_KEY_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    // SAFETY: called once from _PG_init; the prefix is a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"voucher".as_ptr()) };
}

/// The raw current value of the context token, without copying it.
pub fn context_token() -> Option<&'static CStr> {
    // SAFETY: the GUC machinery keeps the pointed-to string alive until the value changes, and
    // callers only compare it before returning to Postgres.
    unsafe {
        let p = *CONTEXT_TOKEN.as_ptr();
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p))
        }
    }
}
