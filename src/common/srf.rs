//! A one-row `RETURNS TABLE` result without pgrx's multi-call machinery, for the functions a
//! shop calls per order (`redeem`, `validate`).
//!
//! pgrx's `TableIterator` runs the set-returning protocol of a function that may return many
//! rows: per call it creates a multi-call memory context and builds the result's tuple
//! descriptor from `pg_proc` (`get_call_result_type`, which reads the OUT parameters' arrays and
//! looks each type up), then needs a second call to say it is done. For one row that was about
//! 10k instructions per redemption (1 %, callgrind, issue 17). Here the row is returned in one
//! call with `isDone = ExprSingleResult` (ExecMakeTableFunctionResult and ProjectSet both take it
//! as the only row), and the blessed descriptor is kept per backend and function, dropped
//! whenever `pg_proc` changes.
//!
//! The type is named `TableIterator` on purpose: pgrx's `#[pg_extern]` reads the result
//! columns' names from a return type of that name (`name!(column, type)`), so the SQL it
//! generates is exactly the SQL of pgrx's own type (`RETURNS TABLE (...)`); its SQL mapping is
//! pgrx's.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;

use pgrx::callconv::RetAbi;
use pgrx::htup::IntoHeapTuple;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable,
};

/// One row of a `RETURNS TABLE` function.
pub struct TableIterator<'a, Row> {
    row: Row,
    _life: PhantomData<&'a ()>,
}

impl<Row> TableIterator<'_, Row> {
    /// The function's only row.
    pub fn once(row: Row) -> Self {
        TableIterator {
            row,
            _life: PhantomData,
        }
    }
}

// SAFETY: the same SQL as pgrx's `TableIterator` of the same row (names come from the
// signature's `name!` items, types from this mapping).
unsafe impl<'a, Row: 'static> SqlTranslatable for TableIterator<'a, Row>
where
    pgrx::iter::TableIterator<'static, Row>: SqlTranslatable,
{
    const TYPE_IDENT: &'static str =
        <pgrx::iter::TableIterator<'static, Row> as SqlTranslatable>::TYPE_IDENT;
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        <pgrx::iter::TableIterator<'static, Row> as SqlTranslatable>::TYPE_ORIGIN;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Err(ArgumentError::Table);
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        <pgrx::iter::TableIterator<'static, Row> as SqlTranslatable>::RETURN_SQL;
}

thread_local! {
    /// function oid -> its result's blessed tuple descriptor (in TopMemoryContext).
    static DESCS: RefCell<Vec<(pg_sys::Oid, pg_sys::TupleDesc)>> = const { RefCell::new(Vec::new()) };
    /// Descriptors forgotten by an invalidation, freed by the next [`result_desc`].
    static STALE: RefCell<Vec<pg_sys::TupleDesc>> = const { RefCell::new(Vec::new()) };
    static CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Any change of `pg_proc` (a function dropped, created or replaced, an extension updated)
/// forgets every kept descriptor: a function oid is never trusted past it. They are freed by the
/// next call that needs one, not here: an invalidation may arrive while one is in use.
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    let gone: Vec<_> = DESCS.with(|d| d.borrow_mut().drain(..).map(|(_, t)| t).collect());
    STALE.with(|s| s.borrow_mut().extend(gone));
}

/// The result descriptor of the function being called, blessed (kept per backend).
///
/// # Safety
/// `fcinfo` must be the call of a function returning a composite.
unsafe fn result_desc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    if !CALLBACK.with(|c| c.replace(true)) {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            Some(forget),
            pg_sys::Datum::from(0),
        );
    }
    // (no descriptor is in use between two calls: each is used only by the call that took it)
    for stale in STALE.with(|s| std::mem::take(&mut *s.borrow_mut())) {
        pg_sys::FreeTupleDesc(stale);
    }
    let fn_oid = (*(*fcinfo).flinfo).fn_oid;
    if let Some(d) = DESCS.with(|d| d.borrow().iter().find(|(o, _)| *o == fn_oid).map(|x| x.1)) {
        return d;
    }
    let mut type_oid = pg_sys::InvalidOid;
    let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
    let class = pg_sys::get_call_result_type(fcinfo, &mut type_oid, &mut desc);
    if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || desc.is_null() {
        pgrx::error!("voucher_ext: function {fn_oid:?} does not return a row type");
    }
    let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    let kept = pg_sys::CreateTupleDescCopy(desc);
    pg_sys::MemoryContextSwitchTo(old);
    let kept = pg_sys::BlessTupleDesc(kept);
    DESCS.with(|d| d.borrow_mut().push((fn_oid, kept)));
    kept
}

