//! voucher_ext: the voucher logic of a platform like Voucherify, inside PostgreSQL.
//!
//! Schema objects live in `sql/`; Rust does what needs Rust: the tenant context, keys, hashing,
//! code generation. See README.md for the SQL API.

use std::ffi::c_void;

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod charset;
mod checkchar;
mod codes;
mod context;
mod definer;
mod error;
mod gucs;
mod keys;
mod pattern;
mod permute;
mod rng;
mod roles;
mod tenancy;

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/tenancy.sql",
    name = "tenancy",
    requires = [
        context::current_tenant_sql,
        context::key_probe,
        context::authorize_sql,
        context::can_read
    ]
);
extension_sql_file!(
    "../sql/campaigns.sql",
    name = "campaigns",
    requires = [
        "tenancy",
        codes::code_shape,
        codes::normalize_code,
        error::raise_sql,
        rng::uuid_v7_sql,
        context::actor_label_sql
    ]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: registered once per backend, when the library is loaded.
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => context::end_of_transaction(),
        _ => {}
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn extension_creates_its_roles() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_roles \
             WHERE rolname IN ('voucher_operator', 'voucher_client', 'voucher_definer') \
               AND NOT rolsuper AND NOT rolbypassrls AND NOT rolcanlogin",
        );
        assert_eq!(n, Ok(Some(3)));
    }

    #[pg_test]
    fn nothing_is_executable_by_public() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'voucher'::regnamespace \
               AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a \
                                                WHERE a.grantee = 0))",
        );
        assert_eq!(n, Ok(Some(0)));
    }
}
