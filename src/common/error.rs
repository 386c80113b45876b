//! Every failure a caller can act on, with its SQLSTATE.
//!
//! The README's "Errors" table is the user-facing copy of `CATALOGUE`; a unit test keeps the two
//! in step. Business-rule failures use the implementation-defined class `VC`; everything else uses
//! the standard class that fits.
//!
//! pgrx can only raise the SQLSTATEs it has an enum variant for, and it rewrites an unknown one to
//! `XX000` when an error passes through Rust. So `VC` errors are raised by [`VoucherError::raise`]
//! with Postgres' own `ereport` machinery, from the top of a `#[pg_extern]` function, and SQL code
//! raises them through `voucher._raise()` rather than through a Rust caller.

use std::ffi::{c_char, c_int, CString};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// One documented failure: its SQLSTATE, message, and the hint shown with it.
pub struct Entry {
    pub sqlstate: &'static str,
    pub message: &'static str,
    pub hint: Option<&'static str>,
}

/// The business-rule failures of class `VC`, in code order.
pub const CATALOGUE: &[Entry] = &[
    Entry {
        sqlstate: "VC001",
        message: "no such voucher",
        hint: None,
    },
    Entry {
        sqlstate: "VC002",
        message: "voucher has expired",
        hint: None,
    },
    Entry {
        sqlstate: "VC003",
        message: "voucher is not active yet",
        hint: None,
    },
    Entry {
        sqlstate: "VC004",
        message: "redemption limit reached",
        hint: None,
    },
    Entry {
        sqlstate: "VC005",
        message: "per-customer redemption limit reached",
        hint: Some("the campaign limits how often one customer may redeem its vouchers"),
    },
    Entry {
        sqlstate: "VC006",
        message: "insufficient gift card balance",
        hint: None,
    },
    Entry {
        sqlstate: "VC007",
        message: "order amount is below the campaign minimum",
        hint: None,
    },
    Entry {
        sqlstate: "VC008",
        message: "voucher is disabled",
        hint: None,
    },
    Entry {
        sqlstate: "VC009",
        message: "idempotency key reused with different arguments",
        hint: Some("use a new idempotency key for a different request"),
    },
    Entry {
        sqlstate: "VC010",
        message: "redemption already rolled back",
        hint: None,
    },
    Entry {
        sqlstate: "VC011",
        message: "code generation infeasible",
        hint: Some("use a longer pattern or a larger charset"),
    },
    Entry {
        sqlstate: "VC012",
        message: "too many failed attempts: locked out",
        hint: Some("wait before trying again"),
    },
    Entry {
        sqlstate: "VC013",
        message: "no such redemption",
        hint: None,
    },
    Entry {
        sqlstate: "VC014",
        message: "no consent for this processing",
        hint: Some("record the customer's consent with voucher.set_consent first"),
    },
];

/// Looks up a catalogue entry by SQLSTATE.
pub fn entry(sqlstate: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.sqlstate == sqlstate)
}

