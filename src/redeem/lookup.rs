//! validate's look-up of a code and its campaign by their unique indexes, without a statement;
//! and, by the same rules, redeem's look-ups of an idempotency key ([`find_prior`]) and of
//! whether a customer exists ([`customer_exists`]).
//!
//! Why: the look-up as a kept SPI statement (`EVALUATE_SQL`) cost more than a third of a
//! validate call's backend time (issue 17 profile): plan-cache revalidation, executor start-up
//! and shut-down of a gating Result, a nested loop, two scans and the two row-level security
//! init plans, for one index probe and one row of a tiny table. Here the same rows are read with
//! two index probes: (tenant_id, code) of voucher.code, then (tenant_id, campaign_id) of
//! voucher.campaign, with the caller's snapshot, as `voucher_definer` (its SELECT privilege is
//! checked), under the locks the executor would take.
//!
//! Row-level security: both tables keep their forced `tenant_isolation` policy
//! (`tenant_id = voucher.current_tenant()`). This path only runs when `current_tenant()` is the
//! tenant it probes for, the tenant is the first column of both index keys, and every row read
//! is checked against it again: it returns exactly the rows the policy lets through. Anything
//! unexpected (no such index, a column missing, no privilege, no snapshot, Citus loaded) makes it
//! answer `Fallback`, and validate runs the statement instead, with RLS applied by PostgreSQL.
//!
//! The relation and index ids are resolved once per backend and forgotten on any relcache
//! invalidation of them (ALTER, DROP, REINDEX, DROP EXTENSION).

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::AnyNumeric;

use super::statements::Columns;
use crate::common::index::{
    attnum, first_by_index, lock_newest, unique_index, unique_index_not_null, voucher_table,
};
use crate::tenancy::context;

/// What the look-up found, or that it could not answer.
pub enum Found {
    Row(Box<Columns>),
    NoSuchCode,
    /// the statement must answer (see the module comment)
    Fallback,
}

/// Attribute numbers (1-based) of the columns read.
#[derive(Clone, Copy)]
struct CodeAtts {
    voucher_id: i16,
    campaign_id: i16,
    active: i16,
    redeemed_count: i16,
    balance: i16,
}

#[derive(Clone, Copy)]
struct CampaignAtts {
    kind: i16,
    redemption_limit: i16,
    per_customer_limit: i16,
    active: i16,
    starts_at: i16,
    expires_at: i16,
    min_order_amount: i16,
    discount_type: i16,
    discount_value: i16,
    max_discount: i16,
    currency: i16,
}

/// A table's one row-level security policy as verified when resolved (a copy, in
/// [`policy_memory`]): each call compares the relcache's current policy with it.
#[derive(Clone, Copy)]
pub(super) struct Policy {
    /// the relcache's policies as verified: a rebuild that finds them unchanged keeps them
    desc: *mut pg_sys::RowSecurityDesc,
    qual: *mut pg_sys::Node,
    with_check: *mut pg_sys::Node,
    roles: *mut pg_sys::varlena,
}

/// The policy `_isolate_tenant` creates, as pg_get_expr prints it with only pg_catalog on the
/// search path.
const TENANT_POLICY: &str = "(tenant_id = ( SELECT voucher.current_tenant() AS current_tenant))";

/// The only policy of `rel`, if it has exactly one, permissive, for every command, to PUBLIC,
/// named tenant_isolation, and row-level security is enabled and forced.
unsafe fn only_policy(rel: pg_sys::Relation) -> Option<*mut pg_sys::RowSecurityPolicy> {
    let class = (*rel).rd_rel;
    let desc = (*rel).rd_rsdesc;
    if !(*class).relrowsecurity || !(*class).relforcerowsecurity || desc.is_null() {
        return None;
    }
    let list = (*desc).policies;
    if list.is_null() || (*list).length != 1 {
        return None;
    }
    let p = pg_sys::list_nth(list, 0).cast::<pg_sys::RowSecurityPolicy>();
    let fits = (*p).permissive
        && (*p).polcmd as u8 == b'*'
        && !(*p).qual.is_null()
        && !(*p).with_check_qual.is_null()
        && CStr::from_ptr((*p).policy_name).to_bytes() == b"tenant_isolation";
    fits.then_some(p)
}

/// Row-level security applies to this read (or write: redeem's `direct`) exactly as the verified
/// policy `want` says: it is enabled for the current role (voucher_definer: not a superuser, no
/// BYPASSRLS, row_security on), and the relation's only policy is still the one verified.
pub(super) unsafe fn policy_holds(rel: pg_sys::Relation, want: &Policy) -> bool {
    if pg_sys::check_enable_rls((*rel).rd_id, pg_sys::InvalidOid, true)
        != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    {
        return false;
    }
    // The same policies the resolution verified, not rebuilt since: a rebuild happens only on
    // an invalidation of the relation, and that forgets the resolution (`forget`) before a
    // caller gets here with it. Compared as trees only when the relcache's copy is another.
    if (*rel).rd_rsdesc == want.desc {
        return true;
    }
    let Some(p) = only_policy(rel) else {
        return false;
    };
    let roles = (*p).roles.cast::<pg_sys::varlena>();
    let n = pgrx::varlena::varsize_any(roles);
    n == pgrx::varlena::varsize_any(want.roles)
        && std::slice::from_raw_parts(roles.cast::<u8>(), n)
            == std::slice::from_raw_parts(want.roles.cast::<u8>(), n)
        && pg_sys::equal((*p).qual.cast(), want.qual.cast())
        && pg_sys::equal((*p).with_check_qual.cast(), want.with_check.cast())
}

