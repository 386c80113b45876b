//! The tenant context on a Citus cluster.
//!
//! On one node the context lives in the backend's memory (`context.rs`). A Citus worker running a
//! shard query for that backend is another process on another machine: it sees none of it, and
//! its forced row-level security would hide every row. So the coordinator ships the context to
//! the workers of the transaction as a token that carries its own proof:
//!
//! ```text
//! v1.<tenant>.<key id or ->.<role>.<operator oid>.<expires µs>.<initiator>.<txn number>.<txn stamp µs>.<mac>
//! ```
//!
//! `mac` is HMAC-SHA256 under the cluster key, a 32-byte file every node holds
//! (`voucher_cluster.key` in the data directory, or `voucher.cluster_key_file`), made by
//! `voucher.distribute()` on the coordinator and copied to the workers by the DBA: it never
//! appears in SQL. The last three fields are Citus's distributed transaction id, which the
//! coordinator assigns before minting and which Citus itself assigns to every worker backend of
//! that transaction (`assign_distributed_transaction_id`). A worker trusts the token only if its
//! MAC checks, it has not expired, and it names the distributed transaction the worker backend is
//! running: a forged token fails the MAC, a token replayed in any other transaction names the
//! wrong transaction. Either way `current_tenant()` is NULL there and RLS selects nothing.
//!
//! Shipping: `SET LOCAL voucher.cluster_token = '...'` run through SPI, with
//! `citus.propagate_set_commands = 'local'`: Citus sends it to the worker connections the
//! transaction already holds and prepends it to every connection it opens later in the
//! transaction. That happens once per transaction and context (`ship`), from `authenticate`,
//! `act_as` and every `authorize`.
//!
//! Cluster mode is on when Citus is loaded into this server and the cluster key file exists;
//! otherwise nothing here runs and the extension behaves as on one node.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;

pub use super::statements::{insert_audit, insert_chain, insert_codes, local_xmin};
pub(super) use super::token::KEY_BYTES;
use super::token::{decode, encode, purge_permitted, purge_tag, Claims, DistTxn};

/// Carries the signed context token to the workers. Anyone may set it: it is trusted only after
/// its MAC and its transaction check out.
pub static CLUSTER_TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Carries `purge_audit`'s permit to the workers' append-only triggers (see [`permit_purge`]).
pub static CLUSTER_PURGE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Where the cluster key lives (default: voucher_cluster.key in the data directory).
pub static CLUSTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// How long a worker accepts a token it has not seen before, at most (capped by the key's own
/// expiry): the window in which a captured token could be replayed. Node clocks must agree to
/// within a few seconds (NTP).
const TOKEN_LIFETIME_US: i64 = 60 * 1_000_000;
/// A transaction re-mints its token when the one it shipped is older than this, at the next call
/// that ships (every API call does), so that worker connections it opens later take a fresh one.
const REMINT_AFTER_US: i64 = 20 * 1_000_000;
// re-minted well before a worker would refuse it for a new connection
const _: () = assert!(REMINT_AFTER_US * 2 < TOKEN_LIFETIME_US);

/// Must a context shipped at `minted_us` be minted anew at `now_us`?
fn stale(minted_us: i64, now_us: i64) -> bool {
    now_us < minted_us || now_us - minted_us >= REMINT_AFTER_US
}

/// May a worker take a token it sees for the first time in this backend and transaction?
/// Once taken, it holds for the rest of that transaction (a long statement must not lose its
/// rows half-way); a replay always starts a new transaction, and meets this check.
fn fresh_enough(c: &Claims, now_us: i64) -> bool {
    now_us < c.expires_us
}

pub fn init_gucs() {
    // SAFETY: registered once per backend, when the library is loaded.
    unsafe { pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut()) };
    GucRegistry::define_string_guc(
        c"voucher.cluster_token",
        c"Internal: the signed tenant context a Citus coordinator ships to its workers.",
        c"Trusted only with a valid MAC under the cluster key, for the distributed transaction it names.",
        &CLUSTER_TOKEN,
        GucContext::Userset,
        // shown to superusers only: a client cannot read the token of its own transaction
        GucFlags::NO_SHOW_ALL
            | GucFlags::SUPERUSER_ONLY
            | GucFlags::DISALLOW_IN_FILE
            | GucFlags::DISALLOW_IN_AUTO_FILE,
    );
    GucRegistry::define_string_guc(
        c"voucher.cluster_purge",
        c"Internal: lets purge_audit's deletes pass the append-only triggers of a Citus worker.",
        c"Trusted only as an HMAC, under the cluster key, of the context token of the transaction.",
        &CLUSTER_PURGE,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL
            | GucFlags::SUPERUSER_ONLY
            | GucFlags::DISALLOW_IN_FILE
            | GucFlags::DISALLOW_IN_AUTO_FILE,
    );
    GucRegistry::define_string_guc(
        c"voucher.cluster_key_file",
        c"File holding the 32-byte cluster key that signs tenant contexts on a Citus cluster.",
        c"Empty: voucher_cluster.key in the data directory. The same file on every node.",
        &CLUSTER_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
}

