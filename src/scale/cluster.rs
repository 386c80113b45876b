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

use hmac::{Hmac, Mac};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Carries the signed context token to the workers. Anyone may set it: it is trusted only after
/// its MAC and its transaction check out.
pub static CLUSTER_TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Where the cluster key lives (default: voucher_cluster.key in the data directory).
pub static CLUSTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// How long a shipped token stays valid, at most (capped by the key's own expiry).
const TOKEN_LIFETIME_US: i64 = 10 * 60 * 1_000_000;
pub(super) const KEY_BYTES: usize = 32;
const VERSION: &str = "v1";

pub fn init_gucs() {
    // SAFETY: registered once per backend, when the library is loaded.
    unsafe { pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut()) };
    GucRegistry::define_string_guc(
        c"voucher.cluster_token",
        c"Internal: the signed tenant context a Citus coordinator ships to its workers.",
        c"Trusted only with a valid MAC under the cluster key, for the distributed transaction it names.",
        &CLUSTER_TOKEN,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL
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
// Claims and their encoding
// ---------------------------------------------------------------------------------------------

/// Citus's distributed transaction id: (initiator node, number, timestamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistTxn {
    pub initiator: i32,
    pub number: u64,
    pub stamp: i64,
}

/// What a token asserts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub tenant: [u8; 16],
    pub key_id: Option<[u8; 16]>,
    /// The key role's name (the tenancy layer parses it).
    pub role: String,
    pub operator: Option<u32>,
    pub expires_us: i64,
    pub txn: DistTxn,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn mac_of(key: &[u8; KEY_BYTES], payload: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"voucher_ext cluster context\0");
    m.update(payload.as_bytes());
    m
}

/// The token for `c`, signed with `key`.
pub fn encode(c: &Claims, key: &[u8; KEY_BYTES]) -> String {
    let payload = format!(
        "{VERSION}.{}.{}.{}.{}.{}.{}.{}.{}",
        hex(&c.tenant),
        c.key_id.map(|k| hex(&k)).unwrap_or_else(|| "-".into()),
        c.role,
        c.operator
            .map(|o| o.to_string())
            .unwrap_or_else(|| "-".into()),
        c.expires_us,
        c.txn.initiator,
        c.txn.number,
        c.txn.stamp
    );
    let tag = mac_of(key, &payload).finalize().into_bytes();
    format!("{payload}.{}", hex(&tag))
}