/// Verifies the catalog's policy of `rel` against `TENANT_POLICY`, as its USING and its WITH
/// CHECK expression (and PUBLIC as its roles), and copies the relcache's version of it for
/// `policy_holds`.
pub(super) unsafe fn verified_policy(rel: pg_sys::Relation) -> Option<Policy> {
    let p = only_policy(rel)?;
    // (read-only: Spi::get_one_with_args would assign a transaction id, refused on a standby)
    let ok = Spi::connect(|client| {
        client
            .select(
                "SELECT count(*) = 1 AND bool_and(polroles = '{0}' \
                                              AND pg_get_expr(polqual, polrelid) = $2 \
                                              AND pg_get_expr(polwithcheck, polrelid) = $2) \
                   FROM pg_catalog.pg_policy WHERE polrelid = $1",
                Some(1),
                &[(*rel).rd_id.into(), TENANT_POLICY.into()],
            )
            .and_then(|rows| rows.first().get_one::<bool>())
    });
    if ok != Ok(Some(true)) {
        return None;
    }
    let old = pg_sys::MemoryContextSwitchTo(policy_memory());
    COPIES.with(|c| c.set(c.get() + 1));
    let qual = pg_sys::copyObjectImpl((*p).qual.cast()).cast::<pg_sys::Node>();
    let with_check = pg_sys::copyObjectImpl((*p).with_check_qual.cast()).cast::<pg_sys::Node>();
    let roles = pg_sys::pg_detoast_datum_copy((*p).roles.cast());
    pg_sys::MemoryContextSwitchTo(old);
    Some(Policy {
        desc: (*rel).rd_rsdesc,
        qual,
        with_check,
        roles,
    })
}

thread_local! {
    /// Where the verified policies are copied (a child of TopMemoryContext).
    static POLICY_MEMORY: Cell<pg_sys::MemoryContext> = const { Cell::new(std::ptr::null_mut()) };
    /// Policies copied there since it was last emptied.
    static COPIES: Cell<u32> = const { Cell::new(0) };
}

/// Copies kept before [`trim_policies`] empties their memory: every ANALYZE or VACUUM of a
/// probed table invalidates its resolution, and each new one copies its policy again.
const POLICY_COPIES: u32 = 64;

unsafe fn policy_memory() -> pg_sys::MemoryContext {
    POLICY_MEMORY.with(|m| {
        if m.get().is_null() {
            m.set(pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"voucher_ext probe policies".as_ptr(),
                0,
                1024,
                8 * 1024,
            ));
        }
        m.get()
    })
}

/// At the start of a probe (none is running then: they do not nest): past [`POLICY_COPIES`]
/// copies, forgets every resolution and frees the copies; the next probes resolve again.
pub(super) fn trim_policies() {
    if COPIES.with(|c| c.get()) <= POLICY_COPIES {
        return;
    }
    super::direct::forget_all();
    super::claim::forget_all();
    CODES.with(|k| k.set(None));
    CAMPAIGNS.with(|k| k.set(None));
    KEYS.with(|k| k.set(None));
    CUSTOMERS.with(|k| k.set(None));
    COPIES.with(|c| c.set(0));
    // SAFETY: no resolution refers to the copies any more (all forgotten above).
    unsafe { pg_sys::MemoryContextReset(policy_memory()) };
}

thread_local! {
    /// Each probed table's resolution ([`OneIndex`]). None: not resolved yet (or invalidated);
    /// Some(None): this schema has no such index, policy or columns.
    static CODES: Cell<Option<Option<OneIndex<CodeAtts>>>> = const { Cell::new(None) };
    static CAMPAIGNS: Cell<Option<Option<OneIndex<CampaignAtts>>>> = const { Cell::new(None) };
    static CALLBACK: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CODES.with(|k| forget_one(k, relid));
    CAMPAIGNS.with(|k| forget_one(k, relid));
    KEYS.with(|k| forget_one(k, relid));
    CUSTOMERS.with(|k| forget_one(k, relid));
    super::direct::forget(relid);
    super::claim::forget(relid);
}

/// voucher.code by its unique index on (tenant_id, code), and voucher.campaign by its primary
/// key: validate's two probes.
fn resolved() -> Option<(OneIndex<CodeAtts>, OneIndex<CampaignAtts>)> {
    // SAFETY: catalog look-ups; raises a normal ERROR on failure.
    let code = resolved_one(&CODES, || unsafe {
        resolve_one(c"code", "code", false, |a| {
            Some(CodeAtts {
                voucher_id: a("voucher_id")?,
                campaign_id: a("campaign_id")?,
                active: a("active")?,
                redeemed_count: a("redeemed_count")?,
                balance: a("balance")?,
            })
        })
    })?;
    // SAFETY: as above.
    let campaign = resolved_one(&CAMPAIGNS, || unsafe {
        resolve_one(c"campaign", "campaign_id", false, |a| {
            Some(CampaignAtts {
                kind: a("kind")?,
                redemption_limit: a("redemption_limit")?,
                per_customer_limit: a("per_customer_limit")?,
                active: a("active")?,
                starts_at: a("starts_at")?,
                expires_at: a("expires_at")?,
                min_order_amount: a("min_order_amount")?,
                discount_type: a("discount_type")?,
                discount_value: a("discount_value")?,
                max_discount: a("max_discount")?,
                currency: a("currency")?,
            })
        })
    })?;
    Some((code, campaign))
}

