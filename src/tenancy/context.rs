//! The tenant context: which tenant this session acts for, and with which key role.
//!
//! Why plain SQL cannot forge it:
//! - The context itself lives in this backend's memory, which no SQL statement can write. Only
//!   `authenticate` (after checking a key) and `act_as` (for operators) put one there.
//! - What SQL *can* see is `voucher.context_token`, a random 128-bit token naming the context.
//!   It is a superuser-only setting: `SET`, `set_config`, `ALTER ROLE ... SET` by anyone else fail.
//!   Even a value set by a superuser only selects a context this backend already holds.
//! - The token gives the context Postgres' own setting semantics for free: `SET LOCAL` scope
//!   (the default) ends with the transaction, savepoint rollback restores the previous one, and
//!   `RESET ALL` / `DISCARD ALL` (what poolers run between clients) clear it.
//! - `SET ROLE` changes neither: the context belongs to the session, not to a database role.

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;

use crate::common::error::{api, Result, VoucherError};
use crate::common::events::{self, Event};
use crate::common::gucs;
use crate::common::rng;
use crate::tenancy::definer::{self, as_definer};
use crate::tenancy::revocation;
use crate::tenancy::roles::{Action, KeyRole};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Transaction,
    Session,
}

#[derive(Clone, Debug)]
pub struct Context {
    pub tenant: [u8; 16],
    /// The API key the context was opened with; None for `act_as`.
    pub key_id: Option<[u8; 16]>,
    pub role: KeyRole,
    /// The database role of an operator acting through `act_as`.
    pub operator: Option<pg_sys::Oid>,
    scope: Scope,
    token: CString,
    /// The revocation generation at which the key was last read (see `revocation.rs`).
    verified_generation: Option<u64>,
    /// When the key expires, seconds since the epoch.
    expires_at: Option<f64>,
}

impl Context {
    pub fn tenant_uuid(&self) -> pgrx::Uuid {
        pgrx::Uuid::from_bytes(self.tenant)
    }
}

/// How many contexts a backend remembers: enough for savepoint rollbacks to restore an outer one.
const REMEMBERED: usize = 8;