/// A failure raised from Rust.
#[derive(Debug, thiserror::Error)]
pub enum VoucherError {
    /// A catalogued business-rule failure (`VCxxx`), with optional detail and a hint that
    /// replaces the catalogue's.
    #[error("{}", .sqlstate)]
    Rule {
        sqlstate: &'static str,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// `28000`: bad, revoked or expired API key. One message for all three on purpose.
    #[error("invalid API key")]
    BadKey,
    /// `42501`: not allowed for this key role or database role.
    #[error("{message}")]
    Forbidden {
        message: String,
        hint: Option<String>,
    },
    /// `22023`: an argument that is well-formed but not acceptable.
    #[error("{message}")]
    InvalidArgument {
        message: String,
        hint: Option<String>,
    },
    /// `22004`: a required argument is NULL.
    #[error("{0} must not be NULL")]
    NullArgument(&'static str),
    /// `23505`: a duplicate of something that must be unique.
    #[error("{0}")]
    Duplicate(String),
    /// `55000`: the server is not set up for this (missing key file and the like).
    #[error("{0}")]
    NotReady(String),
    /// `XX001`: stored data failed an integrity check (a ciphertext that does not authenticate).
    /// The message names the table, column and row; never a key or a plaintext.
    #[error("{message}")]
    Corrupted { message: String, detail: String },
    /// `25006`: a writing call on a hot standby or in a read-only transaction (src/scale).
    #[error("{message}")]
    ReadOnly { message: String, hint: &'static str },
}

pub type Result<T> = std::result::Result<T, VoucherError>;

impl VoucherError {
    /// A catalogued `VC` failure.
    pub fn rule(sqlstate: &'static str) -> Self {
        debug_assert!(entry(sqlstate).is_some(), "{sqlstate} is not catalogued");
        VoucherError::Rule {
            sqlstate,
            detail: None,
            hint: None,
        }
    }

    pub fn rule_with_hint(
        sqlstate: &'static str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        debug_assert!(entry(sqlstate).is_some(), "{sqlstate} is not catalogued");
        VoucherError::Rule {
            sqlstate,
            detail: Some(detail.into()),
            hint: Some(hint.into()),
        }
    }

    pub fn forbidden_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        VoucherError::Forbidden {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        VoucherError::InvalidArgument {
            message: message.into(),
            hint: None,
        }
    }

    pub fn invalid_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        VoucherError::InvalidArgument {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// The five-character SQLSTATE this error is raised with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            VoucherError::Rule { sqlstate, .. } => sqlstate,
            VoucherError::BadKey => "28000",
            VoucherError::Forbidden { .. } => "42501",
            VoucherError::InvalidArgument { .. } => "22023",
            VoucherError::NullArgument(_) => "22004",
            VoucherError::Duplicate(_) => "23505",
            VoucherError::NotReady(_) => "55000",
            VoucherError::Corrupted { .. } => "XX001",
            VoucherError::ReadOnly { .. } => "25006",
        }
    }

    fn standard_code(&self) -> Option<PgSqlErrorCode> {
        Some(match self {
            VoucherError::Rule { .. } => return None,
            VoucherError::BadKey => PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            VoucherError::Forbidden { .. } => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            VoucherError::InvalidArgument { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            VoucherError::NullArgument(_) => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            VoucherError::Duplicate(_) => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            VoucherError::NotReady(_) => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            VoucherError::Corrupted { .. } => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            VoucherError::ReadOnly { .. } => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        })
    }

    /// Message, detail and hint as shown to the caller.
    pub fn parts(&self) -> (String, Option<String>, Option<String>) {
        match self {
            VoucherError::Rule {
                sqlstate,
                detail,
                hint,
            } => {
                let e = entry(sqlstate).expect("catalogued");
                let hint = hint.clone().or_else(|| e.hint.map(str::to_string));
                (e.message.to_string(), detail.clone(), hint)
            }
            VoucherError::Forbidden { message, hint }
            | VoucherError::InvalidArgument { message, hint } => {
                (message.clone(), None, hint.clone())
            }
            VoucherError::Corrupted { message, detail } => {
                (message.clone(), Some(detail.clone()), None)
            }
            VoucherError::ReadOnly { message, hint } => {
                (message.clone(), None, Some(hint.to_string()))
            }
            other => (other.to_string(), None, None),
        }
    }

    /// Raises this error as a Postgres ERROR. Never returns.
    ///
    /// Call it only where no Rust value with a destructor is alive in a calling frame, i.e. at the
    /// top of a `#[pg_extern]` function (see [`api`]): a `VC` error leaves Rust by `longjmp`.
    pub fn raise(self) -> ! {
        let (message, detail, hint) = self.parts();
        match self.standard_code() {
            Some(code) => {
                let mut report = ErrorReport::new(code, message, "voucher_ext");
                if let Some(d) = detail {
                    report = report.set_detail(d);
                }
                if let Some(h) = hint {
                    report = report.set_hint(h);
                }
                report.report(PgLogLevel::ERROR);
                unreachable!("ERROR returned")
            }
            None => {
                let sqlstate = make_sqlstate(self.sqlstate());
                // SAFETY: every Rust value is dropped inside ereport_raw before it jumps.
                unsafe { ereport_raw(sqlstate, message, detail, hint) }
            }
        }
    }
}

/// Runs an API function body and raises its error, if any, as a Postgres ERROR.
pub fn api<T>(body: impl FnOnce() -> Result<T>) -> T {
    match body() {
        Ok(v) => v,
        Err(e) => e.raise(),
    }
}

/// Internal, for SQL functions: raises the catalogued failure `sqlstate` (a `VC` code), with
/// an optional detail. PL/pgSQL calls this rather than repeating the catalogue's messages.
#[pgrx::pg_extern(volatile, parallel_safe, name = "_raise")]
fn raise_sql(sqlstate: &str, detail: pgrx::default!(Option<&str>, "NULL")) {
    api(|| {
        let Some(e) = entry(sqlstate) else {
            return Err(VoucherError::invalid(format!(
                "{sqlstate} is not a voucher_ext SQLSTATE"
            )));
        };
        Err(match detail {
            Some(d) => VoucherError::Rule {
                sqlstate: e.sqlstate,
                detail: Some(d.into()),
                hint: None,
            },
            None => VoucherError::rule(e.sqlstate),
        })
    })
}

/// Internal, for validate(): the message of a catalogued failure.
#[pgrx::pg_extern(immutable, parallel_safe, name = "_reason")]
fn reason_sql(sqlstate: &str) -> Option<&'static str> {
    entry(sqlstate).map(|e| e.message)
}

/// Postgres' MAKE_SQLSTATE: five characters packed six bits each.
pub fn make_sqlstate(s: &str) -> c_int {
    let b = s.as_bytes();
    assert_eq!(b.len(), 5, "SQLSTATE must have five characters");
    let six = |c: u8| ((c.wrapping_sub(b'0')) & 0x3F) as c_int;
    six(b[0]) + (six(b[1]) << 6) + (six(b[2]) << 12) + (six(b[3]) << 18) + (six(b[4]) << 24)
}

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
}

/// Copies a Rust string into memory Postgres frees when the error is cleaned up.
fn palloc_cstr(s: &str) -> *mut c_char {
    let c = CString::new(s.replace('\0', "")).expect("no NUL after replace");
    // SAFETY: pstrdup copies into CurrentMemoryContext, reset by error recovery.
    unsafe { pg_sys::pstrdup(c.as_ptr()) }
}

/// `ereport(ERROR, errcode(..), errmsg(..), ...)` for SQLSTATEs pgrx has no variant for.
unsafe fn ereport_raw(
    sqlstate: c_int,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
) -> ! {
    let msg = palloc_cstr(&message);
    let det = detail.as_deref().map(palloc_cstr);
    let hin = hint.as_deref().map(palloc_cstr);
    drop((message, detail, hint));
    let fmt = c"%s".as_ptr();
    unsafe {
        if errstart(PgLogLevel::ERROR as c_int, std::ptr::null()) {
            errcode(sqlstate);
            errmsg(fmt, msg);
            if let Some(d) = det {
                errdetail(fmt, d);
            }
            if let Some(h) = hin {
                errhint(fmt, h);
            }
            errfinish(
                c"error.rs".as_ptr(),
                line!() as c_int,
                c"voucher_ext".as_ptr(),
            );
        }
    }
    unreachable!("errfinish(ERROR) returned")
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn sqlstate_packing_matches_postgres() {
        // ERRCODE_INSUFFICIENT_PRIVILEGE is MAKE_SQLSTATE('4','2','5','0','1')
        assert_eq!(
            make_sqlstate("42501") as isize,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as isize
        );
        assert_eq!(
            make_sqlstate("XX000") as isize,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as isize
        );
    }

    #[test]
    fn catalogue_codes_are_unique_and_ordered() {
        let codes: Vec<_> = CATALOGUE.iter().map(|e| e.sqlstate).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted);
        assert!(codes.iter().all(|c| c.len() == 5 && c.starts_with("VC")));
    }

    #[test]
    fn readme_documents_every_sqlstate() {
        let readme = include_str!("../../README.md");
        for e in CATALOGUE {
            let row = format!("| `{}` |", e.sqlstate);
            assert!(
                readme.contains(&row),
                "README lacks a row for {}",
                e.sqlstate
            );
        }
        for code in [
            "28000", "42501", "22023", "22004", "22P02", "23505", "55000", "XX001", "25006",
        ] {
            assert!(
                readme.contains(&format!("| `{code}` |")),
                "README lacks {code}"
            );
        }
    }

    #[test]
    fn messages_are_lower_case_without_period() {
        for e in CATALOGUE {
            assert!(!e.message.ends_with('.'));
            assert!(e.message.chars().next().unwrap().is_lowercase());
        }
    }
}