/// One row of `rel` by its unique index `index` on (tenant_id, `key`), read into `slot`'s values.
/// Calls `read` with the slot while its tuple is valid; None if there is no such row.
unsafe fn probe<R>(
    rel: pg_sys::Relation,
    index: pg_sys::Oid,
    tenant_att: i16,
    tenant: &pgrx::Uuid,
    key: pg_sys::Datum,
    key_proc: u32,
    read: impl FnOnce(&Row) -> R,
) -> Option<R> {
    first_by_index(
        rel,
        index,
        pg_sys::AccessShareLock,
        tenant,
        key,
        key_proc,
        |slot, _| {
            pg_sys::slot_getallattrs(slot);
            let row = Row { slot };
            // the policy's predicate, once more on the row itself
            (row.get::<pgrx::Uuid>(tenant_att).as_ref() == Some(tenant)).then(|| read(&row))
        },
    )
    .flatten()
}

struct Row {
    slot: *mut pg_sys::TupleTableSlot,
}

impl Row {
    /// The value of attribute `att` (1-based), copied out of the buffer.
    fn get<T: FromDatum>(&self, att: i16) -> Option<T> {
        let i = (att - 1) as usize;
        // SAFETY: slot_getallattrs filled tts_values/tts_isnull for every attribute; the
        // conversions copy what they read.
        unsafe {
            let s = &*self.slot;
            T::from_datum(*s.tts_values.add(i), *s.tts_isnull.add(i))
        }
    }
}

/// voucher_definer may read the table (the executor would check this).
unsafe fn may_read(rel: pg_sys::Oid) -> bool {
    pg_sys::pg_class_aclcheck(
        rel,
        pg_sys::GetUserId(),
        pg_sys::ACL_SELECT as pg_sys::AclMode,
    ) == pg_sys::AclResult::ACLCHECK_OK
}

/// The code `code` of `tenant` with its campaign's columns. Call as voucher_definer.
pub fn find(tenant: pgrx::Uuid, code: &str) -> Found {
    trim_policies();
    // SAFETY: reads backend-local state.
    if !may_probe(tenant) || !unsafe { pg_sys::ActiveSnapshotSet() } {
        return Found::Fallback;
    }
    let Some((code_r, campaign_r)) = resolved() else {
        return Found::Fallback;
    };
    // SAFETY: relation ids resolved above (forgotten on invalidation), opened with the lock the
    // executor takes for a read and kept until the transaction ends; datums are copied out
    // before the slot is dropped.
    unsafe {
        if !may_read(code_r.rel) || !may_read(campaign_r.rel) {
            return Found::Fallback;
        }
        with_statement_snapshot(|| probes(&code_r, &campaign_r, tenant, code))
    }
}

