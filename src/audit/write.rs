//! The audit trail.
//!
//! - Every row is written in the transaction of the change it records, with
//!   `row_hash = HMAC-SHA256(audit key, canonical row)`. The key is a file in the data directory
//!   (`voucher.audit_key_file`), created on first use; it never appears in SQL text.
//! - The chain is sealed afterwards by `voucher.seal_audit()` (run it from a scheduler):
//!   `chain_hash = HMAC(previous chain_hash || row_hash)` per tenant in event order, stored in
//!   `audit_chain`. Writers never touch a shared head row, so the audit costs redemption no
//!   serialization point. Sealing stops at a horizon no still-running transaction can write
//!   below (event ids come from a sequence, each writer takes its transaction id first), so a late
//!   commit can never land inside the sealed part of the chain.
//! - Before a seal, each row is covered by its own HMAC only: a changed, forged or renumbered row
//!   is caught, a deleted unsealed row is not. After a seal, deletions and insertions are caught
//!   too, and `verify_audit` names the first bad row.
//! - Failed attempts (refused redemptions, refused keys) and `act_as` must be recorded although
//!   the failing call raises and its transaction rolls back: they wait in backend memory and are
//!   written by the next transaction of the same backend (at the start of its next API call, or at
//!   its commit), or at backend exit.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;

use hmac::{Hmac, Mac};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use sha2::{Digest, Sha256};

use crate::tenancy::context::{self, Context};
use crate::tenancy::definer;
use crate::common::error::{api, Result, VoucherError};
use crate::common::gucs;
use crate::common::rng;
use crate::tenancy::roles::Action;

type HmacSha256 = Hmac<Sha256>;

const KEY_BYTES: usize = 32;

thread_local! {
    /// The audit key file's path, the key, and the key ready to MAC.
    static KEY: RefCell<Option<(String, [u8; KEY_BYTES], Keyed)>> = const { RefCell::new(None) };
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static FLUSHED_IN_XACT: Cell<usize> = const { Cell::new(0) };
    static EXIT_HOOK: Cell<bool> = const { Cell::new(false) };
    static PURGING: Cell<bool> = const { Cell::new(false) };
}

// ---------------------------------------------------------------------------------------------
// The key
// ---------------------------------------------------------------------------------------------

fn key_path() -> String {
    match gucs::AUDIT_KEY_FILE.get() {
        Some(p) if !p.to_bytes().is_empty() => p.to_string_lossy().into_owned(),
        // SAFETY: DataDir is set for the life of a backend.
        _ => unsafe {
            format!(
                "{}/voucher_audit.key",
                CStr::from_ptr(pg_sys::DataDir).to_string_lossy()
            )
        },
    }
}

/// Reads the key, creating it (32 bytes from the OS CSPRNG, mode 0600) if it does not exist.
/// Creation goes through a temporary file and link(2), so concurrent backends agree on one key.
fn load_key(path: &str) -> std::result::Result<[u8; KEY_BYTES], String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let read = |p: &str| -> std::result::Result<Option<[u8; KEY_BYTES]>, String> {
        match std::fs::read(p) {
            Ok(bytes) if bytes.len() == KEY_BYTES => Ok(Some(bytes.try_into().unwrap())),
            Ok(_) => Err(format!(
                "audit key file \"{p}\" does not hold {KEY_BYTES} bytes"
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read audit key file \"{p}\": {e}")),
        }
    };
    if let Some(k) = read(path)? {
        return Ok(k);
    }
    let tmp = format!("{path}.{}.tmp", std::process::id());
    let key = rng::os_bytes::<KEY_BYTES>();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create audit key file \"{tmp}\": {e}"))?;
    f.write_all(&key)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write \"{tmp}\": {e}"))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| format!("audit key file \"{path}\" vanished"))
        }
        Err(e) => Err(format!("cannot create audit key file \"{path}\": {e}")),
    }
}

