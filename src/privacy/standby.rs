//! export_customer on a hot standby (or in a read-only transaction): its audit row cannot be
//! written there, so sql/privacy.sql exports without it (unless the caller passes
//! `allow_unaudited => false`: then 25006) and leaves this trace in the server log instead.

use std::ffi::{c_char, c_int, CString};

use pgrx::prelude::*;
use pgrx::PgLogLevel;

use crate::tenancy::context;

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errhidestmt(hide: bool) -> c_int;
    fn errhidecontext(hide: bool) -> c_int;
}

/// Internal, for export_customer: a LOG line saying that the context's tenant exported a
/// customer without an audit row, and by which key or operator. It names no customer, and hides
/// the statement and its context (the caller's SQL may hold the customer's source_id), which a
/// LOG from PL/pgSQL would print under the default log_min_error_statement.
#[pg_extern(volatile, parallel_restricted, name = "_log_unaudited_export")]
fn log_unaudited_export() {
    let Some(ctx) = context::current() else {
        return;
    };
    let line = format!(
        "voucher_ext: a customer of tenant {} was exported by {} without an audit row \
         (read-only server or transaction)",
        ctx.tenant_uuid(),
        context::actor_label(&ctx)
    );
    let line = CString::new(line).expect("no NUL in uuids and role names");
    // SAFETY: the ereport sequence (errstart ... errfinish) at level LOG, which returns.
    unsafe {
        if errstart(PgLogLevel::LOG as c_int, std::ptr::null()) {
            errmsg(c"%s".as_ptr(), line.as_ptr());
            errhidestmt(true);
            errhidecontext(true);
            errfinish(
                c"privacy/standby.rs".as_ptr(),
                0,
                c"log_unaudited_export".as_ptr(),
            );
        }
    }
}
