//! A redemption's two rows, its `voucher.redemption` row and its `redemption.created` audit row,
//! written without a statement: the claim statement is then only the claim (the conditional
//! UPDATE, or the slot claim of a voucher without a limit) and returns what the rows need.
//!
//! Why: the INSERT of the redemption and the INSERT of its audit row, as two more data-modifying
//! CTEs of the claim statement, were the larger part of a shop redemption's work (issue 17,
//! callgrind, one backend): 144k instructions the redemption's INSERT and 221k the audit row's
//! (its projection, the details and hash function calls, `nextval`, the CTE scans, two
//! ModifyTable nodes with their RLS WITH CHECK init plans) of 988k per call. Here the same rows
//! go in the way PostgreSQL's logical replication apply worker writes a row
//! (`ExecSimpleRelationInsert`: the table's constraints, the heap insert, every index's entry),
//! with the details and the row hash made in Rust from the values themselves. A new customer
//! (`voucher.customer`) goes in the same way but as `INSERT ... ON CONFLICT (tenant_id,
//! source_index) DO NOTHING` inserts it ([`create_customer`]), and `upsert_customer`'s audit row
//! by [`AuditWriter`] alone.
//!
//! What the INSERT statement would check is checked here, or this path is not taken (`open`
//! answers None and the claim runs as the statement that writes both rows, with PostgreSQL
//! applying everything):
//! - row-level security: each table's only policy is still `tenant_isolation` as verified when
//!   resolved (USING and WITH CHECK `tenant_id = (SELECT voucher.current_tenant())`, PUBLIC, the
//!   same rules as the probes of `lookup`), RLS applies to the current role, and the tenant
//!   written is `current_tenant()` itself: the WITH CHECK holds for every row written here;
//! - the INSERT privilege of the current role (voucher_definer) on each table written, and the
//!   sequence's own check (`nextval`);
//! - the tables are plain tables (not partitioned, not partitions) with no INSERT trigger of any
//!   kind (a foreign key or deferred unique constraint is one) and no rule; every column is one
//!   this module fills, of the type it fills (a domain-typed column, a generated column or an
//!   unknown column: the statement); dropped columns are stored NULL, as the executor does;
//! - not in a read-only transaction, not on Citus (`lookup::may_probe`);
//! - for a new customer also: the arbiter is the one unique index the statement would infer for
//!   its conflict target (`common::index::sole_arbiter`), and the transaction is READ COMMITTED
//!   (the statement's serialization check of a conflicting row applies to the others).
//!
//! The resolutions are kept per backend and forgotten with `lookup`'s (any relcache
//! invalidation of the table: ALTER, CREATE TRIGGER, CREATE POLICY, DROP, ANALYZE), and every
//! check above is made again under the lock, at each `open`.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use super::lookup::{self, Policy};
use crate::audit::hash::Canonical;
use crate::audit::key::with_key;
use crate::common::error::Result;
use crate::common::index::{attnum, sole_arbiter, voucher_table};

/// Columns (name, type) of voucher.redemption, in the order of [`RedemptionRow::values`].
const REDEMPTION: &[(&str, pg_sys::Oid)] = &[
    ("tenant_id", pg_sys::UUIDOID),
    ("redemption_id", pg_sys::UUIDOID),
    ("voucher_id", pg_sys::UUIDOID),
    ("campaign_id", pg_sys::UUIDOID),
    ("customer_id", pg_sys::UUIDOID),
    ("order_id", pg_sys::TEXTOID),
    ("order_amount", pg_sys::NUMERICOID),
    ("amount", pg_sys::NUMERICOID),
    ("discount", pg_sys::NUMERICOID),
    ("balance_after", pg_sys::NUMERICOID),
    ("idempotency_key", pg_sys::TEXTOID),
    ("request_hash", pg_sys::BYTEAOID),
    ("metadata", pg_sys::BYTEAOID),
    ("redeemed_at", pg_sys::TIMESTAMPTZOID),
    ("redeemed_by", pg_sys::TEXTOID),
    ("rolled_back_at", pg_sys::TIMESTAMPTZOID),
    ("rollback_reason", pg_sys::TEXTOID),
    ("rolled_back_by", pg_sys::TEXTOID),
    ("key_id", pg_sys::INT4OID),
    ("use_slot", pg_sys::INT2OID),
];

/// Columns of voucher.audit_event, in the order of the values `record` makes.
const AUDIT: &[(&str, pg_sys::Oid)] = &[
    ("tenant_id", pg_sys::UUIDOID),
    ("event_id", pg_sys::INT8OID),
    ("at", pg_sys::TIMESTAMPTZOID),
    ("actor", pg_sys::JSONBOID),
    ("action", pg_sys::TEXTOID),
    ("object_type", pg_sys::TEXTOID),
    ("object_id", pg_sys::TEXTOID),
    ("details", pg_sys::JSONBOID),
    ("row_hash", pg_sys::BYTEAOID),
];

/// Columns of voucher.customer, in the order of [`NewCustomer::values`].
const CUSTOMER: &[(&str, pg_sys::Oid)] = &[
    ("tenant_id", pg_sys::UUIDOID),
    ("customer_id", pg_sys::UUIDOID),
    ("source_index", pg_sys::BYTEAOID),
    ("email_index", pg_sys::BYTEAOID),
    ("key_id", pg_sys::INT4OID),
    ("source_id", pg_sys::BYTEAOID),
    ("email", pg_sys::BYTEAOID),
    ("name", pg_sys::BYTEAOID),
    ("metadata", pg_sys::BYTEAOID),
    ("audit_key", pg_sys::BYTEAOID),
    ("created_at", pg_sys::TIMESTAMPTZOID),
    ("updated_at", pg_sys::TIMESTAMPTZOID),
    ("forgotten_at", pg_sys::TIMESTAMPTZOID),
];

