//! voucher_ext: the voucher logic of a platform like Voucherify, inside PostgreSQL.
//!
//! Schema objects live in `sql/`; Rust does what needs Rust: the tenant context, keys, hashing,
//! code generation. See README.md for the SQL API.

use std::ffi::c_void;

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod audit;
mod codes;
mod common;
mod crypto;
mod customers;
mod ops;
mod privacy;
mod redeem;
mod scale;
mod settings;
mod tenancy;
mod throttle;

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/tenancy.sql",
    name = "tenancy",
    requires = [
        tenancy::context::current_tenant_sql,
        tenancy::context::key_probe,
        tenancy::context::authorize_sql,
        tenancy::context::can_read,
        tenancy::context::tenant_scan,
        tenancy::revocation::credentials_changed
    ]
);
extension_sql_file!(
    "../sql/codes.sql",
    name = "codes",
    requires = [
        "tenancy",
        codes::generate::code_shape,
        codes::generate::normalize_code,
        common::error::raise_sql,
        common::rng::uuid_v7_sql,
        tenancy::context::actor_label_sql
    ]
);
extension_sql_file!(
    "../sql/customers.sql",
    name = "customers",
    requires = ["codes"]
);
extension_sql_file!(
    "../sql/crypto.sql",
    name = "crypto",
    requires = ["customers", crypto::customers::decrypt_sql]
);
extension_sql_file!(
    "../sql/redeem.sql",
    name = "redeem",
    requires = ["crypto", common::error::reason_sql]
);
extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = [
        "redeem",
        audit::hash::audit_hash_sql,
        audit::write::audit_sql,
        audit::write::audit_direct_sql,
        audit::retention::audit_purging,
        tenancy::definer::by_definer
    ]
);
extension_sql_file!(
    "../sql/settings.sql",
    name = "settings",
    requires = [
        "audit",
        settings::setting_registry,
        settings::settings_changed
    ]
);
extension_sql_file!(
    "../sql/throttle.sql",
    name = "throttle",
    requires = ["settings", throttle::lockouts_sql]
);
extension_sql_file!("../sql/ops.sql", name = "ops", requires = ["audit"]);
extension_sql_file!(
    "../sql/privacy.sql",
    name = "privacy",
    requires = [
        "audit",
        "settings",
        privacy::keys::customer_by_source,
        privacy::keys::open_personal,
        privacy::keys::pseudonymize
    ]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    scale::backtrace::disable_capture();
    scale::cluster::init_gucs(); // before gucs::init reserves the prefix
    common::gucs::init();
    audit::install();
    tenancy::revocation::init();
    settings::init();
    throttle::init();
    crypto::init();
    ops::init();
    // SAFETY: registered once per backend, when the library is loaded.
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => audit::pre_commit(),
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            tenancy::revocation::end_of_transaction(true);
            settings::end_of_transaction(true);
            audit::end_of_transaction(true);
            crypto::end_of_transaction(true);
            tenancy::context::end_of_transaction();
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            tenancy::revocation::end_of_transaction(false);
            settings::end_of_transaction(false);
            audit::end_of_transaction(false);
            crypto::end_of_transaction(false);
            tenancy::context::end_of_transaction();
        }
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

    /// Without shared_preload_libraries there is no shared memory: every call re-reads the key,
    /// so a revocation is seen at once, here even inside the revoking transaction.
    #[pg_test(error = "invalid API key")]
    fn revocation_without_preloading() {
        assert_eq!(
            Spi::get_one::<bool>("SELECT voucher._preloaded()"),
            Ok(Some(false))
        );
        Spi::run(
            "SELECT voucher.authenticate(voucher.create_api_key('auditor', 'watch', \
                    tenant => voucher.create_tenant('fallback')), session => true)",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM voucher.api_keys"),
            Ok(Some(1))
        );
        Spi::run(
            "UPDATE voucher.credential SET revoked_at = now() \
              WHERE tenant_id = voucher.current_tenant()",
        )
        .unwrap();
        // the next call raises 28000
        let _ = Spi::get_one::<i64>("SELECT count(*) FROM voucher.api_keys");
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