/// Runs `f` under the snapshot the kept statement ran with: pgrx runs a statement read-only, on
/// the caller's snapshot, while the transaction has no id; once it has one, as SPI does, after a
/// command counter increment on a fresh snapshot that sees the transaction's own changes.
unsafe fn with_statement_snapshot<R>(f: impl FnOnce() -> R) -> R {
    let fresh = pg_sys::GetCurrentTransactionIdIfAny() != pg_sys::InvalidTransactionId;
    if fresh {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    // (an error unwinds past the pop: (sub)transaction abort pops the snapshot, as for SPI)
    let out = f();
    if fresh {
        pg_sys::PopActiveSnapshot();
    }
    out
}

/// The two probes: the code, then its campaign.
unsafe fn probes(
    code_r: &OneIndex<CodeAtts>,
    campaign_r: &OneIndex<CampaignAtts>,
    tenant: pgrx::Uuid,
    code: &str,
) -> Found {
    // both opened (and their locks taken, which applies pending invalidations) before their
    // policies are compared: what is compared is what the probes read under
    // (a relation dropped since it was resolved: the statement raises what it raises)
    let code_rel = pg_sys::try_table_open(code_r.rel, pg_sys::AccessShareLock as i32);
    let campaign_rel = pg_sys::try_table_open(campaign_r.rel, pg_sys::AccessShareLock as i32);
    // an invalidation taken in with the locks forgot a resolution: its index ids may be stale
    let current = CODES.with(|x| x.get()).is_some() && CAMPAIGNS.with(|x| x.get()).is_some();
    let found = if current
        && !code_rel.is_null()
        && !campaign_rel.is_null()
        && policy_holds(code_rel, &code_r.policy)
        && policy_holds(campaign_rel, &campaign_r.policy)
    {
        probe_both(code_r, campaign_r, code_rel, campaign_rel, tenant, code)
    } else {
        Found::Fallback
    };
    for rel in [campaign_rel, code_rel] {
        if !rel.is_null() {
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
        }
    }
    found
}

unsafe fn probe_both(
    code_r: &OneIndex<CodeAtts>,
    campaign_r: &OneIndex<CampaignAtts>,
    code_rel: pg_sys::Relation,
    campaign_rel: pg_sys::Relation,
    tenant: pgrx::Uuid,
    code: &str,
) -> Found {
    let key = code.into_datum().expect("a text datum");
    let a = code_r.atts;
    let voucher = probe(
        code_rel,
        code_r.index,
        code_r.tenant_id,
        &tenant,
        key,
        pg_sys::F_TEXTEQ,
        |row| {
            (
                row.get::<pgrx::Uuid>(a.voucher_id),
                row.get::<pgrx::Uuid>(a.campaign_id),
                row.get::<bool>(a.active),
                row.get::<i32>(a.redeemed_count),
                row.get::<AnyNumeric>(a.balance),
                (*row.slot).tts_tid,
            )
        },
    );
    let Some((Some(voucher_id), Some(campaign_id), active, redeemed, balance, tid)) = voucher
    else {
        return Found::NoSuchCode;
    };
    let c = campaign_r.atts;
    let time = |row: &Row, att| {
        row.get::<TimestampWithTimeZone>(att)
            .map(pg_sys::TimestampTz::from)
    };
    let columns = probe(
        campaign_rel,
        campaign_r.index,
        campaign_r.tenant_id,
        &tenant,
        campaign_id.into_datum().expect("a uuid datum"),
        pg_sys::F_UUID_EQ,
        |row| {
            Some(Columns {
                voucher_id,
                campaign_id,
                kind: row.get(c.kind)?,
                balance,
                redemption_limit: row.get(c.redemption_limit),
                per_customer_limit: row.get(c.per_customer_limit),
                active: active.unwrap_or(false) && row.get::<bool>(c.active).unwrap_or(false),
                starts_at: time(row, c.starts_at),
                expires_at: time(row, c.expires_at),
                redeemed_count: redeemed.unwrap_or(0),
                min_order_amount: row.get(c.min_order_amount),
                discount_type: row.get(c.discount_type),
                discount_value: row.get(c.discount_value),
                max_discount: row.get(c.max_discount),
                currency: row.get(c.currency),
                tid: Some(tid),
            })
        },
    );
    // the inner join: a code whose campaign is not visible is no code
    match columns.flatten() {
        Some(c) => Found::Row(Box::new(c)),
        None => Found::NoSuchCode,
    }
}

/// A table probed by one unique index on (tenant_id, key), resolved once per backend.
#[derive(Clone, Copy)]
struct OneIndex<A: Copy> {
    rel: pg_sys::Oid,
    index: pg_sys::Oid,
    tenant_id: i16,
    /// the other columns the probe reads
    atts: A,
    policy: Policy,
}

/// Resolves voucher.`table`, its unique index on (tenant_id, `key`) (with `not_null`: the index
/// is the one with exactly `WHERE key IS NOT NULL`), the columns `atts` names, and its policy.
unsafe fn resolve_one<A: Copy>(
    table: &CStr,
    key: &str,
    not_null: bool,
    atts: impl FnOnce(&dyn Fn(&str) -> Option<i16>) -> Option<A>,
) -> Option<OneIndex<A>> {
    let oid = voucher_table(table)?;
    let rel = pg_sys::table_open(oid, pg_sys::AccessShareLock as i32);
    let a = |n: &str| attnum(rel, n);
    let tenant_id = a("tenant_id");
    let atts = atts(&a);
    let index = match (tenant_id, a(key)) {
        (Some(t), Some(k)) if not_null => unique_index_not_null(rel, &[t, k], k),
        (Some(t), Some(k)) => unique_index(rel, &[t, k]),
        _ => None,
    };
    let policy = verified_policy(rel);
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    Some(OneIndex {
        rel: oid,
        index: index?,
        tenant_id: tenant_id?,
        atts: atts?,
        policy: policy?,
    })
}

/// The cached resolution in `cache` (here, and `direct`'s and `claim`'s), resolved with
/// `resolve` when there is none; every one is forgotten by [`forget`].
pub(super) fn resolved_one<T: Copy>(
    cache: &'static std::thread::LocalKey<Cell<Option<Option<T>>>>,
    resolve: impl FnOnce() -> Option<T>,
) -> Option<T> {
    forget_on_invalidation();
    cache.with(|k| {
        k.get().unwrap_or_else(|| {
            let x = resolve();
            k.set(Some(x));
            x
        })
    })
}

/// Registers [`forget`] (once per backend): every resolution here and in `direct` and `claim` is
/// forgotten on a relcache invalidation of its relations.
fn forget_on_invalidation() {
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a plain function, once per backend.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0)) };
    }
}

/// Forgets `cache` if `relid` is its table or index (or everything was invalidated).
fn forget_one<A: Copy>(cache: &Cell<Option<Option<OneIndex<A>>>>, relid: pg_sys::Oid) {
    forget_cached(cache, relid, |x| [x.rel, x.index].contains(&relid));
}

/// Forgets the resolution in `cache` if `relid` is one of its relations (`names`), everything
/// was invalidated (InvalidOid), or it found nothing (a schema change may have created what was
/// missing).
pub(super) fn forget_cached<T: Copy>(
    cache: &Cell<Option<Option<T>>>,
    relid: pg_sys::Oid,
    names: impl FnOnce(&T) -> bool,
) {
    let stale = match cache.get() {
        Some(Some(x)) => relid == pg_sys::InvalidOid || names(&x),
        Some(None) => true,
        None => false,
    };
    if stale {
        cache.set(None);
    }
}