/// The conflict target of a new customer: `ON CONFLICT (tenant_id, source_index)`.
const CUSTOMER_ARBITER: &[&str] = &["tenant_id", "source_index"];

/// Attributes a resolved table may have (dropped ones included).
const MAX_ATTS: usize = 64;

/// A written table as resolved: for each attribute of its descriptor, the index of the value in
/// the writer's column list (-1: a dropped column).
#[derive(Clone, Copy)]
struct Target {
    rel: pg_sys::Oid,
    natts: usize,
    map: [i8; MAX_ATTS],
    policy: Policy,
    /// the one unique index an `ON CONFLICT` on the writer's conflict target takes (InvalidOid:
    /// the writer has none)
    arbiter: pg_sys::Oid,
}

thread_local! {
    /// None: not resolved (or forgotten); Some(None): this schema is not one to write directly.
    static REDEMPTIONS: Cell<Option<Option<Target>>> = const { Cell::new(None) };
    static AUDITS: Cell<Option<Option<Target>>> = const { Cell::new(None) };
    static CUSTOMERS: Cell<Option<Option<Target>>> = const { Cell::new(None) };
}

/// Forgets a resolution of `relid` (InvalidOid: of everything); called by `lookup`'s relcache
/// callback.
pub(super) fn forget(relid: pg_sys::Oid) {
    for cache in [&REDEMPTIONS, &AUDITS, &CUSTOMERS] {
        cache.with(|k| lookup::forget_cached(k, relid, |t| t.rel == relid));
    }
}

/// Forgets both resolutions (`lookup::trim_policies` frees the policy copies they point to).
pub(super) fn forget_all() {
    REDEMPTIONS.with(|k| k.set(None));
    AUDITS.with(|k| k.set(None));
    CUSTOMERS.with(|k| k.set(None));
}

/// voucher.`table` resolved against `columns` (see the module comment), with the one unique
/// index on exactly the columns `arbiter` if it names any, or None.
unsafe fn resolve(
    table: &CStr,
    columns: &[(&str, pg_sys::Oid)],
    arbiter: &[&str],
) -> Option<Target> {
    let oid = voucher_table(table)?;
    let rel = pg_sys::table_open(oid, pg_sys::AccessShareLock as i32);
    let target = target_of(rel, columns).and_then(|(natts, map)| {
        let arbiter = match arbiter {
            [] => pg_sys::InvalidOid,
            names => {
                let keys: Option<Vec<i16>> = names.iter().map(|n| attnum(rel, n)).collect();
                sole_arbiter(rel, &keys?)?
            }
        };
        Some(Target {
            rel: oid,
            natts,
            map,
            policy: lookup::verified_policy(rel)?,
            arbiter,
        })
    });
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    target
}

/// The attribute map of `rel` if it is a plain table whose live columns are exactly `columns`,
/// each of its type, none generated.
unsafe fn target_of(
    rel: pg_sys::Relation,
    columns: &[(&str, pg_sys::Oid)],
) -> Option<(usize, [i8; MAX_ATTS])> {
    let class = (*rel).rd_rel;
    if (*class).relkind as u8 != pg_sys::RELKIND_RELATION || (*class).relispartition {
        return None;
    }
    let desc = (*rel).rd_att;
    let natts = (*desc).natts as usize;
    if natts > MAX_ATTS {
        return None;
    }
    let mut map = [-1i8; MAX_ATTS];
    let mut seen = vec![false; columns.len()];
    for (i, a) in (*desc).attrs.as_slice(natts).iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        let name = CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
        let j = columns
            .iter()
            .position(|(n, t)| n.as_bytes() == name && *t == a.atttypid)?;
        if a.attgenerated != 0 || seen[j] {
            return None;
        }
        seen[j] = true;
        map[i] = j as i8;
    }
    seen.iter().all(|s| *s).then_some((natts, map))
}

fn resolved(
    cache: &'static std::thread::LocalKey<Cell<Option<Option<Target>>>>,
    table: &CStr,
    columns: &[(&str, pg_sys::Oid)],
    arbiter: &[&str],
) -> Option<Target> {
    // SAFETY: catalog look-ups; a failure raises a normal ERROR.
    lookup::resolved_one(cache, || unsafe { resolve(table, columns, arbiter) })
}

/// Both tables opened for writing, every check of the module comment made under the lock.
pub struct Writer {
    redemption: (pg_sys::Relation, Target),
    audit: AuditWriter,
}

