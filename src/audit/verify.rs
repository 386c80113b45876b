//! Verification: every row's HMAC recomputed, the sealed chain walked, all on one snapshot.

use std::ffi::CStr;

use pgrx::prelude::*;

use super::key::{fingerprint, with_key};
use crate::common::error::{api, Result};
use crate::tenancy::context;
use crate::tenancy::roles::Action;

/// What verify_audit reports when the server's key is not the one that wrote the log.
const KEY_MISMATCH: &str =
    "audit key does not match: the server's audit key file is not the one this log was written with";

/// Rows fetched per round trip to the executor while walking the chain.
const BATCH: i64 = 5000;

struct Verdict {
    ok: bool,
    rows: i64,
    first_bad: Option<i64>,
    problem: Option<String>,
}

/// Column `col` (1-based) of row `row` of an SPI result, as the datum stored in the result's
/// tuple: by-reference values point into the tuple (short varlenas stay packed, and
/// `from_polymorphic_datum` of `&str` / `&[u8]` unpacks without copying), so reading a million
/// rows allocates nothing per row. pgrx's typed getters copy every value into a context that
/// lives until the function returns.
///
/// # Safety
/// `table` must be a live SPI result with more than `row` rows and at least `col` columns.
unsafe fn raw_field(
    table: *mut pg_sys::SPITupleTable,
    row: usize,
    col: i32,
) -> Option<pg_sys::Datum> {
    unsafe {
        let tuple = *(*table).vals.add(row);
        let mut is_null = false;
        let datum = pg_sys::SPI_getbinval(tuple, (*table).tupdesc, col, &mut is_null);
        (!is_null).then_some(datum)
    }
}

/// An int8 column of an SPI result (passed by value).
///
/// # Safety
/// As for [`raw_field`], and the column is an int8.
unsafe fn raw_i64(table: *mut pg_sys::SPITupleTable, row: usize, col: i32) -> Option<i64> {
    unsafe { raw_field(table, row, col) }.map(|d| d.value() as i64)
}

/// A bytea column of an SPI result, borrowed from its tuple.
///
/// # Safety
/// As for [`raw_field`], and the column is a bytea.
unsafe fn raw_bytes<'a>(
    table: *mut pg_sys::SPITupleTable,
    row: usize,
    col: i32,
) -> Option<&'a [u8]> {
    unsafe {
        raw_field(table, row, col)
            .and_then(|d| <&[u8]>::from_polymorphic_datum(d, false, pg_sys::BYTEAOID))
    }
}

/// Runs a read-only query with one uuid argument ($1) on the **calling statement's snapshot**:
/// SPI's read-only mode takes no new snapshot per query (pgrx's client takes one per query once
/// the transaction has written), so every read of one verification sees the same rows even while
/// other sessions append and seal. Planned like any SPI query, so PostgreSQL may run it with
/// parallel workers.
///
/// # Safety
/// Inside an SPI connection; `sql` is a single SELECT taking a uuid as $1.
unsafe fn snapshot_select(
    sql: &CStr,
    tenant: pg_sys::Datum,
) -> (*mut pg_sys::SPITupleTable, usize) {
    let mut types = [pg_sys::UUIDOID];
    let mut values = [tenant];
    unsafe {
        let rc = pg_sys::SPI_execute_with_args(
            sql.as_ptr(),
            1,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            std::ptr::null(),
            true,
            0,
        );
        assert_eq!(
            rc,
            pg_sys::SPI_OK_SELECT as i32,
            "verification query failed"
        );
        (pg_sys::SPI_tuptable, pg_sys::SPI_processed as usize)
    }
}

/// A read-only cursor on the calling statement's snapshot (see [`snapshot_select`]) read a batch
/// at a time; each batch is freed when the next is fetched, so memory stays at one batch.
struct Scan {
    portal: pg_sys::Portal,
    table: *mut pg_sys::SPITupleTable,
    n: usize,
    i: usize,
    done: bool,
}

