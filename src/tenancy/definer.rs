//! Running SQL as `voucher_definer`, the role our functions act as.
//!
//! `voucher_definer` is NOLOGIN, not a superuser and without BYPASSRLS, so row-level security
//! applies to everything our functions read or write: a query that forgot its
//! `WHERE tenant_id = ...` still sees only the current tenant. PL/pgSQL functions get this from
//! `SECURITY DEFINER` (they are owned by `voucher_definer`); Rust functions, which must also know
//! who called them, switch explicitly here, exactly as `fmgr_security_definer` does: a pinned
//! `search_path` and a local user-id change, both undone on return and by (sub)transaction abort.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

pub const DEFINER: &CStr = c"voucher_definer";
pub const OPERATOR: &CStr = c"voucher_operator";

fn role_oid(name: &CStr) -> pg_sys::Oid {
    // SAFETY: a syscache lookup; raises a normal ERROR if the role is missing.
    unsafe { pg_sys::get_role_oid(name.as_ptr(), false) }
}

thread_local! {
    /// voucher_definer's id, looked up once per backend (every call of ours switches to it) and
    /// forgotten when any role changes (pg_authid invalidation: a DROP EXTENSION and CREATE
    /// EXTENSION re-create the role with another id).
    static DEFINER_OID: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    static DEFINER_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C-unwind" fn forget_definer(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    DEFINER_OID.with(|d| d.set(None));
}

fn definer_oid() -> pg_sys::Oid {
    if let Some(oid) = DEFINER_OID.with(Cell::get) {
        return oid;
    }
    if !DEFINER_CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a plain function, once per backend.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::AUTHOID as i32,
                Some(forget_definer),
                pg_sys::Datum::from(0),
            )
        };
    }
    let oid = role_oid(DEFINER);
    DEFINER_OID.with(|d| d.set(Some(oid)));
    oid
}

/// The role the current SQL function was called by (`current_user` of the caller).
pub fn caller() -> pg_sys::Oid {
    // SAFETY: reads backend-local state.
    unsafe { pg_sys::GetUserId() }
}

/// `voucher._by_definer()`: is the current user voucher_definer, that is, one of our functions?
/// The WHEN of the direct-DML audit triggers (sql/audit.sql). Written as
/// `current_user <> 'voucher_definer'`, the condition was read back from its stored form (with a
/// 64-byte `name` constant, one number per byte) and planned by every statement that updates
/// one of our tables: 27k instructions per redemption (issue 17, callgrind). As a call without
/// arguments it costs 13k, reading back, planning and running. Like every function of ours it is
/// not executable by PUBLIC, only by voucher_definer (sql/finalize.sql): other changes come from
/// superusers and the tables' owner; a role a DBA grants UPDATE or DELETE on a table also needs
/// EXECUTE on this, or its changes are refused (42501), never made unaudited.
#[pgrx::pg_extern(stable, parallel_safe, name = "_by_definer")]
pub fn by_definer() -> bool {
    caller() == definer_oid()
}

/// Is `role` a superuser or does it have the privileges of `voucher_operator`?
pub fn is_operator(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups on valid role OIDs.
    unsafe {
        pg_sys::superuser_arg(role) || {
            let op = pg_sys::get_role_oid(OPERATOR.as_ptr(), true);
            op != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, op)
        }
    }
}

/// The name of a role, for audit rows and `created_by` columns.
pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId returns a palloc'd copy or raises.
    unsafe {
        let p = pg_sys::GetUserNameFromId(role, true);
        if p.is_null() {
            format!("oid:{}", role.to_u32())
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Runs `f` as `voucher_definer` with only `pg_catalog` on the search path.
///
/// The path is pinned with an override (not a SET of the setting): names in our SQL are
/// schema-qualified, and the override keeps a caller's search_path from resolving an operator
/// or function of ours to one of theirs, for the price of a list push, with no GUC churn.
pub fn as_definer<R>(f: impl FnOnce() -> R) -> R {
    let definer = definer_oid();
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_sec: i32 = 0;
    let mut path = pg_sys::OverrideSearchPath {
        schemas: std::ptr::null_mut(),
        addCatalog: true,
        addTemp: false,
        generation: 0,
    };
    // SAFETY: this is what fmgr_security_definer does, with the search path pushed instead of
    // set. If `f` raises, (sub)transaction abort restores the user id and drops the override.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_sec);
        pg_sys::PushOverrideSearchPath(&mut path);
        pg_sys::SetUserIdAndSecContext(
            definer,
            saved_sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        let result = f();
        pg_sys::SetUserIdAndSecContext(saved_user, saved_sec);
        pg_sys::PopOverrideSearchPath();
        result
    }
}