/// The opened table if every per-call check holds (else it is closed again).
unsafe fn open_one(
    cache: &'static std::thread::LocalKey<Cell<Option<Option<Target>>>>,
    t: &Target,
) -> Option<pg_sys::Relation> {
    if pg_sys::pg_class_aclcheck(
        t.rel,
        pg_sys::GetUserId(),
        pg_sys::ACL_INSERT as pg_sys::AclMode,
    ) != pg_sys::AclResult::ACLCHECK_OK
    {
        return None;
    }
    let rel = pg_sys::try_table_open(t.rel, pg_sys::RowExclusiveLock as i32);
    if rel.is_null() {
        return None;
    }
    // an invalidation taken in with the lock forgot `t`: the table may have changed
    let current = cache.with(|k| k.get()).is_some();
    let triggers = (*rel).trigdesc;
    let insert_triggers = !triggers.is_null() && {
        let d = &*triggers;
        d.trig_insert_before_row
            || d.trig_insert_after_row
            || d.trig_insert_instead_row
            || d.trig_insert_before_statement
            || d.trig_insert_after_statement
            || d.trig_insert_new_table
    };
    if current
        && !insert_triggers
        && (*rel).rd_rules.is_null()
        && (*(*rel).rd_att).natts as usize == t.natts
        && lookup::policy_holds(rel, &t.policy)
    {
        Some(rel)
    } else {
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        None
    }
}

impl Writer {
    /// Both tables, if this call may write them directly for `tenant`; None: the claim must be
    /// the statement that writes them. Call as voucher_definer, before the claim; then
    /// [`Writer::record`] or [`Writer::close`].
    pub fn open(tenant: pgrx::Uuid) -> Option<Writer> {
        let audit = AuditWriter::open(tenant)?;
        // SAFETY: as in `AuditWriter::open`.
        let opened = resolved(&REDEMPTIONS, c"redemption", REDEMPTION, &[])
            .and_then(|red| unsafe { open_one(&REDEMPTIONS, &red) }.map(|r| (r, red)));
        match opened {
            // (the second open may have taken in an invalidation that forgot the first)
            Some(redemption) if AUDITS.with(|k| k.get()).is_some() => {
                Some(Writer { redemption, audit })
            }
            _ => {
                if let Some((r, _)) = opened {
                    // SAFETY: opened just above.
                    unsafe { pg_sys::table_close(r, pg_sys::NoLock as i32) };
                }
                audit.close();
                None
            }
        }
    }

    /// Will [`Writer::open`] most likely write for `tenant`: the same checks without opening
    /// the tables, on the resolutions as kept (none yet: yes, if the schema is the usual one).
    pub fn likely(tenant: pgrx::Uuid) -> bool {
        let usable = |cache: &'static std::thread::LocalKey<Cell<Option<Option<Target>>>>| {
            cache.with(|k| !matches!(k.get(), Some(None)))
        };
        // SAFETY: reads backend-local state.
        lookup::may_probe(tenant)
            && !unsafe { pg_sys::XactReadOnly }
            && usable(&REDEMPTIONS)
            && usable(&AUDITS)
    }

    /// Closes both tables (their locks are kept to the end of the transaction).
    pub fn close(self) {
        // SAFETY: opened by `open`.
        unsafe { pg_sys::table_close(self.redemption.0, pg_sys::NoLock as i32) };
        self.audit.close();
    }

    /// Writes the redemption `r` and its audit row (the details `voucher._redemption_details`
    /// makes, the row HMAC over them as stored), then closes both tables.
    pub fn record(self, r: &RedemptionRow<'_>) -> Result<()> {
        let details = super::details::redemption_details(
            Some(r.redemption_id),
            Some(r.campaign_id),
            r.customer_id,
            r.order_id,
            r.order_amount.clone(),
            r.amount.clone(),
            Some(r.discount.clone()),
            r.balance_after.clone(),
            r.idempotency_key,
        );
        // SAFETY: jsonb_out prints the datum made above to a palloc'd string.
        let details_text = unsafe {
            let out =
                pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(details.datum())])
                    .expect("jsonb_out returns a value");
            CStr::from_ptr(out.cast_mut_ptr::<std::ffi::c_char>())
                .to_str()
                .expect("jsonb prints UTF-8")
                .to_string()
        };
        let object_id = crate::common::uuid_text(r.voucher_id.as_bytes());
        let audit_values = self.audit.values(&Event {
            actor_text: r.actor_text,
            actor_jsonb: r.actor_jsonb,
            action: "redemption.created",
            object_type: "voucher",
            object_id: &object_id,
            details: (details.datum(), &details_text),
        })?;
        // SAFETY: now() of the transaction, as the statement's DEFAULT reads it.
        let at = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        let red_values = r.values(self.audit.tenant, at);
        // SAFETY: both tables open and checked (`open`); the values are datums of the columns'
        // types, live in this memory context.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            insert(estate, self.redemption, &red_values);
            insert(estate, self.audit.audit, &audit_values);
            pg_sys::FreeExecutorState(estate);
        }
        #[cfg(any(test, feature = "pg_test"))]
        WRITTEN.with(|w| w.set(w.get() + 1));
        self.close();
        Ok(())
    }
}

#[cfg(any(test, feature = "pg_test"))]
thread_local! {
    /// Redemptions written here, for the tests that must know which path a call took.
    pub(super) static WRITTEN: Cell<u64> = const { Cell::new(0) };
    /// Audit rows [`AuditWriter`] wrote.
    pub(crate) static AUDITED: Cell<u64> = const { Cell::new(0) };
    /// Customers [`create_customer`] inserted.
    pub(crate) static CREATED: Cell<u64> = const { Cell::new(0) };
}

/// An audit row's fields, as the writers have them (the tenant, the event id and the time are
/// the writer's).
pub struct Event<'a> {
    /// the actor as `::jsonb::text` prints it (hashed) and as a jsonb datum (stored)
    pub actor_text: &'a str,
    pub actor_jsonb: pg_sys::Datum,
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: &'a str,
    /// the details as a jsonb datum and as `jsonb_out` prints it
    pub details: (pg_sys::Datum, &'a str),
}