/// Probes `r` for the row of `tenant` whose key is `key` (equality function `key_proc`) as
/// [`find`]'s probes do (the verified policy and no other, the row's tenant checked again), and
/// as an SPI statement that is not read-only would see it: after a command counter increment, on
/// a fresh snapshot (popped on return, or by the (sub)transaction's abort if the probe raises).
/// `read` reads the row. Err(()) when the statement must answer.
///
/// # Safety
/// Call as voucher_definer; `key` must stay valid for the scan.
unsafe fn probe_one<A: Copy, R>(
    cache: &'static std::thread::LocalKey<Cell<Option<Option<OneIndex<A>>>>>,
    r: &OneIndex<A>,
    tenant: &pgrx::Uuid,
    key: pg_sys::Datum,
    key_proc: u32,
    read: impl FnOnce(&Row, &A) -> R,
) -> Result<Option<R>, ()> {
    if !may_read(r.rel) {
        return Err(());
    }
    let rel = pg_sys::try_table_open(r.rel, pg_sys::AccessShareLock as i32);
    if rel.is_null() {
        return Err(());
    }
    // an invalidation taken in with the lock forgot `r`: its index id may be stale
    let current = cache.with(|k| k.get()).is_some();
    let out = if current && policy_holds(rel, &r.policy) {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let row = probe(rel, r.index, r.tenant_id, tenant, key, key_proc, |row| {
            read(row, &r.atts)
        });
        pg_sys::PopActiveSnapshot();
        Ok(row)
    } else {
        Err(())
    };
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    out
}

/// The columns an idempotent replay reads of voucher.redemption.
#[derive(Clone, Copy)]
struct RedemptionAtts {
    redemption_id: i16,
    voucher_id: i16,
    discount: i16,
    balance_after: i16,
    request_hash: i16,
}

thread_local! {
    /// voucher.redemption and its idempotency key index.
    static KEYS: Cell<Option<Option<OneIndex<RedemptionAtts>>>> = const { Cell::new(None) };
    /// voucher.customer and its unique index on (tenant_id, source_index).
    static CUSTOMERS: Cell<Option<Option<OneIndex<CustomerAtts>>>> = const { Cell::new(None) };
}

/// The redemption an idempotency key names: redemption_id, voucher_id, discount,
/// balance_after, request_hash.
pub type PriorRow = (
    pgrx::Uuid,
    pgrx::Uuid,
    AnyNumeric,
    Option<AnyNumeric>,
    Option<Vec<u8>>,
);

/// What the idempotency key probe found.
pub enum Prior {
    Row(Box<PriorRow>),
    None,
    /// the statement must answer (as for [`find`])
    Fallback,
}

/// May this backend probe for `tenant` at all (see the module comment)?
pub(super) fn may_probe(tenant: pgrx::Uuid) -> bool {
    !crate::scale::cluster::citus_loaded() && context::current_tenant() == Some(*tenant)
}