// ---------------------------------------------------------------------------------------------
// Citus, looked up at run time: voucher_ext neither links against nor requires it
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct CitusDistTxnId {
    initiator: c_int,
    originator: bool,
    number: u64,
    stamp: pg_sys::TimestampTz,
}

unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// A symbol of a library already loaded into this process (PostgreSQL loads with RTLD_GLOBAL).
fn symbol(name: &CStr) -> *mut c_void {
    // SAFETY: RTLD_DEFAULT (NULL on glibc) searches the global scope; a read-only lookup.
    unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) }
}

thread_local! {
    static CITUS: std::cell::OnceCell<Option<CitusFns>> = const { std::cell::OnceCell::new() };
    static KEY: RefCell<Option<(String, [u8; KEY_BYTES])>> = const { RefCell::new(None) };
    /// What this transaction shipped last, and in which (sub)transaction.
    static SHIPPED: RefCell<Option<Shipped>> = const { RefCell::new(None) };
    /// The last token this backend verified, and for which transaction.
    static VERIFIED: RefCell<Option<(String, Claims)>> = const { RefCell::new(None) };
}

/// A shipped context: its claims, its token, and the subtransaction that shipped it (Citus
/// forgets a `SET LOCAL` of a subtransaction for the connections it opens after that
/// subtransaction ends, committed or not: see [`end_of_subtransaction`]).
#[derive(Clone)]
struct Shipped {
    claims: Claims,
    token: String,
    minted_us: i64,
    subxact: pg_sys::SubTransactionId,
}

#[derive(Clone, Copy)]
struct CitusFns {
    use_coordinated: unsafe extern "C-unwind" fn(),
    propagate_set: unsafe extern "C-unwind" fn(*mut pg_sys::VariableSetStmt, *const c_char),
    current_id: unsafe extern "C-unwind" fn() -> *mut CitusDistTxnId,
}

fn citus() -> Option<CitusFns> {
    CITUS.with(|c| {
        *c.get_or_init(|| {
            let a = symbol(c"UseCoordinatedTransaction");
            let b = symbol(c"GetCurrentDistributedTransactionId");
            let c = symbol(c"PostprocessVariableSetStmt");
            if a.is_null() || b.is_null() || c.is_null() {
                return None;
            }
            // SAFETY: the three Citus functions have these C signatures (transaction_management.h,
            // transaction_identifier.h, commands.h of Citus 13).
            unsafe {
                Some(CitusFns {
                    use_coordinated: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C-unwind" fn(),
                    >(a),
                    current_id: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C-unwind" fn() -> *mut CitusDistTxnId,
                    >(b),
                    propagate_set: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C-unwind" fn(*mut pg_sys::VariableSetStmt, *const c_char),
                    >(c),
                })
            }
        })
    })
}

/// Is Citus loaded into this server?
pub fn citus_loaded() -> bool {
    citus().is_some()
}

/// Does this backend run a transaction another node started (a shard query on a worker)?
fn participant(f: &CitusFns) -> bool {
    // SAFETY: as in current_txn.
    let id = unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| (f.current_id)()) };
    // SAFETY: non-null, points to a DistributedTransactionId.
    !id.is_null() && unsafe { (*id).number != 0 && !(*id).originator }
}

/// This backend's distributed transaction id, if it has one (transaction number 0: none).
fn current_txn(f: &CitusFns) -> Option<DistTxn> {
    // SAFETY: returns a pointer into this backend's Citus state; read at once.
    let id = unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| (f.current_id)()) };
    if id.is_null() {
        return None;
    }
    // SAFETY: non-null, points to a DistributedTransactionId.
    let id = unsafe { &*id };
    (id.number != 0).then_some(DistTxn {
        initiator: id.initiator,
        number: id.number,
        stamp: id.stamp,
    })
}