/// voucher.audit_event opened for writing, every check of the module comment made under the
/// lock: alone for a writer whose own row goes in first (`upsert_customer`'s new customer, by
/// [`create_customer`] or its statement, followed by its `customer.created` row: E1 of issue 14,
/// that row as a second data-modifying part of the statement was about a fifth of the call),
/// and as the half of a [`Writer`].
pub struct AuditWriter {
    audit: (pg_sys::Relation, Target),
    /// the tenant checked (`lookup::may_probe`): the only one whose rows this writes
    tenant: pgrx::Uuid,
}

impl AuditWriter {
    /// The audit log, if this call may write it directly for `tenant`. Call as
    /// voucher_definer; then [`AuditWriter::write`] or [`AuditWriter::close`].
    pub fn open(tenant: pgrx::Uuid) -> Option<AuditWriter> {
        lookup::trim_policies();
        // SAFETY: reads backend-local state.
        if !lookup::may_probe(tenant) || unsafe { pg_sys::XactReadOnly } {
            return None;
        }
        let aud = resolved(&AUDITS, c"audit_event", AUDIT, &[])?;
        // SAFETY: the relation id resolved above (forgotten on invalidation), opened with the
        // lock an INSERT takes and kept to the end of the transaction.
        let a = unsafe { open_one(&AUDITS, &aud)? };
        Some(AuditWriter {
            audit: (a, aud),
            tenant,
        })
    }

    /// Closes the table (its lock is kept to the end of the transaction).
    pub fn close(self) {
        // SAFETY: opened by `open`.
        unsafe { pg_sys::table_close(self.audit.0, pg_sys::NoLock as i32) };
    }

    /// The values of [`AUDIT`]'s columns for `e`, of the tenant opened for, at now(), with the
    /// next event id; its row hash made over them as stored (what `voucher._audit_hash` makes
    /// of the same fields).
    fn values(&self, e: &Event<'_>) -> Result<[Option<pg_sys::Datum>; 9]> {
        // SAFETY: now() of the transaction, as the statements' now() reads it.
        let at = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        let event_id = crate::audit::write::take_event_id();
        let tenant = *self.tenant;
        let hash = with_key(|_, keyed| {
            keyed.row_hash(&Canonical {
                tenant: &tenant,
                event_id,
                at_micros: at,
                actor: e.actor_text,
                action: e.action,
                object_type: Some(e.object_type),
                object_id: Some(e.object_id),
                details: e.details.1,
            })
        })?;
        Ok([
            self.tenant.into_datum(),
            event_id.into_datum(),
            Some(pg_sys::Datum::from(at)),
            Some(e.actor_jsonb),
            e.action.into_datum(),
            e.object_type.into_datum(),
            e.object_id.into_datum(),
            Some(e.details.0),
            hash.as_slice().into_datum(),
        ])
    }

    /// Writes the audit row `e`, then closes the table.
    pub fn write(self, e: &Event<'_>) -> Result<()> {
        let values = self.values(e)?;
        // SAFETY: the table open and checked (`open`); the values live in this memory context.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            insert(estate, self.audit, &values);
            pg_sys::FreeExecutorState(estate);
        }
        #[cfg(any(test, feature = "pg_test"))]
        AUDITED.with(|w| w.set(w.get() + 1));
        self.close();
        Ok(())
    }
}

/// One row into `rel`: its values placed by the target's map, inserted with
/// `ExecSimpleRelationInsert` (constraints, heap, indexes).
unsafe fn insert(
    estate: *mut pg_sys::EState,
    (rel, t): (pg_sys::Relation, Target),
    values: &[Option<pg_sys::Datum>],
) {
    let rri = result_relation(rel);
    pg_sys::ExecOpenIndices(rri, false);
    let slot = filled_slot(rel, &t, values);
    pg_sys::ExecSimpleRelationInsert(rri, estate, slot);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::ExecCloseIndices(rri);
}