/// Runs `f` with the audit key and the key ready to MAC, loading it on first use. The borrow of
/// the cache ends before `f` runs: `f` may run SQL that calls `_audit_hash`, which needs it too.
fn with_key<R>(f: impl FnOnce(&[u8; KEY_BYTES], &Keyed) -> R) -> Result<R> {
    let path = key_path();
    let (key, keyed) = KEY.with(|k| {
        let mut k = k.borrow_mut();
        if !matches!(&*k, Some((p, _, _)) if *p == path) {
            let key = load_key(&path).map_err(VoucherError::NotReady)?;
            *k = Some((path, key, Keyed::new(&key)));
        }
        let (_, key, keyed) = k.as_ref().expect("just loaded");
        Ok::<_, VoucherError>((*key, keyed.clone()))
    })?;
    Ok(f(&key, &keyed))
}

fn mac(key: &[u8; KEY_BYTES]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// Identifies the key without revealing it.
fn fingerprint(key: &[u8; KEY_BYTES]) -> String {
    let d = Sha256::digest([b"voucher_ext audit key id\0".as_slice(), key].concat());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Hashes
// ---------------------------------------------------------------------------------------------

/// The fields of an audit row that its HMAC covers, in canonical form: jsonb as PostgreSQL
/// prints it, the time in microseconds.
pub struct Canonical<'a> {
    pub tenant: &'a [u8; 16],
    pub event_id: i64,
    pub at_micros: i64,
    pub actor: &'a str,
    pub action: &'a str,
    pub object_type: Option<&'a str>,
    pub object_id: Option<&'a str>,
    pub details: &'a str,
}

fn put(m: &mut HmacSha256, field: Option<&[u8]>) {
    match field {
        Some(b) => {
            m.update(&[1]);
            m.update(&(b.len() as u64).to_be_bytes());
            m.update(b);
        }
        None => m.update(&[0]),
    }
}

/// The audit key, ready to MAC: keying HMAC costs two SHA-256 blocks, so loops that hash many
/// rows key it once and clone it per row.
#[derive(Clone)]
pub struct Keyed(HmacSha256);

impl Keyed {
    pub fn new(key: &[u8; KEY_BYTES]) -> Keyed {
        Keyed(mac(key))
    }

    pub fn row_hash(&self, c: &Canonical) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(b"voucher_ext audit row v1\0");
        m.update(c.tenant);
        m.update(&c.event_id.to_be_bytes());
        m.update(&c.at_micros.to_be_bytes());
        put(&mut m, Some(c.actor.as_bytes()));
        put(&mut m, Some(c.action.as_bytes()));
        put(&mut m, c.object_type.map(str::as_bytes));
        put(&mut m, c.object_id.map(str::as_bytes));
        put(&mut m, Some(c.details.as_bytes()));
        m.finalize().into_bytes().into()
    }

    pub fn genesis(&self, tenant: &[u8; 16]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(b"voucher_ext audit genesis\0");
        m.update(tenant);
        m.finalize().into_bytes().into()
    }

    pub fn chain(&self, prev: &[u8], event_id: i64, row_hash: &[u8]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(b"voucher_ext audit chain\0");
        m.update(prev);
        m.update(&event_id.to_be_bytes());
        m.update(row_hash);
        m.finalize().into_bytes().into()
    }
}

#[cfg(test)]
fn row_hash(key: &[u8; KEY_BYTES], c: &Canonical) -> [u8; 32] {
    Keyed::new(key).row_hash(c)
}

#[cfg(test)]
fn genesis(key: &[u8; KEY_BYTES], tenant: &[u8; 16]) -> [u8; 32] {
    Keyed::new(key).genesis(tenant)
}

#[cfg(test)]
fn chain(key: &[u8; KEY_BYTES], prev: &[u8], event_id: i64, row_hash: &[u8]) -> [u8; 32] {
    Keyed::new(key).chain(prev, event_id, row_hash)
}

fn micros(at: TimestampWithTimeZone) -> i64 {
    at.into_datum().map(|d| d.value() as i64).unwrap_or(0)
}