// SAFETY: returns one composite datum built with the function's own result descriptor, in the
// caller's memory context, and tells the executor (ReturnSetInfo) that it is the only row.
unsafe impl<Row: IntoHeapTuple> RetAbi for TableIterator<'_, Row> {
    type Item = Row;
    type Ret = Row;

    fn to_ret(self) -> Self::Ret {
        self.row
    }

    unsafe fn box_ret_in_fcinfo(fcinfo: pg_sys::FunctionCallInfo, ret: Self::Ret) -> pg_sys::Datum {
        unsafe {
            let rsinfo = (*fcinfo).resultinfo.cast::<pg_sys::ReturnSetInfo>();
            if rsinfo.is_null()
                || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
                || (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_ValuePerCall as i32
                    == 0
            {
                pgrx::ereport!(
                    ERROR,
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "set-valued function called in context that cannot accept a set"
                );
            }
            (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_ValuePerCall;
            (*rsinfo).isDone = pg_sys::ExprDoneCond::ExprSingleResult;
            let tuple = ret.into_heap_tuple(result_desc(fcinfo));
            pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
        }
    }

    unsafe fn move_into_fcinfo_fcx(self, _fcinfo: pg_sys::FunctionCallInfo) {}

    unsafe fn fill_fcinfo_fcx(&self, _fcinfo: pg_sys::FunctionCallInfo) {}
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// One row per call wherever SQL calls such a function: in FROM, in a LATERAL join (once per
    /// outer row), in the select list, expanded with `.*`, in PL/pgSQL; and after `pg_proc`
    /// changed (the kept descriptor is forgotten and made again).
    #[pg_test]
    fn one_row_per_call_in_every_calling_context() {
        Spi::run(
            "SELECT voucher.authenticate(voucher.create_api_key('admin', \
                    tenant => voucher.create_tenant('one row')), session => true)",
        )
        .unwrap();
        let count = |sql: &str| Spi::get_one::<i64>(sql).unwrap().unwrap();
        assert_eq!(count("SELECT count(*) FROM voucher.validate('NOPE')"), 1);
        assert_eq!(
            count(
                "SELECT count(*) FROM generate_series(1, 3) g, \
                        LATERAL voucher.validate('NOPE' || g) v WHERE NOT v.valid"
            ),
            3
        );
        assert_eq!(
            count("SELECT count(*) FROM (SELECT voucher.validate(c) FROM (VALUES ('A'), ('B')) v(c)) s"),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM (SELECT (voucher.validate('NOPE')).*) s WHERE sqlstate = 'VC001'"),
            1
        );
        Spi::run(
            "CREATE FUNCTION pg_temp.rows() RETURNS bigint LANGUAGE plpgsql AS $$ \
             DECLARE n bigint := 0; r record; \
             BEGIN FOR r IN SELECT * FROM voucher.validate('NOPE') LOOP n := n + 1; END LOOP; \
                   RETURN n; END $$",
        )
        .unwrap();
        assert_eq!(count("SELECT pg_temp.rows()"), 1);
        let reason = || {
            Spi::get_one::<String>("SELECT reason FROM voucher.validate('NOPE')")
                .unwrap()
                .unwrap()
        };
        let before = reason();
        // a change of the function's pg_proc row (what an upgrade does) forgets the descriptor
        let oid = |sql: &str| Spi::get_one::<pg_sys::Oid>(sql).unwrap().unwrap();
        let validate =
            oid("SELECT 'voucher.validate(text, text, numeric, text)'::regprocedure::oid");
        let kept = || super::DESCS.with(|d| d.borrow().iter().any(|(o, _)| *o == validate));
        assert!(kept());
        Spi::run("ALTER FUNCTION voucher.validate(text, text, numeric, text) COST 101").unwrap();
        // (the invalidation is applied at the next command's start)
        assert_eq!(count("SELECT count(*) FROM pg_proc WHERE procost = 101"), 1);
        assert!(!kept());
        // the next call frees the forgotten descriptor and keeps a new one
        assert_eq!(reason(), before);
        assert!(kept());
        assert!(super::STALE.with(|s| s.borrow().is_empty()));
        assert_eq!(reason(), before);
    }
}