/// Does this backend run a shard statement of a transaction another node coordinates?
pub fn on_shard() -> bool {
    citus().is_some_and(|f| participant(&f))
}

/// Is this server a Citus worker node (not the coordinator) of a cluster that holds the
/// extension? Its sealer and retention must not run: the audit event ids, the sealing horizon
/// and the master key are the coordinator's. Reads Citus's pg_dist_local_group through SPI.
pub fn worker_node() -> bool {
    if !citus_loaded() {
        return false;
    }
    let has_group =
        Spi::get_one::<bool>("SELECT to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL");
    has_group == Ok(Some(true))
        && Spi::get_one::<bool>("SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group")
            == Ok(Some(true))
}

/// A direct change (a DBA's UPDATE, DELETE or TRUNCATE of a tenant table) reaching a shard: its
/// audit row would have to be written from inside the shard statement, which Citus cannot run
/// (a distributed INSERT from a shard) and which would bypass the coordinator's event ids and
/// sealing horizon. So it is refused, and nothing changes.
pub fn direct_dml_refused() -> crate::common::error::VoucherError {
    crate::common::error::VoucherError::NotReady(
        "direct changes to the extension's tables are refused on a Citus cluster: they cannot be \
         audited from a shard; change tenant data through the extension's functions"
            .into(),
    )
}

// ---------------------------------------------------------------------------------------------
// The cluster key
// ---------------------------------------------------------------------------------------------

pub(super) fn key_path() -> String {
    match CLUSTER_KEY_FILE.get() {
        Some(p) if !p.to_bytes().is_empty() => p.to_string_lossy().into_owned(),
        // SAFETY: DataDir is set for the life of a backend.
        _ => unsafe {
            format!(
                "{}/voucher_cluster.key",
                CStr::from_ptr(pg_sys::DataDir).to_string_lossy()
            )
        },
    }
}

/// The cluster key, if this node has one (cached once read; a missing file is looked for again
/// on the next call).
pub(super) fn cluster_key() -> Option<[u8; KEY_BYTES]> {
    let path = key_path();
    KEY.with(|k| {
        let mut k = k.borrow_mut();
        if let Some((p, key)) = &*k {
            if *p == path {
                return Some(*key);
            }
        }
        let bytes = std::fs::read(&path).ok()?;
        let key: [u8; KEY_BYTES] = bytes.try_into().ok()?;
        *k = Some((path, key));
        Some(key)
    })
}