/// Does each statement of this transaction take its own snapshot (READ COMMITTED)? The paths
/// that lock or insert without a statement run only then: in REPEATABLE READ and SERIALIZABLE
/// the statement raises its serialization failures itself.
pub(super) fn snapshot_per_statement() -> bool {
    // SAFETY: reads backend-local state.
    unsafe { pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The redemption of `tenant` that carries idempotency key `key`, read by the unique index on
/// (tenant_id, idempotency_key) instead of the kept statement that cost a keyed redemption about
/// 60k instructions (plan revalidation, executor start and end, the RLS init plan; issue 17),
/// under the same rules as [`find`] (the verified tenant policy, the row's tenant checked again,
/// voucher_definer's SELECT privilege). Like that statement (SPI, not read-only), it reads after
/// a command counter increment on a fresh snapshot ([`probe_one`]): called after the key's lock,
/// it sees the redemption a twin committed while this call waited, and this transaction's own.
/// Call as voucher_definer.
pub fn find_prior(tenant: pgrx::Uuid, key: &str) -> Prior {
    trim_policies();
    if !may_probe(tenant) {
        return Prior::Fallback;
    }
    // SAFETY: catalog look-ups; raises a normal ERROR on failure.
    let Some(r) = resolved_one(&KEYS, || unsafe {
        resolve_one(c"redemption", "idempotency_key", true, |a| {
            Some(RedemptionAtts {
                redemption_id: a("redemption_id")?,
                voucher_id: a("voucher_id")?,
                discount: a("discount")?,
                balance_after: a("balance_after")?,
                request_hash: a("request_hash")?,
            })
        })
    }) else {
        return Prior::Fallback;
    };
    // SAFETY: as in `find`; the key datum lives in this memory context during the scan.
    let row = unsafe {
        probe_one(
            &KEYS,
            &r,
            &tenant,
            key.into_datum().expect("a text datum"),
            pg_sys::F_TEXTEQ,
            |row, a| {
                (
                    row.get::<pgrx::Uuid>(a.redemption_id),
                    row.get::<pgrx::Uuid>(a.voucher_id),
                    row.get::<AnyNumeric>(a.discount),
                    row.get::<AnyNumeric>(a.balance_after),
                    row.get::<Vec<u8>>(a.request_hash),
                )
            },
        )
    };
    match row {
        Ok(Some((Some(id), Some(voucher), Some(discount), balance, hash))) => {
            Prior::Row(Box::new((id, voucher, discount, balance, hash)))
        }
        // a row without its NOT NULL columns is not one this code reads: let the statement say
        // what it is
        Ok(Some(_)) | Err(()) => Prior::Fallback,
        Ok(None) => Prior::None,
    }
}

/// Is there a customer of `tenant` with this blind index of its source_id, as a statement run
/// now would see it ([`probe_one`])? None when the probe cannot tell (then the caller assumes
/// there may be).
/// Only a hint of the order to take: a redemption for a customer that does not exist yet creates
/// it before its claim instead of after a claim that finds no customer (a whole statement,
/// about 10 % of a shop's calls). The claim still finds the customer itself, locked.
pub fn customer_exists(tenant: pgrx::Uuid, source_index: &[u8]) -> Option<bool> {
    trim_policies();
    if !may_probe(tenant) {
        return None;
    }
    // SAFETY: catalog look-ups; raises a normal ERROR on failure.
    let r = customers()?;
    // SAFETY: as in `find`; the bytea datum lives in this memory context during the scan.
    let found = unsafe {
        probe_one(
            &CUSTOMERS,
            &r,
            &tenant,
            source_index.into_datum().expect("a bytea datum"),
            pg_sys::F_BYTEAEQ,
            |_, _| (),
        )
    };
    found.ok().map(|found| found.is_some())
}

/// The columns of voucher.customer [`lock_customer`] reads.
#[derive(Clone, Copy)]
struct CustomerAtts {
    customer_id: i16,
    source_index: i16,
}

/// voucher.customer and its unique index on (tenant_id, source_index), resolved.
fn customers() -> Option<OneIndex<CustomerAtts>> {
    // SAFETY: catalog look-ups; raises a normal ERROR on failure.
    resolved_one(&CUSTOMERS, || unsafe {
        resolve_one(c"customer", "source_index", false, |a| {
            Some(CustomerAtts {
                customer_id: a("customer_id")?,
                source_index: a("source_index")?,
            })
        })
    })
}

/// The customer of `tenant` with this blind index of its source_id, locked as `SELECT
/// customer_id FROM voucher.customer WHERE tenant_id = $1 AND source_index = $2 FOR KEY SHARE`
/// (`crypto::customers::find_or_create`) locks it, without the statement (about 60k
/// instructions per shop redemption: plan check, executor start and end of a LockRows over an
/// index scan and the RLS init plan; issue 17). Under the rules of [`probe_one`] (the verified
/// policy, the row's tenant checked again, voucher_definer's SELECT privilege, and the UPDATE
/// privilege on some column a row lock needs), in READ COMMITTED only: the row is read on a fresh
/// snapshot, then locked FOR KEY SHARE, waiting as the statement waits; a row a concurrent
/// transaction changed meanwhile is locked in its latest version and matched again on it, as
/// the statement's re-check (EvalPlanQual) does: a `forget_customer` that replaced its blind
/// index makes it no match, a deleted row is none. Err(()) when the statement must answer
/// (REPEATABLE READ or SERIALIZABLE, where the statement raises a serialization failure
/// instead; a row this transaction changed since; anything `probe_one` leaves to it).
/// Call as voucher_definer.
pub fn lock_customer(tenant: pgrx::Uuid, source_index: &[u8]) -> Result<Option<pgrx::Uuid>, ()> {
    trim_policies();
    if !may_probe(tenant) || !snapshot_per_statement() {
        return Err(());
    }
    let r = customers().ok_or(())?;
    // SAFETY: as in `probe_one`; the table is opened with the lock a row-locking SELECT takes.
    unsafe {
        if !may_read(r.rel)
            || pg_sys::pg_attribute_aclcheck_all(
                r.rel,
                pg_sys::GetUserId(),
                pg_sys::ACL_UPDATE as pg_sys::AclMode,
                pg_sys::AclMaskHow::ACLMASK_ANY,
            ) != pg_sys::AclResult::ACLCHECK_OK
        {
            return Err(());
        }
        let rel = pg_sys::try_table_open(r.rel, pg_sys::RowShareLock as i32);
        if rel.is_null() {
            return Err(());
        }
        let current = CUSTOMERS.with(|k| k.get()).is_some();
        let out = if current && policy_holds(rel, &r.policy) {
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let out = lock_by_index(rel, &r, &tenant, source_index);
            pg_sys::PopActiveSnapshot();
            out
        } else {
            Err(())
        };
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        out
    }
}

/// [`lock_customer`]'s scan and lock, under the active snapshot.
unsafe fn lock_by_index(
    rel: pg_sys::Relation,
    r: &OneIndex<CustomerAtts>,
    tenant: &pgrx::Uuid,
    source_index: &[u8],
) -> Result<Option<pgrx::Uuid>, ()> {
    let a = r.atts;
    let ours = |slot| {
        pg_sys::slot_getallattrs(slot);
        let row = Row { slot };
        (row.get::<pgrx::Uuid>(r.tenant_id).as_ref() == Some(tenant)
            && row.get::<&[u8]>(a.source_index) == Some(source_index))
        .then(|| row.get::<pgrx::Uuid>(a.customer_id))
        .flatten()
    };
    let key = source_index.into_datum().expect("a bytea datum");
    first_by_index(
        rel,
        r.index,
        pg_sys::RowShareLock,
        tenant,
        key,
        pg_sys::F_BYTEAEQ,
        |slot, snapshot| {
            if ours(slot).is_none() {
                return Ok(None);
            }
            match lock_newest(
                rel,
                slot,
                snapshot,
                pg_sys::LockTupleMode::LockTupleKeyShare,
            ) {
                // the version locked, matched again (EvalPlanQual's re-check when it is a newer one)
                pg_sys::TM_Result::TM_Ok => Ok(ours(slot)),
                pg_sys::TM_Result::TM_Deleted => Ok(None),
                _ => Err(()),
            }
        },
    )
    .unwrap_or(Ok(None))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
pub(super) mod tests {
    use pgrx::prelude::*;

    use super::{find, Found};
    use crate::tenancy::definer::as_definer;

    /// A new tenant with an admin key, authenticated for the session: its id. (The redeem
    /// module's pg_tests share it.)
    pub(in crate::redeem) fn authenticate(tenant: &str) -> pgrx::Uuid {
        Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT voucher.authenticate(voucher.create_api_key('admin', \
                    tenant => voucher.create_tenant('{tenant}')), session => true)"
        ))
        .unwrap()
        .unwrap()
    }

    fn voucher_id(found: Found) -> Option<pgrx::Uuid> {
        match found {
            Found::Row(c) => Some(c.voucher_id),
            _ => None,
        }
    }

    /// The probes find what the statement finds, each tenant only its own code, and leave the
    /// answer to the statement when their index is gone.
    #[pg_test]
    fn the_probes_find_only_the_tenants_own_code() {
        let a = authenticate("probe a");
        let a_code = Spi::get_one::<pgrx::Uuid>(
            "SELECT voucher.add_code(voucher.create_campaign('a', redemption_limit => 3), 'SAME-1')",
        )
        .unwrap();
        assert_eq!(as_definer(|| voucher_id(find(a, "SAME1"))), a_code);
        assert!(matches!(as_definer(|| find(a, "NOPE")), Found::NoSuchCode));
        let b = authenticate("probe b");
        let b_code = Spi::get_one::<pgrx::Uuid>(
            "SELECT voucher.add_code(voucher.create_campaign('b'), 'SAME-1')",
        )
        .unwrap();
        assert_ne!(a_code, b_code);
        assert_eq!(as_definer(|| voucher_id(find(b, "SAME1"))), b_code);
        // asked for another tenant than the context's, the probe does not answer
        assert!(matches!(as_definer(|| find(a, "SAME1")), Found::Fallback));
        // validate returns the same through the probes and through the statement
        let verdict = || {
            Spi::get_one::<String>(
                "SELECT format('%s %s %s', valid, voucher_id, balance) FROM voucher.validate('same-1')",
            )
            .unwrap()
            .unwrap()
        };
        let probed = verdict();
        assert!(probed.starts_with("t "), "{probed}");
        assert!(probed.contains(&b_code.unwrap().to_string()), "{probed}");
        // a policy added by a DBA: the statement answers (and applies it); dropped: the probes
        Spi::run("CREATE POLICY extra ON voucher.code AS RESTRICTIVE USING (code <> 'OTHER')")
            .unwrap();
        assert!(matches!(as_definer(|| find(b, "SAME1")), Found::Fallback));
        assert_eq!(verdict(), probed);
        Spi::run("DROP POLICY extra ON voucher.code").unwrap();
        assert_eq!(as_definer(|| voucher_id(find(b, "SAME1"))), b_code);
        // the tenant policy changed: the statement answers
        Spi::run(
            "ALTER POLICY tenant_isolation ON voucher.campaign \
             USING (tenant_id = voucher.current_tenant())",
        )
        .unwrap();
        assert!(matches!(as_definer(|| find(b, "SAME1")), Found::Fallback));
        assert_eq!(verdict(), probed);
        Spi::run("ALTER TABLE voucher.code DROP CONSTRAINT code_tenant_id_code_key").unwrap();
        assert!(matches!(as_definer(|| find(b, "SAME1")), Found::Fallback));
        assert_eq!(verdict(), probed);
    }

    fn prior_id(found: super::Prior) -> Option<pgrx::Uuid> {
        match found {
            super::Prior::Row(r) => Some(r.0),
            _ => None,
        }
    }

    /// The idempotency key probe finds what the statement finds: this transaction's own
    /// redemption under the key, nothing under another key, each tenant only its own key; and
    /// leaves the answer to the statement for another tenant's context, a changed policy or a
    /// missing index.
    #[pg_test]
    fn the_key_probe_finds_only_the_tenants_own_redemption() {
        use super::{find_prior, Prior};
        let redeem = |code: &str| {
            Spi::get_one::<pgrx::Uuid>(&format!(
                "SELECT redemption_id FROM voucher.redeem('{code}', idempotency_key => 'order-7')"
            ))
            .unwrap()
        };
        let a = authenticate("key probe a");
        Spi::run("SELECT voucher.add_code(voucher.create_campaign('a'), 'KEY-A')").unwrap();
        let a_first = redeem("KEY-A");
        assert!(a_first.is_some());
        assert_eq!(as_definer(|| prior_id(find_prior(a, "order-7"))), a_first);
        assert!(matches!(
            as_definer(|| find_prior(a, "order-8")),
            Prior::None
        ));
        // a replay returns the first result
        let replayed = Spi::get_one::<bool>(
            "SELECT replayed FROM voucher.redeem('KEY-A', idempotency_key => 'order-7')",
        )
        .unwrap();
        assert_eq!(replayed, Some(true));
        let b = authenticate("key probe b");
        Spi::run("SELECT voucher.add_code(voucher.create_campaign('b'), 'KEY-B')").unwrap();
        assert!(matches!(
            as_definer(|| find_prior(b, "order-7")),
            Prior::None
        ));
        let b_first = redeem("KEY-B");
        assert_ne!(a_first, b_first);
        assert_eq!(as_definer(|| prior_id(find_prior(b, "order-7"))), b_first);
        // asked for another tenant than the context's, the probe does not answer
        assert!(matches!(
            as_definer(|| find_prior(a, "order-7")),
            Prior::Fallback
        ));
        // a restrictive policy added by hand: the statement answers (and applies it)
        Spi::run("CREATE POLICY extra ON voucher.redemption AS RESTRICTIVE USING (true)").unwrap();
        assert!(matches!(
            as_definer(|| find_prior(b, "order-7")),
            Prior::Fallback
        ));
        let again = || {
            Spi::get_one::<String>(
                "SELECT format('%s %s', redemption_id, replayed) \
                   FROM voucher.redeem('KEY-B', idempotency_key => 'order-7')",
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(again(), format!("{} t", b_first.unwrap()));
        Spi::run("DROP POLICY extra ON voucher.redemption").unwrap();
        assert_eq!(as_definer(|| prior_id(find_prior(b, "order-7"))), b_first);
        // without the unique index the statement answers
        Spi::run("DROP INDEX voucher.redemption_idempotency_key_idx").unwrap();
        assert!(matches!(
            as_definer(|| find_prior(b, "order-7")),
            Prior::Fallback
        ));
        assert_eq!(again(), format!("{} t", b_first.unwrap()));
    }

    /// The customer probe says whether a customer exists, by the blind index of its id, for
    /// the context's tenant only; a redemption for a new customer creates it and redeems once.
    #[pg_test]
    fn the_customer_probe_finds_only_the_tenants_own_customer() {
        use super::customer_exists;
        let a = authenticate("customer probe a");
        let index = |id: &str| {
            let customer =
                Spi::get_one::<pgrx::Uuid>(&format!("SELECT voucher.upsert_customer('{id}')"))
                    .unwrap()
                    .unwrap();
            Spi::get_one_with_args::<Vec<u8>>(
                "SELECT source_index FROM voucher.customer WHERE customer_id = $1",
                &[customer.into()],
            )
            .unwrap()
            .unwrap()
        };
        let known = index("known-1");
        assert_eq!(as_definer(|| customer_exists(a, &known)), Some(true));
        assert_eq!(as_definer(|| customer_exists(a, &[7u8; 32])), Some(false));
        // a new customer's first redemption: created, then claimed for, once
        Spi::run("SELECT voucher.add_code(voucher.create_campaign('p', redemption_limit => 5), 'CUST-P')")
            .unwrap();
        Spi::run("SELECT voucher.redeem('CUST-P', customer => 'fresh-1')").unwrap();
        let made = Spi::get_one::<i64>(
            "SELECT count(*) FROM voucher.redemptions WHERE customer = 'fresh-1'",
        )
        .unwrap();
        assert_eq!(made, Some(1));
        // each change of the table makes the probe resolve (and copy its policy) again: the
        // copies' memory stays bounded, and the answers right
        for _ in 0..200 {
            Spi::run("ALTER TABLE voucher.customer SET (autovacuum_enabled = true)").unwrap();
            assert_eq!(as_definer(|| customer_exists(a, &known)), Some(true));
        }
        assert!(super::COPIES.with(|c| c.get()) <= super::POLICY_COPIES + 1);
        // SAFETY: reads the size of a memory context of this backend.
        let bytes = unsafe { pg_sys::MemoryContextMemAllocated(super::policy_memory(), true) };
        assert!(bytes < 256 * 1024, "{bytes} bytes of policy copies");
        let b = authenticate("customer probe b");
        // another tenant's context: not answered for a; b does not see a's customer
        assert_eq!(as_definer(|| customer_exists(a, &known)), None);
        assert_eq!(as_definer(|| customer_exists(b, &known)), Some(false));
    }

    /// The customer lock finds what the statement finds and locks it FOR KEY SHARE (the row's
    /// xmax is this transaction), each tenant only its own customer; it leaves the answer to the
    /// statement in REPEATABLE READ and for another tenant's context; a customer forgotten
    /// (its blind index replaced) is no match.
    #[pg_test]
    fn the_customer_lock_locks_only_the_tenants_own_customer() {
        use super::lock_customer;
        let a = authenticate("customer lock a");
        let customer = Spi::get_one::<pgrx::Uuid>("SELECT voucher.upsert_customer('lock-1')")
            .unwrap()
            .unwrap();
        let index = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT source_index FROM voucher.customer WHERE customer_id = $1",
            &[customer.into()],
        )
        .unwrap()
        .unwrap();
        let locker = || {
            Spi::get_one_with_args::<bool>(
                "SELECT xmax::text = pg_current_xact_id()::text FROM voucher.customer \
                  WHERE customer_id = $1",
                &[customer.into()],
            )
            .unwrap()
        };
        assert_eq!(locker(), Some(false));
        assert_eq!(as_definer(|| lock_customer(a, &index)), Ok(Some(customer)));
        assert_eq!(locker(), Some(true));
        assert_eq!(as_definer(|| lock_customer(a, &[7u8; 32])), Ok(None));
        let b = authenticate("customer lock b");
        assert_eq!(as_definer(|| lock_customer(a, &index)), Err(()));
        assert_eq!(as_definer(|| lock_customer(b, &index)), Ok(None));
        // forgotten: its blind index is replaced, the old one finds nothing
        Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT voucher.authenticate(voucher.create_api_key('admin', tenant => '{a}'), \
                    session => true)"
        ))
        .unwrap();
        Spi::run("SELECT voucher.forget_customer('lock-1')").unwrap();
        assert_eq!(as_definer(|| lock_customer(a, &index)), Ok(None));
        // SAFETY: sets the backend's isolation level for the check, then restores it.
        let saved = unsafe { pg_sys::XactIsoLevel };
        unsafe { pg_sys::XactIsoLevel = pg_sys::XACT_REPEATABLE_READ as i32 };
        let in_rr = as_definer(|| lock_customer(a, &index));
        unsafe { pg_sys::XactIsoLevel = saved };
        assert_eq!(in_rr, Err(()));
    }
}