thread_local! {
    static CONTEXTS: RefCell<Vec<Context>> = const { RefCell::new(Vec::new()) };
    /// A tenant our own Rust code acts for while it works on a tenant other than the context's
    /// (an operator creating a tenant or its first key). Never reachable from SQL.
    static OVERRIDE: Cell<Option<[u8; 16]>> = const { Cell::new(None) };
    /// The key prefix `authenticate` is looking up, so RLS lets exactly that row through.
    static PROBE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Set while platform maintenance (sealing the audit log) lists the tenants.
    static TENANT_SCAN: Cell<bool> = const { Cell::new(false) };
    static KEY_CHECK: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

fn in_parallel_worker() -> bool {
    // SAFETY: reads a backend-local integer.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

/// Runs `f` on the context selected by the current token, if any, without copying it.
fn with_current<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    if in_parallel_worker() {
        // The context is not shipped to workers; refuse rather than silently see nothing.
        VoucherError::NotReady("the tenant context is not available in a parallel worker".into())
            .raise();
    }
    let token = gucs::context_token().filter(|t| !t.is_empty());
    let mut f = Some(f);
    if let Some(token) = token {
        let local = CONTEXTS.with(|c| {
            c.borrow()
                .iter()
                .rev()
                .find(|x| x.token.as_c_str() == token)
                .map(|x| (f.take().expect("called once"))(x))
        });
        if local.is_some() {
            return local;
        }
    }
    remote().map(|ctx| (f.take().expect("called once"))(&ctx))
}

// --- scale (issue 18): the tenant context on a Citus cluster, see src/scale/cluster.rs ---

/// The context a Citus coordinator shipped to this backend, if its token checks out here.
/// It has no local token: `revalidated` re-reads its key, and it is never shipped on.
fn remote() -> Option<Context> {
    let c = crate::scale::cluster::remote_claims()?;
    Some(Context {
        tenant: c.tenant,
        key_id: c.key_id,
        role: KeyRole::parse(&c.role).ok()?,
        operator: c.operator.map(pg_sys::Oid::from),
        scope: Scope::Transaction,
        token: CString::default(),
        verified_generation: None,
        expires_at: Some(c.expires_us as f64 / 1e6),
    })
}

/// Ships a context of this backend to the workers of the transaction (cluster mode only).
fn ship(ctx: &Context) {
    if ctx.token.is_empty() {
        return; // a shipped context is not shipped on
    }
    crate::scale::cluster::ship(
        ctx.tenant,
        ctx.key_id,
        ctx.role.as_str(),
        ctx.operator.map(|o| o.to_u32()),
        ctx.expires_at.map(|e| (e * 1e6) as i64),
    );
}
// --- end scale ---

/// The context selected by the current token, if any.
pub fn current() -> Option<Context> {
    with_current(Context::clone)
}

/// The tenant RLS policies compare against: evaluated once per statement per table, so it
/// copies nothing but the id.
pub fn current_tenant() -> Option<[u8; 16]> {
    OVERRIDE
        .with(|o| o.get())
        .or_else(|| with_current(|c| c.tenant))
}

fn set_token(value: &CString, scope: Scope) {
    let action = match scope {
        Scope::Transaction => pg_sys::GucAction::GUC_ACTION_LOCAL,
        Scope::Session => pg_sys::GucAction::GUC_ACTION_SET,
    };
    // SAFETY: C code may set a PGC_SUSET variable by passing PGC_SUSET as the context.
    unsafe {
        pg_sys::set_config_option(
            c"voucher.context_token".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// What a key's row says, read at a given revocation generation.
pub(super) struct KeyState {
    pub(super) role: KeyRole,
    pub(super) expires_at: Option<f64>,
    pub(super) generation: Option<u64>,
}

pub(super) fn install(
    tenant: [u8; 16],
    key_id: Option<[u8; 16]>,
    role: KeyRole,
    operator: Option<pg_sys::Oid>,
    scope: Scope,
    key_state: Option<&KeyState>,
) {
    push(
        Context {
            tenant,
            key_id,
            role,
            operator,
            scope,
            token: CString::default(),
            verified_generation: key_state.and_then(|k| k.generation),
            expires_at: key_state.and_then(|k| k.expires_at),
        },
        true,
    );
    ship_current();
}

/// Ships the current context to a cluster's workers (scale).
fn ship_current() {
    if let Some(ctx) = current() {
        ship(&ctx);
    }
}

/// Gives `ctx` a fresh random token, sets it for `ctx.scope` and remembers the context (past
/// `REMEMBERED` the oldest are forgotten when `evict`); returns the token.
fn push(mut ctx: Context, evict: bool) -> CString {
    let hex: String = rng::os_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = CString::new(hex).expect("hex has no NUL");
    set_token(&token, ctx.scope);
    ctx.token = token.clone();
    CONTEXTS.with(|c| {
        let mut c = c.borrow_mut();
        c.push(ctx);
        if evict {
            let excess = c.len().saturating_sub(REMEMBERED);
            c.drain(..excess);
        }
    });
    token
}

// --- privacy (issue 15): operator maintenance that works tenant by tenant ---

/// Runs `f` in a transaction-scoped context of `tenant` with key role `role`, opened for
/// `operator` as `act_as` would (audit rows name the operator; no `act_as` row), then puts the
/// caller's context back. Not reachable from SQL: for `run_customer_retention`, which calls it
/// inside a subtransaction per tenant (a subtransaction that fails restores the token itself).
pub fn acting_for<R>(
    tenant: [u8; 16],
    role: KeyRole,
    operator: pg_sys::Oid,
    f: impl FnOnce() -> R,
) -> R {
    struct Forget(CString);
    impl Drop for Forget {
        fn drop(&mut self) {
            CONTEXTS.with(|c| c.borrow_mut().retain(|x| x.token != self.0));
        }
    }
    let previous = gucs::context_token()
        .map(std::ffi::CStr::to_owned)
        .unwrap_or_default();
    // pushed without evicting: the caller's own contexts stay remembered
    let token = push(
        Context {
            tenant,
            key_id: None,
            role,
            operator: Some(operator),
            scope: Scope::Transaction,
            token: CString::default(),
            verified_generation: None,
            expires_at: None,
        },
        false,
    );
    let _forget = Forget(token);
    ship_current();
    let out = f();
    set_token(&previous, Scope::Transaction);
    out
}
// --- end privacy ---

/// Forgets every context of this session.
pub fn clear() {
    CONTEXTS.with(|c| c.borrow_mut().clear());
    set_token(&CString::default(), Scope::Session);
}

/// Called at the end of every top-level transaction.
pub fn end_of_transaction() {
    CONTEXTS.with(|c| c.borrow_mut().retain(|x| x.scope == Scope::Session));
    OVERRIDE.with(|o| o.set(None));
    PROBE.with(|p| *p.borrow_mut() = None);
    TENANT_SCAN.with(|t| t.set(false));
    crate::scale::cluster::end_of_transaction();
}

/// Every tenant's id: the one query that sees across tenants, through its own policy.
pub fn all_tenants() -> Vec<pgrx::Uuid> {
    TENANT_SCAN.with(|t| t.set(true));
    let ids = as_definer(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT tenant_id FROM voucher.tenant ORDER BY tenant_id",
                None,
                &[],
            )
            .expect("tenant list")
            .filter_map(|r| r.get::<pgrx::Uuid>(1).ok().flatten())
            .collect()
        })
    });
    TENANT_SCAN.with(|t| t.set(false));
    ids
}

