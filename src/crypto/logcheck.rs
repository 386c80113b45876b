//! Warns once per backend, at the first use of the keys, when a server setting would write bound
//! parameters or statement texts with their values (personal data an application sends) to the
//! server log. The warning names the setting, never a value that was logged.

use std::cell::Cell;
use std::ffi::{CStr, CString};

use pgrx::pg_sys;

thread_local! {
    static WARNED: Cell<bool> = const { Cell::new(false) };
}

fn setting(name: &str) -> Option<String> {
    let c = CString::new(name).ok()?;
    // SAFETY: GetConfigOption returns NULL (missing_ok) or a string owned by the GUC machinery,
    // copied at once.
    unsafe {
        let p = pg_sys::GetConfigOption(c.as_ptr(), true, false);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// The settings that would log values, as "name = value" of the setting itself.
pub fn risky_settings() -> Vec<String> {
    let mut found = vec![];
    if setting("log_statement").as_deref() == Some("all") {
        found.push("log_statement = all".to_string());
    }
    let zero = |v: Option<String>| v.as_deref().is_some_and(|v| v == "0" || v == "0ms");
    if zero(setting("log_min_duration_statement")) {
        found.push("log_min_duration_statement = 0".to_string());
    }
    if zero(setting("auto_explain.log_min_duration")) {
        found.push("auto_explain.log_min_duration = 0".to_string());
    }
    if setting("auto_explain.log_parameter_max_length").is_some_and(|v| v != "0")
        && setting("auto_explain.log_min_duration").is_some_and(|v| v != "-1")
    {
        found.push("auto_explain.log_parameter_max_length <> 0".to_string());
    }
    found
}

pub fn warn_once() {
    if WARNED.with(|w| w.replace(true)) {
        return;
    }
    let found = risky_settings();
    if !found.is_empty() {
        pgrx::warning!(
            "voucher_ext: {} would write statements or bound parameters, and so personal data the application sends, to the server log",
            found.join(", ")
        );
    }
}
