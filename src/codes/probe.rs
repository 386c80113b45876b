//! Which of a chunk of drawn codes a tenant already holds: one probe of the unique index
//! `(tenant_id, code)` of `voucher.code` per code, without a statement.
//!
//! Why not a statement: the look-up `SELECT code FROM voucher.code WHERE tenant_id = $1 AND
//! code = ANY($2)` was planned, with statistics made while the tenant had few codes (autovacuum
//! analyzes a small table early), as a read of every code of the tenant filtered by the array:
//! once per chunk of 10,000, so generating into a tenant holding N codes cost O(N) per chunk,
//! and one large call into a small tenant O(count^2). A join or a LATERAL sub-select per code
//! took the tenant's prefix of another index in the same state (estimates tie at one row), and
//! `INSERT ... ON CONFLICT DO NOTHING`, which always probes its arbiter index, costs a
//! speculative insertion per row (about 20,000 instructions per code, a quarter of a code's
//! whole cost). Here each code costs one B-tree descent (issue 17, notes/issue-17-gen).
//!
//! Visibility: the probes read with a snapshot taken per chunk, as the statement did
//! (`GetTransactionSnapshot`: a fresh one under READ COMMITTED, so codes that a generation this
//! one waited for on the tenant's lock committed are seen). A code is reported taken only if a
//! row holding it is visible; rows of other tenants are never read (the tenant is the first key).
//! The unique index stays the guard: a code this misses (inserted by a transaction still open)
//! makes the INSERT fail with 23505, as before.
//!
//! Row-level security: the probes read the index as the unique index's own check does, without
//! the tenant policy. Nothing they read reaches the caller: they only decide which drawn codes
//! to skip, the first key is the caller's own tenant, and the rows are then inserted by a
//! statement under the policy (its WITH CHECK). A code that a policy added by a DBA would hide
//! is skipped here where the statement's look-up would have drawn it and failed with 23505.

use std::collections::HashSet;

use pgrx::prelude::*;

use crate::common::index::{attnum, eq_key, tenant_keys, unique_index};

/// `voucher.code` and its unique index on `(tenant_id, code)`, resolved for one call.
pub(super) struct CodeIndex {
    code: pg_sys::Oid,
    index: pg_sys::Oid,
}

impl CodeIndex {
    /// None when the index is not there as expected (a valid, unique, plain B-tree index whose
    /// keys are exactly tenant_id, code): the caller looks the codes up with a statement.
    pub(super) fn resolve() -> Option<CodeIndex> {
        // SAFETY: catalog look-ups and relation opens with locks PostgreSQL releases at the end
        // of the transaction; every pointer read is the relcache's, valid while the relation is
        // open.
        unsafe {
            let schema = pg_sys::get_namespace_oid(c"voucher".as_ptr(), true);
            if schema == pg_sys::InvalidOid {
                return None;
            }
            let code = pg_sys::get_relname_relid(c"code".as_ptr(), schema);
            if code == pg_sys::InvalidOid {
                return None;
            }
            let rel = pg_sys::table_open(code, pg_sys::AccessShareLock as i32);
            let keys = match (attnum(rel, "tenant_id"), attnum(rel, "code")) {
                (Some(t), Some(c)) => [t, c],
                _ => {
                    pg_sys::table_close(rel, pg_sys::NoLock as i32);
                    return None;
                }
            };
            let found = unique_index(rel, &keys);
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            found.map(|index| CodeIndex { code, index })
        }
    }

    /// The codes of `codes` the tenant holds.
    pub(super) fn taken(&self, tenant: pgrx::Uuid, codes: &[String]) -> HashSet<String> {
        let mut taken = HashSet::new();
        // SAFETY: the relation and index are opened and closed here, the scan and the slot
        // ended and dropped before return; the key datums are palloc'd in the current memory
        // context (the caller's per-chunk context) and outlive the scan; the snapshot is
        // registered for the scan's duration.
        unsafe {
            let rel = pg_sys::table_open(self.code, pg_sys::AccessShareLock as i32);
            let idx = pg_sys::index_open(self.index, pg_sys::AccessShareLock as i32);
            let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
            let mut keys = tenant_keys(idx, &tenant);
            let scan = pg_sys::index_beginscan(rel, idx, snapshot, 2, 0);
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            for code in codes {
                eq_key(
                    &mut keys[1],
                    idx,
                    2,
                    pg_sys::F_TEXTEQ,
                    code.as_str().into_datum().expect("a text datum"),
                );
                pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
                if pg_sys::index_getnext_slot(
                    scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                    slot,
                ) {
                    taken.insert(code.clone());
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::index_endscan(scan);
            pg_sys::UnregisterSnapshot(snapshot);
            pg_sys::index_close(idx, pg_sys::NoLock as i32);
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
        }
        taken
    }
}
