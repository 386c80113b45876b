//! Reading a unique B-tree index from Rust, for the look-ups that probe an index without a
//! statement (redeem's `lookup.rs`, codes' `probe.rs`): find a column, find the index, build an
//! equality scan key.

use std::ffi::CStr;

use pgrx::prelude::*;

/// The attribute number of a live column `name` of `rel`.
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn attnum(rel: pg_sys::Relation, name: &str) -> Option<i16> {
    let desc = (*rel).rd_att;
    let atts = (*desc).attrs.as_slice((*desc).natts as usize);
    atts.iter()
        .find(|a| {
            !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        })
        .map(|a| a.attnum)
}

/// A valid, unique, plain btree index of `rel` whose keys are exactly `keys`, in this order (no
/// predicate, no expression).
///
/// # Safety
/// `rel` must be an open relation; its indexes are opened and closed here (the locks are held
/// to the end of the transaction, as the executor's).
pub unsafe fn unique_index(rel: pg_sys::Relation, keys: &[i16]) -> Option<pg_sys::Oid> {
    unique_index_where(rel, keys, None)
}

/// As [`unique_index`], for an index whose predicate is exactly `not_null IS NOT NULL` (a unique
/// key of the rows that have one): a probe with a non-NULL value of that column finds every row
/// that can match.
///
/// # Safety
/// As [`unique_index`].
pub unsafe fn unique_index_not_null(
    rel: pg_sys::Relation,
    keys: &[i16],
    not_null: i16,
) -> Option<pg_sys::Oid> {
    unique_index_where(rel, keys, Some(not_null))
}

/// Is the index's predicate exactly `att IS NOT NULL` on the indexed table's column `att`?
unsafe fn predicate_is_not_null(idx: pg_sys::Relation, att: i16) -> bool {
    let list = pg_sys::RelationGetIndexPredicate(idx);
    if list.is_null() || (*list).length != 1 {
        return false;
    }
    let node = pg_sys::list_nth(list, 0).cast::<pg_sys::Node>();
    if (*node).type_ != pg_sys::NodeTag::T_NullTest {
        return false;
    }
    let test = node.cast::<pg_sys::NullTest>();
    let arg = (*test).arg.cast::<pg_sys::Node>();
    (*test).nulltesttype == pg_sys::NullTestType::IS_NOT_NULL
        && !(*test).argisrow
        && !arg.is_null()
        && (*arg).type_ == pg_sys::NodeTag::T_Var
        && (*arg.cast::<pg_sys::Var>()).varattno == att
}

unsafe fn unique_index_where(
    rel: pg_sys::Relation,
    keys: &[i16],
    not_null: Option<i16>,
) -> Option<pg_sys::Oid> {
    let list = pg_sys::RelationGetIndexList(rel);
    let n = if list.is_null() { 0 } else { (*list).length };
    let mut found = None;
    for i in 0..n {
        let oid = pg_sys::list_nth_oid(list, i);
        let idx = pg_sys::index_open(oid, pg_sys::AccessShareLock as i32);
        let form = (*idx).rd_index;
        let indkey = (*form).indkey.values.as_slice((*form).indnatts as usize);
        let fits = (*(*idx).rd_rel).relam == pg_sys::BTREE_AM_OID
            && (*form).indisunique
            && (*form).indisvalid
            && (*form).indnkeyatts as usize == keys.len()
            && indkey[..keys.len()] == *keys
            && match not_null {
                None => pg_sys::heap_attisnull(
                    (*idx).rd_indextuple,
                    pg_sys::Anum_pg_index_indpred as i32,
                    std::ptr::null_mut(),
                ),
                Some(att) => predicate_is_not_null(idx, att),
            }
            && pg_sys::heap_attisnull(
                (*idx).rd_indextuple,
                pg_sys::Anum_pg_index_indexprs as i32,
                std::ptr::null_mut(),
            );
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
        if fits {
            found = Some(oid);
            break;
        }
    }
    found
}

/// The arbiter `INSERT ... ON CONFLICT (keys)` infers on `rel` (the planner's
/// `infer_arbiter_indexes`: every valid unique index whose key columns are exactly `keys`, in any
/// order, without predicate or expression), if it is exactly one btree index; None if there is
/// none or more than one (then only the statement's inference applies).
///
/// # Safety
/// As [`unique_index`].
pub unsafe fn sole_arbiter(rel: pg_sys::Relation, keys: &[i16]) -> Option<pg_sys::Oid> {
    let mut want = keys.to_vec();
    want.sort_unstable();
    let list = pg_sys::RelationGetIndexList(rel);
    let n = if list.is_null() { 0 } else { (*list).length };
    let mut found = vec![];
    for i in 0..n {
        let oid = pg_sys::list_nth_oid(list, i);
        let idx = pg_sys::index_open(oid, pg_sys::AccessShareLock as i32);
        let form = (*idx).rd_index;
        let mut indkey = (*form)
            .indkey
            .values
            .as_slice((*form).indnkeyatts as usize)
            .to_vec();
        indkey.sort_unstable();
        let bare = |att| pg_sys::heap_attisnull((*idx).rd_indextuple, att, std::ptr::null_mut());
        if (*form).indisunique
            && (*form).indisvalid
            && indkey == want
            && bare(pg_sys::Anum_pg_index_indpred as i32)
            && bare(pg_sys::Anum_pg_index_indexprs as i32)
        {
            found.push((oid, (*(*idx).rd_rel).relam == pg_sys::BTREE_AM_OID));
        }
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
    }
    match found[..] {
        [(oid, true)] => Some(oid),
        _ => None,
    }
}