/// Cluster mode: Citus loaded and the cluster key present.
pub fn active() -> bool {
    citus_loaded() && cluster_key().is_some()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Shipping (the node a client is connected to) and trusting (the node running a shard query)
// ---------------------------------------------------------------------------------------------

/// Ships the context to the workers of this transaction, once per transaction and context.
/// A no-op outside cluster mode. True if it shipped now.
pub fn ship(
    tenant: [u8; 16],
    key_id: Option<[u8; 16]>,
    role: &str,
    operator: Option<u32>,
    key_expires_us: Option<i64>,
) -> bool {
    let Some(f) = citus() else { return false };
    let Some(key) = cluster_key() else {
        return false;
    };
    // SAFETY: reads backend-local transaction state.
    if unsafe { !pg_sys::IsTransactionState() } || participant(&f) {
        return false; // no transaction, or a worker's part of another node's transaction
    }
    let same = |c: &Claims| c.tenant == tenant && c.key_id == key_id && c.role == role;
    if let Some(txn) = current_txn(&f) {
        let done = SHIPPED.with(|s| {
            s.borrow().as_ref().is_some_and(|s| {
                same(&s.claims) && s.claims.txn == txn && !stale(s.minted_us, now_us())
            })
        });
        if done {
            return false;
        }
    }
    // SAFETY: Citus's own entry point for "this transaction talks to workers": assigns the
    // distributed transaction id if there is none yet.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| (f.use_coordinated)()) };
    let Some(txn) = current_txn(&f) else {
        return false;
    };
    let minted_us = now_us();
    let expires_us = key_expires_us
        .map(|e| e.min(minted_us + TOKEN_LIFETIME_US))
        .unwrap_or(minted_us + TOKEN_LIFETIME_US);
    let claims = Claims {
        tenant,
        key_id,
        role: role.to_string(),
        operator,
        expires_us,
        txn,
    };
    let token = encode(&claims, &key);
    propagate(&f, &token);
    SHIPPED.with(|s| {
        *s.borrow_mut() = Some(Shipped {
            claims,
            token,
            minted_us,
            // SAFETY: reads backend-local transaction state.
            subxact: unsafe { pg_sys::GetCurrentSubTransactionId() },
        })
    });
    true
}

/// `SET LOCAL voucher.cluster_token = '<token>'` here, and on every worker connection of this
/// transaction: Citus's own SET LOCAL propagation (`PostprocessVariableSetStmt`, what
/// `citus.propagate_set_commands = 'local'` runs in a transaction block) sends it to the
/// connections already open and prepends it to those opened later. Called directly, since Citus
/// propagates a SET only in what it considers a multi-statement transaction, which a function
/// called from a single UPDATE is not.
fn propagate(f: &CitusFns, token: &str) {
    propagate_setting(f, c"voucher.cluster_token", token);
}

/// `SET LOCAL <name> = '<value>'` here and on the workers of this transaction, as [`propagate`].
fn propagate_setting(f: &CitusFns, name: &CStr, value: &str) {
    // values are tokens and tags: hex, digits, dots and a role name, nothing to quote
    let sql = CString::new(format!(
        "SET LOCAL {} = '{value}'",
        name.to_str().expect("an ASCII name")
    ))
    .expect("no NUL in a value");
    let value = CString::new(value).expect("no NUL in a value");
    // SAFETY: sets our own USERSET variable for this transaction, as SET LOCAL would; parses a
    // constant statement; Citus copies the statement text before returning.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
        let parsed = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let raw = (*(*parsed).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt as *mut pg_sys::VariableSetStmt;
        let sql_ptr = sql.as_ptr();
        pg_sys::ffi::pg_guard_ffi_boundary(|| (f.propagate_set)(stmt, sql_ptr));
    }
}

/// For our own code working on `tenant` whatever the session's context (creating a tenant,
/// writing an audit row, looking at every tenant's keys): ships an admin context of `tenant`
/// unless this transaction's workers already hold one of that tenant. Workers use the role only
/// to answer `_can_read`. The returned guard puts back what the workers held before when it is
/// dropped: without it, the session's next statements would run on the workers as `tenant`.
#[must_use]
pub fn ship_tenant(tenant: [u8; 16], caller: u32) -> Reship {
    if !active() {
        return Reship(None);
    }
    let before = SHIPPED.with(|s| s.borrow().clone());
    if before.as_ref().is_some_and(|s| s.claims.tenant == tenant) {
        return Reship(None);
    }
    let shipped = ship(tenant, None, "admin", Some(caller), None);
    Reship(shipped.then_some(before))
}

/// Restores the context the workers held before [`ship_tenant`] (none: an empty token).
pub struct Reship(Option<Option<Shipped>>);

impl Drop for Reship {
    fn drop(&mut self) {
        let Some(before) = self.0.take() else { return };
        // an error is unwinding: the (sub)transaction's abort takes back our SET LOCAL on every
        // node, and end_of_subtransaction / end_of_transaction forget what was shipped
        if std::thread::panicking() {
            return;
        }
        let Some(f) = citus() else { return };
        // SAFETY: reads backend-local transaction state.
        if unsafe { !pg_sys::IsTransactionState() } {
            return;
        }
        let token = before.as_ref().map(|s| s.token.clone()).unwrap_or_default();
        propagate(&f, &token);
        SHIPPED.with(|s| {
            *s.borrow_mut() = before.map(|b| Shipped {
                // SAFETY: reads backend-local transaction state.
                subxact: unsafe { pg_sys::GetCurrentSubTransactionId() },
                ..b
            })
        })
    }
}

/// The context a coordinator shipped to this backend, if its token checks out here: a valid
/// MAC under this node's cluster key, not expired when this backend first saw it, for the
/// distributed transaction this backend runs. None otherwise (no Citus, no key, no token, forged, expired, or replayed).
pub fn remote_claims() -> Option<Claims> {
    let f = citus()?;
    // SAFETY: the GUC machinery keeps the string alive until the value changes; copied at once.
    let token = unsafe {
        let p = *CLUSTER_TOKEN.as_ptr();
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p).to_str().ok()?.to_owned()
    };
    if token.is_empty() {
        return None;
    }
    let txn = current_txn(&f)?;
    let cached = VERIFIED.with(|v| {
        v.borrow()
            .as_ref()
            .filter(|(t, c)| *t == token && c.txn == txn)
            .map(|(_, c)| c.clone())
    });
    let claims = match cached {
        Some(c) => c,
        None => {
            let c = decode(&token, &cluster_key()?)?;
            if c.txn != txn || !fresh_enough(&c, now_us()) {
                return None; // replayed: for another distributed transaction, or too late
            }
            VERIFIED.with(|v| *v.borrow_mut() = Some((token, c.clone())));
            c
        }
    };
    Some(claims)
}