/// `rel` as the executor's result relation (palloc'd in the current context), its indexes not
/// yet open: the writers here and `claim`'s update open them as they need
/// (`ExecOpenIndices`, speculative for an `ON CONFLICT` arbiter's pre-check).
///
/// # Safety
/// `rel` must be open.
pub(super) unsafe fn result_relation(rel: pg_sys::Relation) -> *mut pg_sys::ResultRelInfo {
    let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
        .cast::<pg_sys::ResultRelInfo>();
    (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
    pg_sys::InitResultRelInfo(rri, rel, 0, std::ptr::null_mut(), 0);
    rri
}

/// A slot of `rel` holding `values` placed by the target's map (dropped columns NULL).
unsafe fn filled_slot(
    rel: pg_sys::Relation,
    t: &Target,
    values: &[Option<pg_sys::Datum>],
) -> *mut pg_sys::TupleTableSlot {
    let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    let s = &mut *slot;
    for i in 0..t.natts {
        let v = match t.map[i] {
            -1 => None,
            j => values[j as usize],
        };
        *s.tts_values.add(i) = v.unwrap_or(pg_sys::Datum::from(0));
        *s.tts_isnull.add(i) = v.is_none();
    }
    pg_sys::ExecStoreVirtualTuple(slot);
    slot
}

/// One row into `rel` unless its arbiter index holds its key already, committed or by a
/// transaction that commits while this waits: what `INSERT ... ON CONFLICT (key) DO NOTHING`
/// does (nodeModifyTable.c, `ExecInsert`): the pre-check of the arbiter (which waits for an
/// inserter in progress), then the speculative insertion: the heap tuple under this
/// transaction's speculative token, the index entries (a conflict on the arbiter now, from an
/// inserter that came between, is no error), the tuple confirmed, or super-deleted and the
/// pre-check made again. True: inserted.
///
/// The statement's serialization check of the conflicting row (`ExecCheckTIDVisible`) applies
/// only to REPEATABLE READ and SERIALIZABLE, which take the statement ([`create_customer`]).
unsafe fn insert_unless_conflict(
    estate: *mut pg_sys::EState,
    (rel, t): (pg_sys::Relation, Target),
    values: &[Option<pg_sys::Datum>],
) -> bool {
    let rri = result_relation(rel);
    pg_sys::ExecOpenIndices(rri, true);
    let slot = filled_slot(rel, &t, values);
    if !(*(*rel).rd_att).constr.is_null() {
        pg_sys::ExecConstraints(rri, slot, estate);
    }
    let arbiters = pg_sys::lappend_oid(std::ptr::null_mut(), t.arbiter);
    let cid = pg_sys::GetCurrentCommandId(true);
    let inserted = loop {
        pg_sys::check_for_interrupts!();
        let mut conflict = pg_sys::ItemPointerData::default();
        if !pg_sys::ExecCheckIndexConstraints(rri, slot, estate, &mut conflict, arbiters) {
            break false;
        }
        let xid = pg_sys::GetCurrentTransactionId();
        let token = pg_sys::SpeculativeInsertionLockAcquire(xid);
        pg_sys::table_tuple_insert_speculative(rel, slot, cid, 0, std::ptr::null_mut(), token);
        let mut spec_conflict = false;
        let recheck = pg_sys::ExecInsertIndexTuples(
            rri,
            slot,
            estate,
            false,
            true,
            &mut spec_conflict,
            arbiters,
        );
        pg_sys::table_tuple_complete_speculative(rel, slot, token, !spec_conflict);
        pg_sys::SpeculativeInsertionLockRelease(xid);
        pg_sys::list_free(recheck);
        if !spec_conflict {
            break true;
        }
    };
    pg_sys::list_free(arbiters);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::ExecCloseIndices(rri);
    inserted
}

/// A new customer's row (its ciphertexts made by `crypto::customers`), for [`create_customer`].
pub struct NewCustomer<'a> {
    pub id: pgrx::Uuid,
    pub source_index: &'a [u8],
    pub email_index: Option<&'a [u8]>,
    pub key_id: i32,
    pub source_id: &'a [u8],
    pub email: Option<&'a [u8]>,
    pub name: Option<&'a [u8]>,
    pub metadata: Option<&'a [u8]>,
    pub audit_key: &'a [u8],
}

impl NewCustomer<'_> {
    /// The values of [`CUSTOMER`]'s columns, in its order (created and updated now()).
    fn values(&self, tenant: pgrx::Uuid, at: pg_sys::TimestampTz) -> [Option<pg_sys::Datum>; 13] {
        [
            tenant.into_datum(),
            self.id.into_datum(),
            self.source_index.into_datum(),
            self.email_index.into_datum(),
            self.key_id.into_datum(),
            self.source_id.into_datum(),
            self.email.into_datum(),
            self.name.into_datum(),
            self.metadata.into_datum(),
            self.audit_key.into_datum(),
            Some(pg_sys::Datum::from(at)),
            Some(pg_sys::Datum::from(at)),
            None,
        ]
    }
}

/// `INSERT INTO voucher.customer ... ON CONFLICT (tenant_id, source_index) DO NOTHING` of `c`
/// for `tenant`, without a statement where the module comment's checks hold (and in READ
/// COMMITTED, see [`insert_unless_conflict`]); Some(true): inserted, Some(false): a customer with
/// its source_index exists; None: the caller runs the statement. Call as voucher_definer.
///
/// Why: the statement was a third of `upsert_customer` (E1 of issue 14; callgrind, one backend:
/// 126k instructions of 366k per new customer, of which the inserts themselves about 60k).
pub fn create_customer(tenant: pgrx::Uuid, c: &NewCustomer<'_>) -> Option<bool> {
    lookup::trim_policies();
    // SAFETY: reads backend-local state.
    let read_only = unsafe { pg_sys::XactReadOnly };
    if !lookup::snapshot_per_statement() || !lookup::may_probe(tenant) || read_only {
        return None;
    }
    let target = resolved(&CUSTOMERS, c"customer", CUSTOMER, CUSTOMER_ARBITER)?;
    // SAFETY: the relation id resolved above (forgotten on invalidation), opened with the lock
    // an INSERT takes and kept to the end of the transaction; the values are datums of the
    // columns' types, live in this memory context.
    unsafe {
        let rel = open_one(&CUSTOMERS, &target)?;
        let at = pg_sys::GetCurrentTransactionStartTimestamp();
        let values = c.values(tenant, at);
        let estate = pg_sys::CreateExecutorState();
        let inserted = insert_unless_conflict(estate, (rel, target), &values);
        pg_sys::FreeExecutorState(estate);
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        #[cfg(any(test, feature = "pg_test"))]
        CREATED.with(|w| w.set(w.get() + u64::from(inserted)));
        Some(inserted)
    }
}