/// Runs `f` as `voucher_definer` with RLS seeing `tenant`, whatever the session's context.
pub fn as_tenant_definer<R>(tenant: [u8; 16], f: impl FnOnce() -> R) -> R {
    with_tenant(tenant, || as_definer(f))
}

/// Who acts in this context, for `created_by` columns and audit rows.
pub fn actor_label(ctx: &Context) -> String {
    match (ctx.key_id, ctx.operator) {
        (Some(key), _) => format!("key:{}", pgrx::Uuid::from_bytes(key)),
        (None, Some(op)) => format!("operator:{}", definer::role_name(op)),
        (None, None) => "unknown".to_string(),
    }
}

thread_local! {
    /// The actor label and audit jsonb of the last API key this backend acted with.
    static ACTOR: RefCell<Option<(KeyOf, Actors)>> = const { RefCell::new(None) };
}

/// An API key and its role: all an API key's actor label and audit jsonb depend on.
type KeyOf = ([u8; 16], &'static str);
/// The actor label and the audit jsonb (as text).
pub type Actors = Rc<(String, String)>;

/// The actor label (`redeemed_by`) and audit jsonb (as text) of this context. A key's are kept
/// per backend (formatting them was the largest part of this library's own time per
/// redemption in the issue 17 profile); an operator's are made each time (a role's name can
/// change). Redemptions and `upsert_customer` take them here.
pub fn actor_strings(ctx: &Context) -> Actors {
    let make = || Rc::new((actor_label(ctx), actor_json(Some(ctx)).to_string()));
    let Some(key) = ctx.key_id.map(|k| (k, ctx.role.as_str())) else {
        return make();
    };
    ACTOR.with(|a| {
        let mut a = a.borrow_mut();
        match &*a {
            Some((k, v)) if *k == key => v.clone(),
            _ => {
                let v = make();
                *a = Some((key, v.clone()));
                v
            }
        }
    })
}

/// Runs `f` with RLS seeing `tenant`, whatever the session's context.
pub fn with_tenant<R>(tenant: [u8; 16], f: impl FnOnce() -> R) -> R {
    struct Restore(Option<[u8; 16]>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(tenant))));
    let _reship = crate::scale::cluster::ship_tenant(tenant, definer::caller().to_u32()); // scale
    f()
}

pub(super) fn with_probe<R>(prefix: &str, f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            PROBE.with(|p| *p.borrow_mut() = None);
        }
    }
    PROBE.with(|p| *p.borrow_mut() = Some(prefix.to_string()));
    let _restore = Restore;
    f()
}