/// For `purge_audit`: while the returned guard lives, the append-only triggers on the shards of
/// this transaction let its deletes through (as `_audit_purging()` does on one node). The permit
/// is an HMAC of the transaction's shipped token, so it holds only in this transaction, for as
/// long as that token does; the guard withdraws it. A no-op outside cluster mode.
#[must_use]
pub fn permit_purge() -> PurgePermit {
    let (Some(f), Some(key)) = (citus(), cluster_key()) else {
        return PurgePermit(false);
    };
    let Some(token) = SHIPPED.with(|s| s.borrow().as_ref().map(|s| s.token.clone())) else {
        return PurgePermit(false);
    };
    propagate_setting(&f, c"voucher.cluster_purge", &purge_tag(&token, &key));
    PurgePermit(true)
}

pub struct PurgePermit(bool);

impl Drop for PurgePermit {
    fn drop(&mut self) {
        // after an error, the (sub)transaction's abort takes the SET LOCAL back everywhere
        if !self.0 || std::thread::panicking() {
            return;
        }
        if let Some(f) = citus() {
            propagate_setting(&f, c"voucher.cluster_purge", "");
        }
    }
}

/// On a worker, in a shard statement: did the coordinator permit a purge in this transaction?
pub fn purge_permitted_here() -> bool {
    if !on_shard() || remote_claims().is_none() {
        return false;
    }
    // SAFETY: the GUC machinery keeps the strings alive until the values change; copied at once.
    let (tag, token) = unsafe {
        let (p, q) = (*CLUSTER_PURGE.as_ptr(), *CLUSTER_TOKEN.as_ptr());
        if p.is_null() || q.is_null() {
            return false;
        }
        (
            CStr::from_ptr(p).to_string_lossy().into_owned(),
            CStr::from_ptr(q).to_string_lossy().into_owned(),
        )
    };
    cluster_key().is_some_and(|key| purge_permitted(&tag, &token, &key))
}

/// At the end of every top-level transaction.
pub fn end_of_transaction() {
    SHIPPED.with(|s| *s.borrow_mut() = None);
}

/// At the end of a subtransaction. Citus keeps the `SET LOCAL` statements of a subtransaction
/// for the connections it opens later only until that subtransaction ends, even when it
/// commits (transaction_management.c, PopSubXact); after a rollback the workers and this node
/// have taken the setting back too. Either way a context shipped inside it must be shipped
/// again by the next call that needs it.
pub fn end_of_subtransaction(subxact: pg_sys::SubTransactionId) {
    SHIPPED.with(|s| {
        let mut s = s.borrow_mut();
        if s.as_ref().is_some_and(|x| x.subxact == subxact) {
            *s = None;
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    if event == SUBXACT_EVENT_COMMIT_SUB || event == SUBXACT_EVENT_ABORT_SUB {
        end_of_subtransaction(my_subid);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_shipped_token_is_minted_anew_once_it_is_older_than_the_remint_age() {
        let t0 = 1_900_000_000_000_000;
        assert!(!stale(t0, t0));
        assert!(!stale(t0, t0 + REMINT_AFTER_US - 1));
        assert!(stale(t0, t0 + REMINT_AFTER_US));
        assert!(stale(t0, t0 - 1), "a clock that went back: mint anew");
    }

    #[test]
    fn a_worker_takes_a_new_token_only_before_it_expires() {
        let t0 = 1_900_000_000_000_000;
        let c = Claims {
            tenant: [7; 16],
            key_id: None,
            role: "admin".into(),
            operator: Some(10),
            expires_us: t0 + TOKEN_LIFETIME_US,
            txn: DistTxn {
                initiator: 0,
                number: 1,
                stamp: t0,
            },
        };
        assert!(fresh_enough(&c, t0));
        assert!(fresh_enough(&c, t0 + TOKEN_LIFETIME_US - 1));
        assert!(!fresh_enough(&c, t0 + TOKEN_LIFETIME_US));
    }
}