/// A redemption row and what its audit row names besides.
pub struct RedemptionRow<'a> {
    pub redemption_id: pgrx::Uuid,
    pub voucher_id: pgrx::Uuid,
    pub campaign_id: pgrx::Uuid,
    pub customer_id: Option<pgrx::Uuid>,
    pub order_id: Option<&'a str>,
    pub order_amount: Option<AnyNumeric>,
    pub amount: Option<AnyNumeric>,
    pub discount: AnyNumeric,
    pub balance_after: Option<AnyNumeric>,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a [u8]>,
    pub metadata: Option<&'a [u8]>,
    /// the actor's label (redeemed_by)
    pub redeemed_by: &'a str,
    pub key_id: Option<i32>,
    pub use_slot: Option<i16>,
    /// the actor as `::jsonb::text` prints it (hashed) and as a jsonb datum (stored)
    pub actor_text: &'a str,
    pub actor_jsonb: pg_sys::Datum,
}

impl RedemptionRow<'_> {
    /// The values of [`REDEMPTION`]'s columns, in its order.
    fn values(&self, tenant: pgrx::Uuid, at: pg_sys::TimestampTz) -> [Option<pg_sys::Datum>; 20] {
        [
            tenant.into_datum(),
            self.redemption_id.into_datum(),
            self.voucher_id.into_datum(),
            self.campaign_id.into_datum(),
            self.customer_id.into_datum(),
            self.order_id.into_datum(),
            self.order_amount.clone().into_datum(),
            self.amount.clone().into_datum(),
            self.discount.clone().into_datum(),
            self.balance_after.clone().into_datum(),
            self.idempotency_key.into_datum(),
            self.request_hash.into_datum(),
            self.metadata.into_datum(),
            Some(pg_sys::Datum::from(at)),
            self.redeemed_by.into_datum(),
            None,
            None,
            None,
            self.key_id.into_datum(),
            self.use_slot.into_datum(),
        ]
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use super::WRITTEN;
    use crate::redeem::lookup::tests::authenticate;

    fn written() -> u64 {
        WRITTEN.with(|w| w.get())
    }

    /// One redemption of `code` with every column filled (a customer, amounts, an order, a key,
    /// metadata), and whether it was written here.
    fn redeem(code: &str, key: &str) -> (pgrx::Uuid, bool) {
        let before = written();
        let id = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT redemption_id FROM voucher.redeem('{code}', customer => 'cust-direct', \
                    order_amount => 80.00, order_id => 'order-{key}', idempotency_key => '{key}', \
                    metadata => '{{\"channel\": \"web\"}}')"
        ))
        .unwrap()
        .unwrap();
        (id, written() == before + 1)
    }

    /// The redemption row and its audit row as the tests compare them: every column but the
    /// ids that differ per redemption by design.
    fn rows(id: pgrx::Uuid) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT format('%s | %s',
                    to_jsonb(r) - '{{redemption_id,voucher_id,metadata,request_hash}}'::text[]
                      || jsonb_build_object('metadata', length(r.metadata) > 0),
                    to_jsonb(e) - '{{event_id,object_id,row_hash}}'::text[]
                      || jsonb_build_object('details', e.details - 'redemption_id',
                                            'hash', length(e.row_hash)))
               FROM voucher.redemption r
               JOIN voucher.audit_event e
                 ON e.tenant_id = r.tenant_id AND e.action = 'redemption.created'
                AND e.details->>'redemption_id' = r.redemption_id::text
              WHERE r.redemption_id = '{id}'"
        ))
        .unwrap()
        .unwrap()
    }

    fn audit_ok() -> String {
        Spi::get_one::<String>(
            "SELECT format('%s %s %s', ok, rows_checked, problem) FROM voucher.verify_audit()",
        )
        .unwrap()
        .unwrap()
    }

    /// Written here, a redemption and its audit row are what the statement writes (column for
    /// column, the row hash verifying), for every claim: the fast claim, the claim of an
    /// evaluated voucher (a per-customer limit) and the spread claim (no limit); and each of
    /// the checks that make a call take the statement does: an INSERT trigger, a rule, a second
    /// policy (which then applies: one that refuses the audit row makes the redemption fail), a
    /// column this module does not know (whose default the statement fills), another tenant's
    /// context.
    #[pg_test]
    fn direct_rows_are_the_statements_rows() {
        authenticate("direct");
        Spi::run(
            "WITH k AS (SELECT voucher.create_campaign('limited', redemption_limit => 9, \
                    discount_type => 'percent', discount_value => 10) AS id) \
             SELECT voucher.add_code(k.id, c) FROM k, unnest('{L1,L2,L3,L4,L5,L6}'::text[]) c;
             WITH k AS (SELECT voucher.create_campaign('per customer', per_customer_limit => 5, \
                    discount_type => 'amount', discount_value => 5) AS id) \
             SELECT voucher.add_code(k.id, c) FROM k, unnest('{C1,C2}'::text[]) c;
             SELECT voucher.add_code(voucher.create_campaign('open', redemption_limit => NULL, \
                    discount_type => 'percent', discount_value => 20), 'OPEN1')",
        )
        .unwrap();
        // the fast claim, written here; again with an INSERT trigger on voucher.redemption: the
        // statement writes it, with the same columns
        let (direct, yes) = redeem("L1", "kx1");
        assert!(yes);
        Spi::run(
            "CREATE FUNCTION pg_temp.nothing() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER t AFTER INSERT ON voucher.redemption \
                FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.nothing()",
        )
        .unwrap();
        let (by_statement, yes) = redeem("L2", "kx2");
        assert!(!yes);
        let same = |a: pgrx::Uuid, b: pgrx::Uuid, ka: &str, kb: &str| {
            assert_eq!(rows(a).replace(ka, "K"), rows(b).replace(kb, "K"));
        };
        same(direct, by_statement, "kx1", "kx2");
        Spi::run("DROP TRIGGER t ON voucher.redemption").unwrap();
        assert!(redeem("L3", "kx3").1);
        // a rule, then a second (restrictive) policy on the audit log: the statement
        Spi::run("CREATE RULE r AS ON INSERT TO voucher.audit_event DO ALSO NOTHING").unwrap();
        assert!(!redeem("L4", "kx4").1);
        Spi::run("DROP RULE r ON voucher.audit_event").unwrap();
        Spi::run(
            "CREATE POLICY extra ON voucher.audit_event AS RESTRICTIVE WITH CHECK (action <> 'x')",
        )
        .unwrap();
        assert!(!redeem("L5", "kx5").1);
        // one that refuses the row: the statement applies it (PostgreSQL's own error, 42501)
        Spi::run(
            "ALTER POLICY extra ON voucher.audit_event WITH CHECK (action <> 'redemption.created');
             DO $$ BEGIN
                 PERFORM voucher.redeem('L6', order_amount => 10);
                 RAISE EXCEPTION 'the policy did not refuse the audit row';
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END $$",
        )
        .unwrap();
        Spi::run("DROP POLICY extra ON voucher.audit_event").unwrap();
        // a column added by hand: the statement, which fills its default
        Spi::run("ALTER TABLE voucher.redemption ADD COLUMN note text DEFAULT 'by hand'").unwrap();
        let (with_note, yes) = redeem("L6", "kx6");
        assert!(!yes);
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT note FROM voucher.redemption WHERE redemption_id = '{with_note}'"
            )),
            Ok(Some("by hand".into()))
        );
        Spi::run("ALTER TABLE voucher.redemption DROP COLUMN note").unwrap();
        // the evaluated claim (per-customer limit) and the spread claim, here and by statement
        let (c1, yes) = redeem("C1", "cx1");
        assert!(yes);
        Spi::run(
            "CREATE TRIGGER t AFTER INSERT ON voucher.audit_event \
                FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.nothing()",
        )
        .unwrap();
        let (c2, yes) = redeem("C2", "cx2");
        assert!(!yes);
        same(c1, c2, "cx1", "cx2");
        let (o2, _) = redeem("OPEN1", "ox2");
        Spi::run("DROP TRIGGER t ON voucher.audit_event").unwrap();
        let (o1, yes) = redeem("OPEN1", "ox1");
        assert!(yes);
        same(o1, o2, "ox1", "ox2");
        assert!(!rows(o1).contains("\"use_slot\": null"), "{}", rows(o1));
        // a redemption written here with the dropped column's attribute in the descriptor
        let (after_drop, yes) = redeem("OPEN1", "ox3");
        assert!(yes);
        same(o1, after_drop, "ox1", "ox3");
        // the replay of a key written here finds it
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT replayed FROM voucher.redeem('L1', customer => 'cust-direct', \
                        order_amount => 80.00, order_id => 'order-kx1', idempotency_key => 'kx1', \
                        metadata => '{\"channel\": \"web\"}')"
            ),
            Ok(Some(true))
        );
        assert_eq!(audit_ok().split(' ').next(), Some("t"), "{}", audit_ok());
        // another tenant's context: not this tenant's rows to write
        assert!(as_other_tenant_none());
    }

    /// `upsert_customer`'s `customer.created` row written here is the statement's row (every
    /// column but the event and customer ids), and verifies; with an INSERT trigger on the audit
    /// log the statement writes it.
    #[pg_test]
    fn a_new_customers_audit_row_is_the_statements_row() {
        authenticate("direct audit");
        let audited = || super::AUDITED.with(|w| w.get());
        let created = |source: &str| {
            let id = Spi::get_one::<pgrx::Uuid>(&format!(
                "SELECT voucher.upsert_customer('{source}', 'a@example.com', 'A')"
            ))
            .unwrap()
            .unwrap();
            Spi::get_one::<String>(&format!(
                "SELECT (to_jsonb(e) - '{{event_id,object_id,row_hash}}'::text[])::text
                   FROM voucher.audit_event e
                  WHERE e.action = 'customer.created' AND e.object_id = '{id}'"
            ))
            .unwrap()
            .unwrap()
        };
        let before = audited();
        let direct = created("first");
        assert_eq!(audited(), before + 1);
        Spi::run(
            "CREATE FUNCTION pg_temp.nothing() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER t AFTER INSERT ON voucher.audit_event \
                FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.nothing()",
        )
        .unwrap();
        let by_statement = created("second");
        assert_eq!(audited(), before + 1);
        assert_eq!(direct, by_statement);
        Spi::run("DROP TRIGGER t ON voucher.audit_event").unwrap();
        // an existing customer: no customer.created row
        created("first");
        assert_eq!(audited(), before + 1);
        assert_eq!(audit_ok().split(' ').next(), Some("t"), "{}", audit_ok());
    }

    /// A new customer written here (by `upsert_customer` and by a redemption naming one) is the
    /// statement's row: the same columns but the ids and ciphertexts (each under a fresh nonce,
    /// bound to its row), the same fields read back through voucher.customers. An existing
    /// source_id is found, never written twice. The table's CHECK constraints apply (one that
    /// refuses the row fails the call with 23514); an INSERT trigger on voucher.customer, a
    /// rule, or a second unique index on the conflict target (the statement's arbiters are then
    /// two) make the statement insert it.
    #[pg_test]
    fn a_new_customer_is_the_statements_customer() {
        authenticate("direct customer");
        Spi::run("SELECT voucher.add_code(voucher.create_campaign('open', redemption_limit => NULL), 'DC-OPEN')")
            .unwrap();
        let created = || super::CREATED.with(|w| w.get());
        // the stored row and what voucher.customers reads of it, without ids and ciphertexts
        let stored = |id: pgrx::Uuid| {
            Spi::get_one::<String>(&format!(
                "SELECT format('%s | %s',
                        to_jsonb(c) - '{{customer_id,source_index,source_id,email,name,metadata,audit_key}}'::text[]
                          || jsonb_build_object('email_index', c.email_index IS NOT NULL,
                                                'audit_key', length(c.audit_key)),
                        to_jsonb(v) - '{{customer_id,source_id}}'::text[])
                   FROM voucher.customer c JOIN voucher.customers v ON v.customer_id = c.customer_id
                  WHERE c.customer_id = '{id}'"
            ))
            .unwrap()
            .unwrap()
        };
        let upsert = |source: &str| {
            let id = Spi::get_one::<pgrx::Uuid>(&format!(
                "SELECT voucher.upsert_customer('{source}', 'a@example.com', 'A', '{{\"tier\": 1}}')"
            ))
            .unwrap()
            .unwrap();
            (id, stored(id))
        };
        let redeemed = |source: &str| {
            let redemption = Spi::get_one::<pgrx::Uuid>(&format!(
                "SELECT redemption_id FROM voucher.redeem('DC-OPEN', customer => '{source}')"
            ))
            .unwrap()
            .unwrap();
            Spi::get_one::<pgrx::Uuid>(&format!(
                "SELECT customer_id FROM voucher.redemption WHERE redemption_id = '{redemption}'"
            ))
            .unwrap()
            .unwrap()
        };
        let before = created();
        let (first, direct) = upsert("first");
        assert_eq!(created(), before + 1);
        let by_redemption_id = redeemed("by redemption");
        let by_redemption = stored(by_redemption_id);
        assert_eq!(created(), before + 2);
        // found again: the same customer, nothing created
        assert_eq!(upsert("first").0, first);
        assert_eq!(redeemed("first"), first);
        assert_eq!(redeemed("by redemption"), by_redemption_id);
        assert_eq!(created(), before + 2);
        let count = |source: &str| {
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM voucher.customers WHERE source_id = '{source}'"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!((count("first"), count("by redemption")), (1, 1));
        // a CHECK constraint the row breaks: the call fails, nothing written
        Spi::run(
            "ALTER TABLE voucher.customer ADD CONSTRAINT no_keys CHECK (key_id < 0) NOT VALID;
             DO $$ BEGIN
                 PERFORM voucher.upsert_customer('refused');
                 RAISE EXCEPTION 'the check constraint did not refuse the row';
             EXCEPTION WHEN check_violation THEN NULL;
             END $$;
             ALTER TABLE voucher.customer DROP CONSTRAINT no_keys",
        )
        .unwrap();
        assert_eq!((count("refused"), created()), (0, before + 2));
        // each of these: the statement, with the same row
        let statement_cases = [
            (
                "CREATE FUNCTION pg_temp.nothing() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RETURN NULL; END $$;
                 CREATE TRIGGER t AFTER INSERT ON voucher.customer \
                    FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.nothing()",
                "DROP TRIGGER t ON voucher.customer",
            ),
            (
                "CREATE RULE r AS ON INSERT TO voucher.customer DO ALSO NOTHING",
                "DROP RULE r ON voucher.customer",
            ),
            (
                "CREATE UNIQUE INDEX second_arbiter ON voucher.customer (source_index, tenant_id)",
                "DROP INDEX voucher.second_arbiter",
            ),
        ];
        for (i, (make, undo)) in statement_cases.iter().enumerate() {
            Spi::run(make).unwrap();
            let (_, by_statement) = upsert(&format!("statement {i}"));
            assert_eq!(by_statement, direct, "{make}");
            let by_redemption_statement = stored(redeemed(&format!("redemption {i}")));
            assert_eq!(by_redemption_statement, by_redemption, "{make}");
            assert_eq!(created(), before + 2, "{make}");
            Spi::run(undo).unwrap();
        }
        assert_eq!(upsert("after").1, direct);
        assert_eq!(created(), before + 3);
        assert_eq!(audit_ok().split(' ').next(), Some("t"), "{}", audit_ok());
        // another tenant's context: not this tenant's customer to write
        let other = pgrx::Uuid::from_bytes([7; 16]);
        let c = super::NewCustomer {
            id: pgrx::Uuid::from_bytes([8; 16]),
            source_index: &[1; 32],
            email_index: None,
            key_id: 1,
            source_id: &[2; 40],
            email: None,
            name: None,
            metadata: None,
            audit_key: &[3; 60],
        };
        let written = crate::tenancy::definer::as_definer(|| super::create_customer(other, &c));
        assert_eq!(written, None);
    }

    fn as_other_tenant_none() -> bool {
        let other = pgrx::Uuid::from_bytes([7; 16]);
        crate::tenancy::definer::as_definer(|| super::Writer::open(other).is_none())
    }
}