impl Scan {
    /// # Safety
    /// As for [`snapshot_select`].
    unsafe fn open(sql: &CStr, tenant: pg_sys::Datum) -> Scan {
        let mut types = [pg_sys::UUIDOID];
        let mut values = [tenant];
        // SAFETY: the arguments are built above; SPI copies them into the portal.
        let portal = unsafe {
            pg_sys::SPI_cursor_open_with_args(
                std::ptr::null(),
                sql.as_ptr(),
                1,
                types.as_mut_ptr(),
                values.as_mut_ptr(),
                std::ptr::null(),
                true,
                0,
            )
        };
        Scan {
            portal,
            table: std::ptr::null_mut(),
            n: 0,
            i: 0,
            done: false,
        }
    }

    /// The current row as (batch, index), fetching the next batch when this one is used up.
    fn row(&mut self) -> Option<(*mut pg_sys::SPITupleTable, usize)> {
        if self.i >= self.n && !self.done {
            // SAFETY: our own batch, fully read; then the next one from our own portal.
            unsafe {
                if !self.table.is_null() {
                    pg_sys::SPI_freetuptable(self.table);
                }
                pg_sys::SPI_cursor_fetch(self.portal, true, BATCH);
                self.table = pg_sys::SPI_tuptable;
                self.n = pg_sys::SPI_processed as usize;
            }
            self.i = 0;
            self.done = self.n == 0;
        }
        (self.i < self.n).then_some((self.table, self.i))
    }

    /// The current row's first column, an int8 (the event id).
    fn id(&mut self) -> Option<i64> {
        // SAFETY: a row of our live batch; column 1 is int8, passed by value.
        self.row()
            .map(|(t, i)| unsafe { raw_i64(t, i, 1) }.unwrap_or(0))
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        // SAFETY: our own batch and portal, not used after this.
        unsafe {
            if !self.table.is_null() {
                pg_sys::SPI_freetuptable(self.table);
            }
            pg_sys::SPI_cursor_close(self.portal);
        }
    }
}