/// The claims of `token` if its MAC under `key` checks out (constant-time comparison).
pub fn decode(token: &str, key: &[u8; KEY_BYTES]) -> Option<Claims> {
    let (payload, tag) = token.rsplit_once('.')?;
    let tag = unhex::<32>(tag)?;
    mac_of(key, payload).verify_slice(&tag).ok()?;
    let f: Vec<&str> = payload.split('.').collect();
    if f.len() != 9 || f[0] != VERSION {
        return None;
    }
    Some(Claims {
        tenant: unhex::<16>(f[1])?,
        key_id: if f[2] == "-" {
            None
        } else {
            Some(unhex::<16>(f[2])?)
        },
        role: (!f[3].is_empty() && f[3].bytes().all(|b| b.is_ascii_lowercase()))
            .then(|| f[3].to_string())?,
        operator: if f[4] == "-" {
            None
        } else {
            Some(f[4].parse().ok()?)
        },
        expires_us: f[5].parse().ok()?,
        txn: DistTxn {
            initiator: f[6].parse().ok()?,
            number: f[7].parse().ok()?,
            stamp: f[8].parse().ok()?,
        },
    })
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
            s.borrow()
                .as_ref()
                .is_some_and(|s| same(&s.claims) && s.claims.txn == txn)
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
    let expires_us = key_expires_us
        .map(|e| e.min(now_us() + TOKEN_LIFETIME_US))
        .unwrap_or(now_us() + TOKEN_LIFETIME_US);
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
    // the token is hex, digits, dots and a role name: nothing to quote
    let sql = CString::new(format!("SET LOCAL voucher.cluster_token = '{token}'"))
        .expect("no NUL in a token");
    let value = CString::new(token).expect("no NUL in a token");
    // SAFETY: sets our own USERSET variable for this transaction, as SET LOCAL would; parses a
    // constant statement; Citus copies the statement text before returning.
    unsafe {
        pg_sys::set_config_option(
            c"voucher.cluster_token".as_ptr(),
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
/// MAC under this node's cluster key, not expired, for the distributed transaction this backend
/// runs. None otherwise (no Citus, no key, no token, forged, expired, or replayed).
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
            if c.txn != txn {
                return None; // replayed: minted for another distributed transaction
            }
            VERIFIED.with(|v| *v.borrow_mut() = Some((token, c.clone())));
            c
        }
    };
    (now_us() < claims.expires_us).then_some(claims)
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

// ---------------------------------------------------------------------------------------------
// Statements Citus routes to one shard
// ---------------------------------------------------------------------------------------------

/// `audit::INSERT` in two steps for a cluster: the event id and time from the coordinator's
/// sequence and clock, then a single-row `INSERT ... VALUES` that Citus routes to the tenant's
/// shard (an `INSERT ... SELECT` becomes a COPY there, which row-level security refuses).
/// `args` as for `audit::INSERT`: tenant, at, actor, action, object type, object id, details.
pub fn insert_audit(client: &mut pgrx::spi::SpiClient<'_>, args: [pgrx::datum::DatumWithOid; 7]) {
    let [tenant, at, actor, action, object_type, object_id, details] = args;
    let row = client
        .select(
            "SELECT nextval('voucher.audit_event_id_seq'), coalesce($1, now())",
            Some(1),
            &[at],
        )
        .expect("event id")
        .first();
    let id = row.get::<i64>(1).ok().flatten().expect("an event id");
    let at = row
        .get::<pgrx::datum::TimestampWithTimeZone>(2)
        .ok()
        .flatten()
        .expect("a time");
    let all = [
        tenant,
        id.into(),
        at.into(),
        actor,
        action,
        object_type,
        object_id,
        details,
    ];
    client
        .update(
            "INSERT INTO voucher.audit_event (tenant_id, event_id, at, actor, action, object_type, \
                                              object_id, details, row_hash) \
             VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8::jsonb, \
                     voucher._audit_hash($1, $2, $3, $4::jsonb::text, $5, $6, $7, $8::jsonb::text))",
            None,
            &all,
        )
        .expect("audit insert");
}

/// The sealer's chain rows as multi-row `INSERT ... VALUES` of at most 1,000 rows, each routed
/// to the tenant's shard.
pub fn insert_chain(
    client: &mut pgrx::spi::SpiClient<'_>,
    tenant: pgrx::Uuid,
    ids: &[i64],
    hashes: &[Vec<u8>],
) {
    for (ids, hashes) in ids.chunks(1000).zip(hashes.chunks(1000)) {
        let values: Vec<String> = (0..ids.len())
            .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let mut args: Vec<pgrx::datum::DatumWithOid> = vec![tenant.into()];
        for (id, h) in ids.iter().zip(hashes) {
            args.push((*id).into());
            args.push(h.clone().into());
        }
        client
            .update(
                &format!(
                    "INSERT INTO voucher.audit_chain (tenant_id, event_id, chain_hash) VALUES {}",
                    values.join(", ")
                ),
                None,
                &args,
            )
            .expect("chain insert");
    }
}

/// `generate_codes`' chunk as multi-row `INSERT ... VALUES` of at most 1,000 rows of literals,
/// each routed to the tenant's shard (with parameters in its rows Citus would plan it as an
/// INSERT ... SELECT and COPY the rows, which RLS refuses). Literals are quoted by PostgreSQL's
/// own `quote_literal` rules: single quotes doubled, standard_conforming_strings assumed on, as
/// PostgreSQL has defaulted to since 9.1; a backslash-bearing value gets the E'' form.
pub fn insert_codes(
    client: &mut pgrx::spi::SpiClient<'_>,
    tenant: pgrx::Uuid,
    campaign: pgrx::Uuid,
    balance: &Option<AnyNumeric>,
    ids: &[pgrx::Uuid],
    codes: &[String],
    displays: &[Option<String>],
) {
    fn lit(s: &str) -> String {
        let q = s.replace('\'', "''");
        if q.contains('\\') {
            format!("E'{}'", q.replace('\\', "\\\\"))
        } else {
            format!("'{q}'")
        }
    }
    let balance = balance
        .as_ref()
        .map(|b| format!("{b}::numeric"))
        .unwrap_or_else(|| "NULL::numeric".into());
    for start in (0..codes.len()).step_by(1000) {
        let end = (start + 1000).min(codes.len());
        let values: Vec<String> = (start..end)
            .map(|i| {
                format!(
                    "('{tenant}'::uuid, '{}'::uuid, '{campaign}'::uuid, {}, {}, {balance})",
                    ids[i],
                    lit(&codes[i]),
                    displays[i]
                        .as_deref()
                        .map(lit)
                        .unwrap_or_else(|| "NULL".into())
                )
            })
            .collect();
        client
            .update(
                &format!(
                    "INSERT INTO voucher.code (tenant_id, voucher_id, campaign_id, code, display, \
                                               balance) VALUES {}",
                    values.join(", ")
                ),
                None,
                &[],
            )
            .expect("code insert");
    }
}

/// The xmin of this node's snapshot (the coordinator's, where the audit writers run).
pub fn local_xmin(client: &mut pgrx::spi::SpiClient<'_>) -> i64 {
    client
        .update(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            None,
            &[],
        )
        .expect("snapshot xmin")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn claims() -> Claims {
        Claims {
            tenant: [7; 16],
            key_id: Some([9; 16]),
            role: "redeemer".into(),
            operator: None,
            expires_us: 1_900_000_000_000_000,
            txn: DistTxn {
                initiator: 0,
                number: 42,
                stamp: 812_345_678_901_234,
            },
        }
    }

    #[test]
    fn a_token_round_trips_under_its_key() {
        let key = [1u8; KEY_BYTES];
        let t = encode(&claims(), &key);
        assert_eq!(decode(&t, &key), Some(claims()));
        let mut op = claims();
        op.key_id = None;
        op.operator = Some(16384);
        op.role = "admin".into();
        assert_eq!(decode(&encode(&op, &key), &key), Some(op));
    }

    #[test]
    fn forged_tokens_are_refused() {
        let key = [1u8; KEY_BYTES];
        let t = encode(&claims(), &key);
        // another key
        assert_eq!(decode(&t, &[2u8; KEY_BYTES]), None);
        // every single changed character of the payload or the tag
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(b).unwrap();
            if forged != t {
                assert_eq!(decode(&forged, &key), None, "changed at {i}");
            }
        }
        // another tenant, re-using the tag
        let mut other = claims();
        other.tenant = [8; 16];
        let (_, tag) = t.rsplit_once('.').unwrap();
        let (payload, _) = encode(&other, &key)
            .rsplit_once('.')
            .map(|(p, g)| (p.to_string(), g.to_string()))
            .unwrap();
        assert_eq!(decode(&format!("{payload}.{tag}"), &key), None);
        assert_eq!(decode("", &key), None);
        assert_eq!(decode("v1", &key), None);
    }
}