/// Internal: the HMAC of an audit row, used by every writer (SQL passes jsonb as text).
#[pg_extern(stable, parallel_safe, name = "_audit_hash")]
#[allow(clippy::too_many_arguments)]
fn audit_hash_sql(
    tenant: pgrx::Uuid,
    event_id: i64,
    at: TimestampWithTimeZone,
    actor: &str,
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: &str,
) -> Vec<u8> {
    let tenant = *tenant;
    api(|| {
        with_key(|_, keyed| {
            let c = Canonical {
                tenant: &tenant,
                event_id,
                at_micros: micros(at),
                actor,
                action,
                object_type,
                object_id,
                details,
            };
            keyed.row_hash(&c).to_vec()
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Who acts: the key and its role, an operator acting as the tenant, or a database role.
pub fn actor_json(ctx: Option<&Context>) -> serde_json::Value {
    match ctx {
        Some(c) => match (c.key_id, c.operator) {
            (Some(k), _) => serde_json::json!({
                "type": "key", "key_id": pgrx::Uuid::from_bytes(k).to_string(), "role": c.role.as_str()
            }),
            (None, Some(op)) => serde_json::json!({
                "type": "operator", "db_role": definer::role_name(op), "role": c.role.as_str()
            }),
            (None, None) => serde_json::json!({ "type": "unknown" }),
        },
        None => {
            serde_json::json!({ "type": "db_role", "db_role": definer::role_name(definer::caller()) })
        }
    }
}

/// One event to record.
pub struct Event {
    pub tenant: [u8; 16],
    pub actor: serde_json::Value,
    pub action: &'static str,
    pub object_type: Option<&'static str>,
    pub object_id: Option<String>,
    pub details: serde_json::Value,
    /// When it happened, for events written later than they occurred (None: now()).
    pub at: Option<pg_sys::TimestampTz>,
}

/// The SQL of one insert. The row hash is computed over the jsonb exactly as stored.
/// $1 tenant, $2 at (NULL: now()), $3 actor, $4 action, $5 object type, $6 object id, $7 details
pub const INSERT: &str = "\
WITH e AS (SELECT nextval('voucher.audit_event_id_seq') AS id, coalesce($2, now()) AS at,
                  $3::jsonb AS actor, $7::jsonb AS details)
INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, object_id,
                                 details, row_hash)
SELECT $1, e.id, e.at, e.actor, $4, $5, $6, e.details,
       voucher._audit_hash($1, e.id, e.at, e.actor::text, $4, $5, $6, e.details::text)
  FROM e";

/// Event ids come from a sequence; the sealing horizon assumes a writer has its transaction id
/// before it takes one (see `seal`).
pub fn take_xid() {
    // SAFETY: assigns (or returns) the top-level transaction id.
    unsafe { pg_sys::GetTopTransactionId() };
}

fn insert(client: &mut SpiClient<'_>, e: &Event) {
    take_xid();
    let at = e.at.and_then(|t| TimestampWithTimeZone::try_from(t).ok());
    let args: [DatumWithOid; 7] = [
        pgrx::Uuid::from_bytes(e.tenant).into(),
        at.into(),
        e.actor.to_string().into(),
        e.action.into(),
        e.object_type.into(),
        e.object_id.clone().into(),
        e.details.to_string().into(),
    ];
    client.update(INSERT, None, &args).expect("audit insert");
}

/// Records `e` in the current transaction.
pub fn write(e: &Event) {
    context::as_tenant_definer(e.tenant, || Spi::connect_mut(|client| insert(client, e)));
}

/// Records `e` even if the current transaction rolls back (see the module comment).
pub fn write_durably(e: Event) {
    ensure_exit_hook();
    PENDING.with(|p| p.borrow_mut().push(Pending(e)));
}

struct Pending(Event);

/// Internal, for SQL functions: records an event of the current tenant context.
#[pg_extern(volatile, parallel_unsafe, name = "_audit")]
fn audit_sql(
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: Option<JsonB>,
) {
    api(|| {
        let ctx = context::current().ok_or_else(|| {
            VoucherError::forbidden_hint(
                "no tenant context",
                "call voucher.authenticate(api_key) first",
            )
        })?;
        write_from_sql(
            ctx.tenant,
            actor_json(Some(&ctx)),
            action,
            object_type,
            object_id,
            details,
        );
        Ok(())
    })
}

/// Internal, for the triggers on direct DML: records an event of `tenant` by the database role.
#[pg_extern(volatile, parallel_unsafe, name = "_audit_direct")]
fn audit_direct_sql(
    tenant: pgrx::Uuid,
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: Option<JsonB>,
) {
    write_from_sql(
        *tenant,
        actor_json(None),
        action,
        object_type,
        object_id,
        details,
    );
}

/// Writes an event whose fields arrive as SQL arguments (details NULL: an empty object).
fn write_from_sql(
    tenant: [u8; 16],
    actor: serde_json::Value,
    action: &str,
    object_type: Option<&str>,
    object_id: Option<&str>,
    details: Option<JsonB>,
) {
    write(&Event {
        tenant,
        actor,
        action: static_str(action),
        object_type: object_type.map(static_str),
        object_id: object_id.map(str::to_string),
        details: details
            .map(|d| d.0)
            .unwrap_or_else(|| serde_json::json!({})),
        at: None,
    });
}

/// Action and object-type names are few and fixed; SQL passes them as text.
fn static_str(s: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "tenant.created",
        "tenant.audit_retention_changed",
        "key.created",
        "key.revoked",
        "key.refused",
        "act_as",
        "campaign.created",
        "campaign.enabled",
        "campaign.disabled",
        "voucher.created",
        "voucher.enabled",
        "voucher.disabled",
        "codes.generated",
        "customer.created",
        "customer.updated",
        "redemption.created",
        "redemption.failed",
        "redemption.rolled_back",
        "audit.purged",
        "direct.update",
        "direct.delete",
        "direct.truncate",
        "tenant",
        "key",
        "campaign",
        "voucher",
        "customer",
        "redemption",
        "credential",
        "code",
        "customer_usage",
        "audit",
    ];
    NAMES.iter().find(|n| **n == s).copied().unwrap_or_else(|| {
        VoucherError::invalid(format!("unknown audit name \"{}\"", s.escape_default())).raise()
    })
}

// ---------------------------------------------------------------------------------------------
// Events that survive their transaction
// ---------------------------------------------------------------------------------------------

fn can_write_now() -> bool {
    // SAFETY: reads backend-local transaction state.
    unsafe {
        pg_sys::IsTransactionState()
            && !pg_sys::XactReadOnly
            && pg_sys::GetCurrentTransactionNestLevel() == 1
            && pg_sys::ParallelWorkerNumber < 0
    }
}

/// Writes waiting events in the current transaction. They stay queued until it commits.
pub fn flush_pending() {
    let waiting = PENDING.with(|p| p.borrow().len());
    let done = FLUSHED_IN_XACT.with(|f| f.get());
    if waiting <= done || !can_write_now() {
        return;
    }
    PENDING.with(|p| {
        let p = p.borrow();
        for pending in &p[done..] {
            write(&pending.0);
        }
    });
    FLUSHED_IN_XACT.with(|f| f.set(waiting));
}

/// At the end of a top-level transaction: what it wrote is done if it committed.
pub fn end_of_transaction(committed: bool) {
    let done = FLUSHED_IN_XACT.with(|f| f.replace(0));
    if committed && done > 0 {
        PENDING.with(|p| {
            p.borrow_mut().drain(..done);
        });
    }
    PURGING.with(|p| p.set(false));
}

/// Before commit: write what is still waiting, in a subtransaction so an audit failure can
/// never fail the caller's commit (it stays queued instead).
pub fn pre_commit() {
    let waiting = PENDING.with(|p| p.borrow().len());
    if waiting <= FLUSHED_IN_XACT.with(|f| f.get()) || !can_write_now() {
        return;
    }
    // SAFETY: the standard internal-subtransaction pattern, as PL/pgSQL exception blocks use it.
    unsafe {
        let oldcxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let ok = PgTryBuilder::new(|| {
            // at commit time no statement holds a snapshot any more
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            flush_in_subtransaction();
            pg_sys::PopActiveSnapshot();
            true
        })
        .catch_others(|_| false)
        .execute();
        if ok {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            FLUSHED_IN_XACT.with(|f| f.set(0));
        }
        pg_sys::MemoryContextSwitchTo(oldcxt);
        pg_sys::CurrentResourceOwner = owner;
    }
}

fn flush_in_subtransaction() {
    let done = FLUSHED_IN_XACT.with(|f| f.get());
    PENDING.with(|p| {
        for pending in &p.borrow()[done..] {
            write(&pending.0);
        }
    });
    FLUSHED_IN_XACT.with(|f| f.set(PENDING.with(|p| p.borrow().len())));
}

fn ensure_exit_hook() {
    if EXIT_HOOK.with(|h| h.replace(true)) {
        return;
    }
    // SAFETY: registered in this backend; runs before its shared memory is detached.
    unsafe { pg_sys::before_shmem_exit(Some(at_exit), pg_sys::Datum::from(0)) };
}

/// Backend exit: write what is still waiting, in a transaction of its own (normal exits only).
#[pg_guard]
unsafe extern "C-unwind" fn at_exit(code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let waiting = PENDING.with(|p| !p.borrow().is_empty());
    // SAFETY: reads backend state; a transaction is started only when none is open.
    unsafe {
        if code != 0 || !waiting || pg_sys::IsTransactionState() || pg_sys::RecoveryInProgress() {
            return;
        }
        PgTryBuilder::new(|| {
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            FLUSHED_IN_XACT.with(|f| f.set(0));
            flush_all();
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        })
        .catch_others(|_| ())
        .execute();
    }
}

fn flush_all() {
    let events: Vec<Pending> = PENDING.with(|p| p.borrow_mut().drain(..).collect());
    for e in &events {
        write(&e.0);
    }
}

/// Internal, for the append-only trigger: is voucher.purge_audit() deleting right now?
#[pg_extern(stable, parallel_safe, name = "_audit_purging")]
fn audit_purging() -> bool {
    PURGING.with(|p| p.get())
}

// ---------------------------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------------------------

fn xid8_now_next() -> u64 {
    // SAFETY: reads the shared next-xid counter.
    unsafe { pg_sys::ReadNextFullTransactionId().value }
}

/// Seals one tenant's chain as far as the horizon allows; returns how many events it sealed.
fn seal_tenant(client: &mut SpiClient<'_>, key: &[u8; KEY_BYTES], tenant: pgrx::Uuid) -> i64 {
    let t = *tenant;
    client
        .update(
            "INSERT INTO voucher.audit_state (tenant_id, key_fingerprint) VALUES ($1, $2) \
             ON CONFLICT (tenant_id) DO NOTHING",
            None,
            &[tenant.into(), fingerprint(key).into()],
        )
        .expect("audit state");
    let state = client
        .update(
            "SELECT sealed_through, head, pending_through, pending_xmax::text::bigint, \
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint, sealed_rows, \
                    purged_through, purge_head \
               FROM voucher.audit_state WHERE tenant_id = $1 FOR UPDATE",
            None,
            &[tenant.into()],
        )
        .expect("audit state");
    let s = state.first();
    let sealed_through = s.get::<i64>(1).ok().flatten().unwrap_or(0);
    let head = s.get::<Vec<u8>>(2).ok().flatten();
    let pending_through = s.get::<i64>(3).ok().flatten();
    let pending_xmax = s.get::<i64>(4).ok().flatten();
    let xmin = s.get::<i64>(5).ok().flatten().unwrap_or(0);
    let mut sealed_rows = s.get::<i64>(6).ok().flatten().unwrap_or(0);
    let purge_head = s.get::<Vec<u8>>(8).ok().flatten();

    let mut sealed_now = 0i64;
    if let (Some(through), Some(xmax)) = (pending_through, pending_xmax) {
        if xmin >= xmax && through > sealed_through {
            let keyed = Keyed::new(key);
            let mut prev = head
                .or(purge_head)
                .unwrap_or_else(|| keyed.genesis(&t).to_vec());
            // in batches, so memory stays bounded however much waits to be sealed
            let mut after = sealed_through;
            loop {
                let rows = client
                    .update(
                        "SELECT event_id, row_hash FROM voucher.audit_event \
                          WHERE tenant_id = $1 AND event_id > $2 AND event_id <= $3 \
                          ORDER BY event_id LIMIT 10000",
                        None,
                        &[tenant.into(), after.into(), through.into()],
                    )
                    .expect("events to seal");
                let mut ids = Vec::with_capacity(rows.len());
                let mut hashes = Vec::with_capacity(rows.len());
                for r in rows {
                    let id = r.get::<i64>(1).ok().flatten().expect("event_id");
                    let rh = r.get::<Vec<u8>>(2).ok().flatten().unwrap_or_default();
                    let h = keyed.chain(&prev, id, &rh);
                    prev = h.to_vec();
                    ids.push(id);
                    hashes.push(h.to_vec());
                }
                // SAFETY: SPI_tuptable is the result just consumed (no query ran since); SPI
                // would keep it until the connection ends.
                unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
                let Some(&last) = ids.last() else { break };
                after = last;
                sealed_now += ids.len() as i64;
                client
                    .update(
                        "INSERT INTO voucher.audit_chain (tenant_id, event_id, chain_hash) \
                         SELECT $1, u.id, u.h FROM unnest($2::bigint[], $3::bytea[]) AS u(id, h)",
                        None,
                        &[tenant.into(), ids.into(), hashes.into()],
                    )
                    .expect("chain insert");
            }
            sealed_rows += sealed_now;
            client
                .update(
                    "UPDATE voucher.audit_state SET sealed_through = $2, head = $3, \
                            sealed_rows = $4, sealed_at = now() WHERE tenant_id = $1",
                    None,
                    &[
                        tenant.into(),
                        through.into(),
                        prev.into(),
                        sealed_rows.into(),
                    ],
                )
                .expect("audit state");
        }
    }
    // The next horizon: events up to the sequence's current value, sealable once every
    // transaction that might still hold one of them (all older than `next`) has ended. The
    // sequence is read before the next-xid counter, and writers take their xid before an id.
    let last = client
        .update(
            "SELECT last_value FROM voucher.audit_event_id_seq",
            None,
            &[],
        )
        .expect("sequence")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0);
    let next = xid8_now_next() as i64;
    client
        .update(
            "UPDATE voucher.audit_state SET pending_through = $2, pending_xmax = $3::text::xid8 \
              WHERE tenant_id = $1",
            None,
            &[tenant.into(), last.into(), next.to_string().into()],
        )
        .expect("audit state");
    sealed_now
}

fn seal_impl() -> Result<i64> {
    let caller = definer::caller();
    if !definer::is_operator(caller) {
        return Err(VoucherError::forbidden_hint(
            "only voucher_operator members may seal the audit log",
            "schedule SELECT voucher.seal_audit() as an operator, e.g. with pg_cron",
        ));
    }
    with_key(|key, _| {
        let tenants = context::all_tenants();
        tenants
            .into_iter()
            .map(|t| {
                context::as_tenant_definer(*t, || Spi::connect_mut(|c| seal_tenant(c, key, t)))
            })
            .sum()
    })
}

/// Operators: extends every tenant's audit chain over the events no running transaction can
/// still add to; returns how many events were sealed. Run it periodically (pg_cron or any
/// scheduler); an event becomes sealable at the second run after it was written.
#[pg_extern(volatile, parallel_unsafe)]
fn seal_audit() -> i64 {
    api(seal_impl)
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

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
                    return bad(
                        None,
                        0,
                        "the server's audit key is not the one that sealed this log",
                    );
                }

                // pass 1: every row's HMAC
                let (hm, _) = unsafe {
                    snapshot_select(
                        c"SELECT count(*), min(event_id) FILTER (WHERE (row_hash \
                                  OPERATOR(pg_catalog.=) voucher._audit_hash(tenant_id, event_id, \
                                  at, actor::text, action, object_type, object_id, \
                                  details::text)) IS NOT TRUE) \
                            FROM voucher.audit_event WHERE tenant_id = $1",
                        t,
                    )
                };
                let total = unsafe { raw_i64(hm, 0, 1) }.unwrap_or(0);
                let first_forged = unsafe { raw_i64(hm, 0, 2) };

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

// ---------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------

fn purge_impl(older_than: Option<Interval>) -> Result<i64> {
    let ctx = context::authorize(Action::Administer)?;
    // SAFETY: checks the calling role.
    let superuser = unsafe { pg_sys::superuser_arg(definer::caller()) };
    if let Some(i) = &older_than {
        let short = Spi::get_one_with_args::<bool>("SELECT $1 < interval '1 day'", &[(*i).into()])
            .expect("interval comparison")
            .unwrap_or(true);
        if short && !superuser {
            return Err(VoucherError::invalid_hint(
                "older_than must be at least one day",
                "only a superuser may purge younger audit rows",
            ));
        }
    }
    let t = pgrx::Uuid::from_bytes(ctx.tenant);
    context::as_tenant_definer(ctx.tenant, || {
        Spi::connect_mut(|client| {
            // only sealed rows go, and the chain restarts from the last one removed
            let cut = client
                .update(
                    "SELECT max(e.event_id), count(*) FROM voucher.audit_event e \
                       JOIN voucher.tenant x ON x.tenant_id = e.tenant_id \
                       JOIN voucher.audit_state s ON s.tenant_id = e.tenant_id \
                      WHERE e.tenant_id = $1 AND e.at < now() - coalesce($2, x.audit_retention) \
                        AND e.event_id <= s.sealed_through",
                    None,
                    &[t.into(), older_than.into()],
                )
                .expect("purge horizon");
            let row = cut.first();
            let Some(through) = row.get::<i64>(1).ok().flatten() else {
                return Ok(0);
            };
            let head = client
                .update(
                    "SELECT chain_hash FROM voucher.audit_chain WHERE tenant_id = $1 AND event_id = $2",
                    None,
                    &[t.into(), through.into()],
                )
                .expect("chain head")
                .first()
                .get_one::<Vec<u8>>()
                .ok()
                .flatten();
            PURGING.with(|p| p.set(true));
            let n = client
                .update(
                    "DELETE FROM voucher.audit_event WHERE tenant_id = $1 AND event_id <= $2",
                    None,
                    &[t.into(), through.into()],
                )
                .expect("purge events")
                .len() as i64;
            client
                .update(
                    "DELETE FROM voucher.audit_chain WHERE tenant_id = $1 AND event_id <= $2",
                    None,
                    &[t.into(), through.into()],
                )
                .expect("purge chain");
            PURGING.with(|p| p.set(false));
            client
                .update(
                    "UPDATE voucher.audit_state SET purged_through = $2, purge_head = $3 \
                      WHERE tenant_id = $1",
                    None,
                    &[t.into(), through.into(), head.into()],
                )
                .expect("audit state");
            insert(
                client,
                &Event {
                    tenant: ctx.tenant,
                    actor: actor_json(Some(&ctx)),
                    action: "audit.purged",
                    object_type: Some("audit"),
                    object_id: None,
                    details: serde_json::json!({ "through_event": through, "rows": n }),
                    at: None,
                },
            );
            Ok(n)
        })
    })
}

/// Admin keys: removes the tenant's sealed audit rows older than its retention (default 12
/// months, voucher.set_audit_retention) or `older_than`; verification keeps working for the rest.
#[pg_extern(volatile, parallel_unsafe)]
fn purge_audit(older_than: default!(Option<Interval>, "NULL")) -> i64 {
    api(|| purge_impl(older_than))
}

#[cfg(test)]
mod unit {
    use super::*;

    fn sample(details: &str) -> [u8; 32] {
        let key = [7u8; KEY_BYTES];
        row_hash(
            &key,
            &Canonical {
                tenant: &[1; 16],
                event_id: 42,
                at_micros: 1,
                actor: "{}",
                action: "a",
                object_type: None,
                object_id: Some("x"),
                details,
            },
        )
    }

    #[test]
    fn every_field_is_covered() {
        assert_eq!(sample("{}"), sample("{}"));
        assert_ne!(sample("{}"), sample("{ }"));
        let key = [7u8; KEY_BYTES];
        let base = Canonical {
            tenant: &[1; 16],
            event_id: 42,
            at_micros: 1,
            actor: "{}",
            action: "a",
            object_type: None,
            object_id: Some("x"),
            details: "{}",
        };
        let h = row_hash(&key, &base);
        assert_ne!(
            h,
            row_hash(
                &key,
                &Canonical {
                    event_id: 43,
                    ..base
                }
            )
        );
        assert_ne!(
            h,
            row_hash(
                &key,
                &Canonical {
                    at_micros: 2,
                    ..base
                }
            )
        );
        assert_ne!(
            h,
            row_hash(
                &key,
                &Canonical {
                    tenant: &[2; 16],
                    ..base
                }
            )
        );
        assert_ne!(
            h,
            row_hash(
                &key,
                &Canonical {
                    object_type: Some(""),
                    ..base
                }
            )
        );
        assert_ne!(
            h,
            row_hash(
                &key,
                &Canonical {
                    object_id: None,
                    ..base
                }
            )
        );
        // field boundaries are unambiguous
        assert_ne!(
            row_hash(
                &key,
                &Canonical {
                    actor: "ab",
                    action: "c",
                    ..base
                }
            ),
            row_hash(
                &key,
                &Canonical {
                    actor: "a",
                    action: "bc",
                    ..base
                }
            )
        );
        assert_ne!(h, row_hash(&[8u8; KEY_BYTES], &base));
    }

    #[test]
    fn chain_depends_on_order_and_predecessor() {
        let key = [3u8; KEY_BYTES];
        let g = genesis(&key, &[1; 16]);
        let a = chain(&key, &g, 1, b"ra");
        let b = chain(&key, &a, 2, b"rb");
        let b_swapped = chain(&key, &chain(&key, &g, 2, b"rb"), 1, b"ra");
        assert_ne!(b, b_swapped);
        assert_ne!(
            chain(&key, &g, 2, b"rb"),
            b,
            "skipping a row changes the chain"
        );
        assert_ne!(genesis(&key, &[1; 16]), genesis(&key, &[2; 16]));
    }

    #[test]
    fn a_keyed_mac_is_reusable_and_the_row_format_is_pinned() {
        let keyed = Keyed::new(&[5u8; KEY_BYTES]);
        let row = |id| Canonical {
            tenant: &[9; 16],
            event_id: id,
            at_micros: 1_700_000_000_000_000,
            actor: r#"{"type": "key"}"#,
            action: "redemption.created",
            object_type: Some("voucher"),
            object_id: None,
            details: "{}",
        };
        let first = keyed.row_hash(&row(1));
        assert_ne!(first, keyed.row_hash(&row(2)));
        assert_eq!(
            first,
            keyed.row_hash(&row(1)),
            "no state carried between rows"
        );
        assert_eq!(first, row_hash(&[5u8; KEY_BYTES], &row(1)));
        // Stored audit rows carry these hashes: a change of the canonical form would make every
        // existing log fail verification, so it must be a deliberate one (a new version tag).
        let hex: String = first.iter().map(|b| format!("{b:02x}")).collect();
        // (value cross-checked with Python's hmac module over the same bytes)
        assert_eq!(
            hex,
            "2febb772aef8daf56d375b81a539d6f38190b03bfcde83ae3e4d97a7375d7641"
        );
    }

    #[test]
    fn key_files_are_created_once_and_shared() {
        let dir = std::env::temp_dir().join(format!("voucher_key_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k").to_string_lossy().into_owned();
        let a = load_key(&path).unwrap();
        let b = load_key(&path).unwrap();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, b"short").unwrap();
        assert!(load_key(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(fingerprint(&a).len(), 16);
    }
}