/// Two passes over one snapshot. First every row's HMAC, in one aggregate query that PostgreSQL
/// may spread over parallel workers (the same `_audit_hash` the writers use, evaluated in the
/// scan, so no row's text is copied out of the executor): the row count and the lowest id whose
/// HMAC does not match. Then the chain, in event order: the ids and stored hashes of the events
/// and the chain entries, each read along its primary key and merged here (no join, no sort),
/// up to that first bad row, so the earliest problem of either kind is the one reported.
fn verify_impl() -> Result<Verdict> {
    let ctx = context::authorize(Action::ReadAudit)?;
    let tenant = ctx.tenant;
    with_key(|key, keyed| {
        context::as_tenant_definer(tenant, || {
            Spi::connect(|_client| {
                let t = pgrx::Uuid::from_bytes(tenant)
                    .into_datum()
                    .expect("a uuid is a datum");
                let bad = |id: Option<i64>, rows: i64, why: &str| Verdict {
                    ok: false,
                    rows,
                    first_bad: id,
                    problem: Some(why.to_string()),
                };
                // SAFETY (all raw reads below): columns as in each query, rows < the count SPI
                // returned, each result read before the next query replaces SPI_tuptable.
                let (st, n) = unsafe {
                    snapshot_select(
                        c"SELECT sealed_through, head, purged_through, purge_head, key_fingerprint \
                            FROM voucher.audit_state WHERE tenant_id = $1",
                        t,
                    )
                };
                let int = |col| unsafe { raw_i64(st, 0, col) }.unwrap_or(0);
                let (sealed_through, head, purged_through, purge_head, fp) = if n == 0 {
                    (0, None, 0, None, None)
                } else {
                    (
                        int(1),
                        unsafe { raw_bytes(st, 0, 2) }.map(<[u8]>::to_vec),
                        int(3),
                        unsafe { raw_bytes(st, 0, 4) }.map(<[u8]>::to_vec),
                        unsafe { raw_field(st, 0, 5) }
                            .and_then(|d| unsafe {
                                <&str>::from_polymorphic_datum(d, false, pg_sys::TEXTOID)
                            })
                            .map(str::to_string),
                    )
                };
                if fp.as_deref().is_some_and(|f| f != fingerprint(key)) {
                    return bad(None, 0, KEY_MISMATCH);
                }

                // pass 1: every row's HMAC
                let (hm, _) = unsafe {
                    snapshot_select(
                        c"SELECT count(*), min(event_id) FILTER (WHERE b), count(*) FILTER (WHERE b) \
                            FROM (SELECT event_id, (row_hash OPERATOR(pg_catalog.=) \
                                         voucher._audit_hash(tenant_id, event_id, at, actor::text, \
                                         action, object_type, object_id, details::text)) \
                                         IS NOT TRUE AS b \
                                    FROM voucher.audit_event WHERE tenant_id = $1) r",
                        t,
                    )
                };
                let total = unsafe { raw_i64(hm, 0, 1) }.unwrap_or(0);
                let first_forged = unsafe { raw_i64(hm, 0, 2) };
                // a log never sealed has no stored fingerprint: a different key shows as every
                // row failing its HMAC, which no edit of a few rows explains
                if fp.is_none() && total > 1 && unsafe { raw_i64(hm, 0, 3) } == Some(total) {
                    return bad(None, 0, KEY_MISMATCH);
                }

                // pass 2: the chain
                let mut prev = purge_head.unwrap_or_else(|| keyed.genesis(&tenant).to_vec());
                let mut rows = 0i64;
                let mut events = unsafe {
                    Scan::open(
                        c"SELECT event_id, row_hash FROM voucher.audit_event \
                           WHERE tenant_id = $1 ORDER BY event_id",
                        t,
                    )
                };
                let mut links = unsafe {
                    Scan::open(
                        c"SELECT event_id, chain_hash FROM voucher.audit_chain \
                           WHERE tenant_id = $1 ORDER BY event_id",
                        t,
                    )
                };
                while let Some(id) = events.id() {
                    // a chain entry before this event: its event was deleted
                    if let Some(link) = links.id().filter(|l| *l < id) {
                        return bad(Some(link), rows, "a sealed row was deleted");
                    }
                    rows += 1;
                    if first_forged == Some(id) {
                        return bad(
                            Some(id),
                            rows,
                            "a row was changed, forged or renumbered (its HMAC does not match)",
                        );
                    }
                    let chain_hash = match links.id() {
                        Some(l) if l == id => links.row(),
                        _ => None,
                    };
                    if id > purged_through {
                        if id <= sealed_through {
                            let Some((lt, li)) = chain_hash else {
                                return bad(
                                    Some(id),
                                    rows,
                                    "a row was inserted into the sealed chain",
                                );
                            };
                            let (et, ei) = events.row().expect("the current event");
                            let stored = unsafe { raw_bytes(et, ei, 2) }.unwrap_or_default();
                            let next = keyed.chain(&prev, id, stored);
                            if unsafe { raw_bytes(lt, li, 2) } != Some(next.as_slice()) {
                                return bad(
                                    Some(id),
                                    rows,
                                    "the chain breaks here: a row before it was deleted or moved",
                                );
                            }
                            prev.clear();
                            prev.extend_from_slice(&next);
                        } else if chain_hash.is_some() {
                            return bad(Some(id), rows, "a chain entry lies past the sealed end");
                        }
                    }
                    if chain_hash.is_some() {
                        links.i += 1;
                    }
                    events.i += 1;
                }
                // chain entries after the last event: those events were deleted
                if let Some(link) = links.id() {
                    return bad(Some(link), rows, "a sealed row was deleted");
                }
                debug_assert_eq!(rows, total, "both passes read one snapshot");
                if sealed_through > purged_through && head.as_deref() != Some(prev.as_slice()) {
                    return bad(
                        None,
                        rows,
                        "the sealed chain was cut short: its last rows are missing",
                    );
                }
                Verdict {
                    ok: true,
                    rows,
                    first_bad: None,
                    problem: None,
                }
            })
        })
    })
}

/// Checks the tenant's audit log (admin and auditor keys): every row's HMAC, and the sealed
/// chain; names the first bad row.
#[pg_extern(volatile, parallel_unsafe)]
fn verify_audit() -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(rows_checked, i64),
        name!(first_bad_id, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let v = api(verify_impl);
    TableIterator::once((v.ok, v.rows, v.first_bad, v.problem))
}