/// Scan keys for a unique index on (tenant_id, something): the first is `tenant`, the second is
/// the caller's to fill with [`eq_key`] (column 2).
///
/// # Safety
/// `idx` must be an open index whose first key column is a uuid.
pub unsafe fn tenant_keys(idx: pg_sys::Relation, tenant: &pgrx::Uuid) -> [pg_sys::ScanKeyData; 2] {
    let mut keys: [pg_sys::ScanKeyData; 2] = [Default::default(), Default::default()];
    eq_key(
        &mut keys[0],
        idx,
        1,
        pg_sys::F_UUID_EQ,
        tenant.into_datum().expect("a uuid datum"),
    );
    keys
}

/// Makes `key` an equality condition on the index's key column `column` (1-based) with the
/// equality function `proc` (e.g. `F_UUID_EQ`, `F_TEXTEQ`) and the index's collation.
///
/// # Safety
/// `idx` must be an open index with at least `column` key columns; `arg` must stay valid for the
/// scan.
pub unsafe fn eq_key(
    key: &mut pg_sys::ScanKeyData,
    idx: pg_sys::Relation,
    column: u16,
    proc: u32,
    arg: pg_sys::Datum,
) {
    pg_sys::ScanKeyEntryInitialize(
        key,
        0,
        column as i16,
        pg_sys::BTEqualStrategyNumber as u16,
        pg_sys::InvalidOid,
        *(*idx).rd_indcollation.add(column as usize - 1),
        pg_sys::Oid::from(proc),
        arg,
    );
}

/// The id of table voucher.`name`, or None (no such schema or table).
///
/// # Safety
/// Catalog look-ups: call inside a transaction.
pub unsafe fn voucher_table(name: &CStr) -> Option<pg_sys::Oid> {
    let schema = pg_sys::get_namespace_oid(c"voucher".as_ptr(), true);
    if schema == pg_sys::InvalidOid {
        return None;
    }
    let oid = pg_sys::get_relname_relid(name.as_ptr(), schema);
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Locks the row whose version `slot` holds (a row of `rel` read under `snapshot`) in `mode`,
/// waiting for a concurrent change as a row-locking statement waits, and then the newest version
/// of the row, which `slot` then holds (`TUPLE_LOCK_FLAG_FIND_LAST_VERSION`, what READ COMMITTED
/// statements lock before their re-check): `TM_Ok`, or `TM_Deleted` when the row is gone.
///
/// # Safety
/// `slot` must hold a tuple of `rel` with its tid; `snapshot` the active snapshot.
pub unsafe fn lock_newest(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
    mode: pg_sys::LockTupleMode::Type,
) -> pg_sys::TM_Result::Type {
    let mut tid = (*slot).tts_tid;
    let mut failure = pg_sys::TM_FailureData::default();
    pg_sys::table_tuple_lock(
        rel,
        &mut tid,
        snapshot,
        slot,
        pg_sys::GetCurrentCommandId(true),
        mode,
        pg_sys::LockWaitPolicy::LockWaitBlock,
        pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8,
        &mut failure,
    )
}

/// The first row of `rel` whose index `index` on (tenant_id, key) holds `tenant` and `key`
/// (equality function `key_proc`), read under the active snapshot into a slot of `rel`: `f`
/// gets the slot (valid during the call) and that snapshot; None when there is no such row. The
/// index is opened with `lock`, the lock the statement the caller stands in for takes (kept to
/// the end of the transaction).
///
/// # Safety
/// `rel` must be open; `index` one of its indexes whose first key column is a uuid; `key` must
/// stay valid for the scan; there must be an active snapshot.
#[allow(clippy::too_many_arguments)]
pub unsafe fn first_by_index<R>(
    rel: pg_sys::Relation,
    index: pg_sys::Oid,
    lock: u32,
    tenant: &pgrx::Uuid,
    key: pg_sys::Datum,
    key_proc: u32,
    f: impl FnOnce(*mut pg_sys::TupleTableSlot, pg_sys::Snapshot) -> R,
) -> Option<R> {
    let snapshot = pg_sys::GetActiveSnapshot();
    let idx = pg_sys::index_open(index, lock as i32);
    let mut keys = tenant_keys(idx, tenant);
    eq_key(&mut keys[1], idx, 2, key_proc, key);
    let scan = pg_sys::index_beginscan(rel, idx, snapshot, 2, 0);
    pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
    let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    let out = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
        .then(|| f(slot, snapshot));
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::index_endscan(scan);
    pg_sys::index_close(idx, pg_sys::NoLock as i32);
    out
}