pub fn uuid_bytes(u: &pgrx::Uuid) -> [u8; 16] {
    **u
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The key's current role and expiry, if it is still valid (not revoked, not expired).
fn read_key(tenant: [u8; 16], key_id: [u8; 16]) -> Option<KeyState> {
    // read the generation first: a change committed after this point bumps it past what we store
    let generation = revocation::current();
    as_definer(|| {
        Spi::connect(|client| {
            KEY_CHECK.with(|stmt| {
                let args = [
                    DatumWithOid::from(pgrx::Uuid::from_bytes(tenant)),
                    DatumWithOid::from(pgrx::Uuid::from_bytes(key_id)),
                ];
                // kept, so planned without sequential scans (run_kept): a plan made while
                // voucher.credential had a page or two would scan every key at each re-check
                // (issue 17, notes/issue-17-traps)
                let rows = crate::common::spi::run_kept(
                    client,
                    &mut stmt.borrow_mut(),
                    || {
                        "SELECT role, extract(epoch FROM expires_at)::float8 \
                           FROM voucher.credential \
                          WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL \
                            AND (expires_at IS NULL OR expires_at > now())"
                            .into()
                    },
                    &[pgrx::Uuid::type_oid(), pgrx::Uuid::type_oid()],
                    false,
                    Some(1),
                    &args,
                );
                if rows.is_empty() {
                    return None;
                }
                let row = rows.first();
                let role = KeyRole::parse(&row.get::<String>(1).ok()??).ok()?;
                Some(KeyState {
                    role,
                    expires_at: row.get::<f64>(2).ok()?,
                    generation,
                })
            })
        })
    })
}

/// `ctx` with its key re-checked: None once the key is revoked or expired. With shared memory,
/// the key's row is read again only if credentials changed since it was last read.
fn revalidated(mut ctx: Context) -> Option<Context> {
    let Some(key_id) = ctx.key_id else {
        return Some(ctx);
    };
    let fresh = ctx.expires_at.is_none_or(|e| now_epoch() < e);
    if fresh
        && ctx.verified_generation.is_some()
        && ctx.verified_generation == revocation::current()
    {
        return Some(ctx);
    }
    let state = read_key(ctx.tenant, key_id)?;
    ctx.role = state.role;
    ctx.expires_at = state.expires_at;
    ctx.verified_generation = state.generation;
    CONTEXTS.with(|c| {
        if let Some(stored) = c.borrow_mut().iter_mut().find(|x| x.token == ctx.token) {
            stored.role = ctx.role;
            stored.expires_at = ctx.expires_at;
            stored.verified_generation = ctx.verified_generation;
        }
    });
    Some(ctx)
}

/// Records a refused key in its tenant's audit log, whatever happens to this transaction.
pub(super) fn refused_key(tenant: [u8; 16], key_id: Option<[u8; 16]>, why: &str) {
    events::record_durably(Event {
        tenant,
        actor: serde_json::json!({ "type": "key", "key_id": key_id.map(|k| pgrx::Uuid::from_bytes(k).to_string()) }),
        action: "key.refused",
        object_type: Some("key"),
        object_id: key_id.map(|k| pgrx::Uuid::from_bytes(k).to_string()),
        details: serde_json::json!({ "reason": why }),
        at: Some(unsafe { pg_sys::GetCurrentTimestamp() }),
    });
}

/// The context, checked: present, its key still valid, and its role allowed to do `action`.
pub fn authorize(action: Action) -> Result<Context> {
    let ctx = current().ok_or_else(|| {
        VoucherError::forbidden_hint(
            "no tenant context",
            "call voucher.authenticate(api_key) first, in the same transaction or with session => true",
        )
    })?;
    let Some(ctx) = revalidated(ctx.clone()) else {
        refused_key(
            ctx.tenant,
            ctx.key_id,
            "revoked or expired, used by a session already authenticated",
        );
        clear();
        return Err(VoucherError::BadKey);
    };
    events::flush_pending();
    action.check(ctx.role)?;
    if action.writes() {
        crate::scale::standby::refuse_writes(action.describe())?; // scale: 25006 on a standby
    }
    ship(&ctx); // scale
    Ok(ctx)
}

pub fn require_operator(what: &str) -> Result<pg_sys::Oid> {
    let caller = definer::caller();
    if definer::is_operator(caller) {
        // scale: every operator call writes (at least its audit row): 25006 on a standby.
        // "issue keys for a tenant they are not acting as" reads as "issue keys" there.
        crate::scale::standby::refuse_writes(what.split(" for ").next().unwrap_or(what))?;
        Ok(caller)
    } else {
        Err(VoucherError::forbidden_hint(
            format!("only voucher_operator members may {what}"),
            "ask a DBA to GRANT voucher_operator to your login role",
        ))
    }
}

/// Does this tenant exist? Looked up as the tenant itself, so RLS stays in force.
pub fn tenant_exists(tenant: [u8; 16]) -> bool {
    as_tenant_definer(tenant, || {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM voucher.tenant WHERE tenant_id = $1)",
            &[pgrx::Uuid::from_bytes(tenant).into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Before a row naming `tenant` is inserted (a key, a setting, a tenant key): the tenant's row
/// FOR KEY SHARE, the lock a foreign key's check took (no table has a key to voucher.tenant any
/// more, sql/tenancy.sql). A concurrent delete of the tenant waits for this transaction and its
/// cascade then removes the new row too; after a committed delete: "no such tenant". Call it as
/// voucher_definer with RLS seeing `tenant` (`as_tenant_definer`).
pub fn hold_tenant(client: &mut pgrx::spi::SpiClient<'_>, tenant: [u8; 16]) -> Result<()> {
    let held = client
        .update(
            "SELECT FROM voucher.tenant WHERE tenant_id = $1 FOR KEY SHARE",
            None,
            &[pgrx::Uuid::from_bytes(tenant).into()],
        )
        .expect("tenant lock")
        .len();
    if held == 0 {
        return Err(VoucherError::invalid("no such tenant"));
    }
    Ok(())
}

/// The tenant this session acts for, or NULL.
#[pg_extern(stable, parallel_restricted, name = "current_tenant")]
fn current_tenant_sql() -> Option<pgrx::Uuid> {
    current_tenant().map(pgrx::Uuid::from_bytes)
}

/// Internal, for SQL functions: the tenant, once the context may perform `action`.
#[pg_extern(volatile, parallel_unsafe, name = "_authorize")]
fn authorize_sql(action: &str) -> pgrx::Uuid {
    api(|| Ok(authorize(Action::parse(action)?)?.tenant_uuid()))
}

/// Internal, for views: false without a context (the view shows nothing); an error if the
/// context's key was revoked or its role may not read this.
#[pg_extern(stable, parallel_restricted, name = "_can_read")]
fn can_read(action: &str) -> bool {
    api(|| {
        let action = Action::parse(action)?;
        if current().is_none() {
            return Ok(false);
        }
        authorize(action).map(|_| true)
    })
}

/// Internal, for `created_by` columns: who acts (the key or operator of the context, else the
/// database role).
#[pg_extern(stable, parallel_restricted, name = "_actor_label")]
fn actor_label_sql() -> String {
    match current() {
        Some(ctx) => actor_label(&ctx),
        None => format!("role:{}", definer::role_name(definer::caller())),
    }
}

/// Internal, for the `voucher.tenant` policy: true only while all_tenants() runs.
#[pg_extern(stable, parallel_restricted, name = "_tenant_scan")]
fn tenant_scan() -> bool {
    TENANT_SCAN.with(|t| t.get())
}

/// Internal, for the `voucher.credential` policy: the key prefix being authenticated, if any.
#[pg_extern(stable, parallel_restricted, name = "_key_probe")]
fn key_probe() -> Option<String> {
    PROBE.with(|p| p.borrow().clone())
}

/// Who acts, as audit rows record it: the key and its role, an operator acting as the tenant, or
/// a database role.
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
