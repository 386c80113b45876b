//! Tenant keys in `voucher.tenant_key`, unwrapped on demand and cached per backend, and the
//! encrypt / decrypt / blind-index operations the rest of the extension calls. Every function
//! here runs inside an SPI connection of the caller, as `voucher_definer` with RLS on the tenant.
//!
//! Only derived keys are cached (the encryption key of each data key, the two blind-index keys of
//! each tenant), in `Zeroizing` buffers. Encryptions are counted per data key in blocks reserved
//! ahead (one UPDATE of the key's row per `BLOCK` encryptions per backend).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{pg_shmem_init, PgAtomic};

use super::envelope::{self, Aad, EnvelopeError, Key};
use super::keyring::{self, Purpose, ENCRYPTION_LIMIT};
use super::master;
use crate::common::error::{Result, VoucherError};
use crate::tenancy::context;

/// Encryptions reserved per backend at a time.
const BLOCK: i64 = 1000;

type Tenant = [u8; 16];

struct Active {
    key_id: i32,
    left: i64,
    /// When it was last known to be the active key (see [`KEY_GENERATION`]).
    checked: Instant,
}

/// Bumped whenever a data key stops being the one to encrypt under (superseded by a rotation,
/// destroyed): every backend then drops its cached keys and reservations before its next use,
/// so a cached block never outlives its key. Without shared memory (not preloaded) a reserved
/// block older than a second is checked against `voucher.tenant_key` before it is used again.
static KEY_GENERATION: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"voucher_ext crypto key generation") };
static mut SHARED: bool = false;

/// How long a reserved block is trusted without the shared counter.
const UNSHARED_TRUST: Duration = Duration::from_secs(1);

thread_local! {
    /// The generation the caches were filled at.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

fn shared() -> bool {
    // SAFETY: set once at load time.
    unsafe { SHARED }
}

/// From `_PG_init`.
pub fn init_shmem() {
    // SAFETY: reads a postmaster flag during library load.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(KEY_GENERATION);
        // SAFETY: written once, in the postmaster, before any backend exists.
        unsafe { SHARED = true };
    }
}

/// Tells every backend that cached keys may be stale (see [`KEY_GENERATION`]).
pub fn keys_changed() {
    if shared() {
        KEY_GENERATION.get().fetch_add(1, Ordering::AcqRel);
    }
    forget_cached_keys();
}

/// Drops this backend's caches if another backend changed the keys since they were filled.
fn revalidate() {
    if !shared() {
        return;
    }
    let now = KEY_GENERATION.get().load(Ordering::Acquire);
    if SEEN.with(|s| s.replace(now)) != now {
        forget_cached_keys();
    }
}

/// Without the shared counter: is this reserved key still the tenant's active data key?
fn still_active(client: &SpiClient<'_>, tenant: &Tenant, key_id: i32) -> bool {
    !kept(
        client,
        "SELECT 1 FROM voucher.tenant_key WHERE tenant_id = $1 AND key_id = $2 \
            AND kind = 'data' AND state = 'active' AND superseded_by IS NULL",
        &[pg_sys::UUIDOID, pg_sys::INT4OID],
        &[uuid(tenant).into(), key_id.into()],
    )
    .is_empty()
}

/// A tenant's blind-index keys.
pub struct IndexKeys {
    pub source: Key,
    pub email: Key,
    pub request: Key,
}

thread_local! {
    /// (tenant, data key id) -> the key's derived AES-256-GCM key.
    static DATA: RefCell<HashMap<(Tenant, i32), Rc<Key>>> = RefCell::new(HashMap::new());
    static INDEX: RefCell<HashMap<Tenant, Rc<IndexKeys>>> = RefCell::new(HashMap::new());
    static ACTIVE: RefCell<HashMap<Tenant, Active>> = RefCell::new(HashMap::new());
    /// Tenants whose keys this transaction created: if it (or a subtransaction) rolls back, those
    /// keys never existed, and a cached copy must not outlive them.
    static FRESH: RefCell<Vec<Tenant>> = const { RefCell::new(Vec::new()) };
}

/// At the end of a transaction or subtransaction. After a rollback, reservations are gone (the
/// counter's UPDATE rolled back) and keys made in it never existed: forget both.
pub fn end_of_transaction(committed: bool, top_level: bool) {
    if !committed {
        ACTIVE.with(|a| a.borrow_mut().clear());
        let fresh = FRESH.with(|f| f.borrow().clone());
        for t in fresh {
            INDEX.with(|i| i.borrow_mut().remove(&t));
            DATA.with(|d| d.borrow_mut().retain(|(tenant, _), _| *tenant != t));
        }
    }
    if top_level {
        FRESH.with(|f| f.borrow_mut().clear());
    }
}

/// Forget every cached key (after a rotation or a destruction).
pub fn forget_cached_keys() {
    DATA.with(|d| d.borrow_mut().clear());
    INDEX.with(|i| i.borrow_mut().clear());
    ACTIVE.with(|a| a.borrow_mut().clear());
}

thread_local! {
    /// The hot statements of this capability, prepared once per backend, keyed by where their
    /// text is (see [`kept`]).
    static KEPT: RefCell<HashMap<(usize, usize), pgrx::spi::OwnedPreparedStatement>> =
        RefCell::new(HashMap::new());
}

/// Runs a statement prepared once per backend and kept (a fresh snapshot each time).
///
/// The statement is found by its text's address and length, not by the text: hashing a
/// statement of a kilobyte twice per call was about 2 % of `upsert_customer` (callgrind,
/// issue 14). The same address and length are the same text, so no two statements share an
/// entry; a text the compiler placed twice is prepared twice, which costs a plan, not a result.
/// The map is not borrowed while the statement runs: a function it calls may run kept
/// statements too.
pub fn kept<'c>(
    client: &SpiClient<'c>,
    sql: &'static str,
    types: &[pgrx::pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid],
) -> pgrx::spi::SpiTupleTable<'c> {
    let at = (sql.as_ptr() as usize, sql.len());
    let mut slot = KEPT.with(|k| k.borrow_mut().remove(&at));
    let table = crate::common::spi::run_kept(
        client,
        &mut slot,
        || sql.to_string(),
        types,
        true,
        None,
        args,
    );
    if let Some(st) = slot {
        KEPT.with(|k| k.borrow_mut().insert(at, st));
    }
    table
}

pub fn uuid(t: &Tenant) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*t)
}

/// The fingerprint of a master key some tenant key in this database is wrapped under, if any:
/// then a missing master key file is a lost key, not a first use.
fn wrapped_under_any_master() -> Option<String> {
    for t in context::all_tenants() {
        let fp = context::as_tenant_definer(context::uuid_bytes(&t), || {
            Spi::get_one_with_args::<String>(
                "SELECT master_key_id FROM voucher.tenant_key \
                  WHERE tenant_id = $1 AND wrapped IS NOT NULL LIMIT 1",
                &[t.into()],
            )
            .ok()
            .flatten()
        });
        if fp.is_some() {
            return fp;
        }
    }
    None
}

pub fn ring(reload: bool) -> Result<Rc<master::Ring>> {
    super::logcheck::warn_once();
    master::ring(reload, wrapped_under_any_master)
}

/// Wraps new key material under the newest master key: (master fingerprint, wrapped).
fn wrap(tenant: &Tenant, key_id: i32, material: &[u8; 32]) -> Result<(String, Vec<u8>)> {
    let r = ring(false)?;
    let (fp, mk) = r.newest();
    Ok((
        fp.to_string(),
        keyring::wrap_tenant_key(mk, tenant, key_id, material),
    ))
}

/// Re-wraps a tenant key under the newest master key: (its fingerprint, the new wrapping).
pub fn rewrap(
    tenant: &Tenant,
    key_id: i32,
    master_fp: &str,
    wrapped: &[u8],
) -> Result<(String, Vec<u8>)> {
    let material = unwrap(tenant, key_id, master_fp, wrapped)?;
    wrap(tenant, key_id, &material)
}

fn unwrap(tenant: &Tenant, key_id: i32, master_fp: &str, wrapped: &[u8]) -> Result<Key> {
    let mut r = ring(false)?;
    if r.get(master_fp).is_none() {
        r = ring(true)?;
    }
    let Some(mk) = r.get(master_fp) else {
        let place = master::file_path()
            .map(|p| format!("master key file \"{p}\""))
            .unwrap_or_else(|| "output of voucher.master_key_command".into());
        return Err(VoucherError::NotReady(format!(
            "voucher_ext: {place} does not hold master key {master_fp}, which tenant key {key_id} is wrapped under"
        )));
    };
    keyring::unwrap_tenant_key(mk, tenant, key_id, wrapped).map_err(|_| {
        VoucherError::Corrupted {
            message: format!(
                "voucher_ext: wrapped tenant key {key_id} in voucher.tenant_key failed authentication under master key {master_fp}"
            ),
            detail: "the wrapped key was changed or copied from another tenant or key id".into(),
        }
    })
}

/// Creates the tenant's index and data keys if it has none yet (on first use).
fn ensure_keys(client: &mut SpiClient<'_>, tenant: &Tenant) -> Result<()> {
    let have: i64 = client
        .select(
            "SELECT count(*) FROM voucher.tenant_key \
              WHERE tenant_id = $1 AND state = 'active' AND superseded_by IS NULL",
            None,
            &[uuid(tenant).into()],
        )
        .expect("tenant key count")
        .first()
        .get_one::<i64>()
        .ok()
        .flatten()
        .unwrap_or(0);
    if have >= 2 {
        return Ok(());
    }
    for kind in ["index", "data"] {
        new_key(client, tenant, kind, true)?;
    }
    Ok(())
}

/// Makes a fresh tenant key of `kind`, active. With `if_missing`, only when the tenant has no
/// active key of that kind (concurrent first uses agree on one). Returns its id, if made.
pub fn new_key(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    kind: &str,
    if_missing: bool,
) -> Result<Option<i32>> {
    let key_id = next_key_id(client);
    insert_key(client, tenant, key_id, kind, if_missing)
}

/// A fresh tenant key id.
pub fn next_key_id(client: &mut SpiClient<'_>) -> i32 {
    client
        .update(
            "SELECT nextval('voucher.tenant_key_id_seq')::integer",
            None,
            &[],
        )
        .expect("key id")
        .first()
        .get_one::<i32>()
        .ok()
        .flatten()
        .expect("nextval")
}

/// Inserts a fresh key with a given id (see [`new_key`]).
pub fn insert_key(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    key_id: i32,
    kind: &str,
    if_missing: bool,
) -> Result<Option<i32>> {
    crate::tenancy::context::hold_tenant(client, *tenant)?;
    let material = keyring::random_key();
    let (fp, wrapped) = wrap(tenant, key_id, &material)?;
    let conflict = if if_missing {
        "ON CONFLICT (tenant_id, kind) WHERE state = 'active' AND superseded_by IS NULL DO NOTHING"
    } else {
        ""
    };
    let made = client
        .update(
            &format!(
                "INSERT INTO voucher.tenant_key (tenant_id, key_id, kind, master_key_id, wrapped) \
                 VALUES ($1, $2, $3, $4, $5) {conflict} RETURNING key_id"
            ),
            None,
            &[
                uuid(tenant).into(),
                key_id.into(),
                kind.into(),
                fp.as_str().into(),
                wrapped.into(),
            ],
        )
        .expect("tenant key insert");
    if made.is_empty() {
        return Ok(None);
    }
    FRESH.with(|f| f.borrow_mut().push(*tenant));
    Ok(Some(key_id))
}

/// The tenant's blind-index keys if it has any yet (no SPI once cached: the redemption path's
/// look-up). Read-only, for validate.
pub fn index_keys_read(client: &SpiClient<'_>, tenant: &Tenant) -> Result<Option<Rc<IndexKeys>>> {
    if let Some(k) = INDEX.with(|i| i.borrow().get(tenant).cloned()) {
        return Ok(Some(k));
    }
    let row = client
        .select(
            "SELECT key_id, master_key_id, wrapped FROM voucher.tenant_key \
              WHERE tenant_id = $1 AND kind = 'index' AND state = 'active' \
                AND superseded_by IS NULL",
            None,
            &[uuid(tenant).into()],
        )
        .expect("index key")
        .first()
        .get_three::<i32, String, Vec<u8>>()
        .ok();
    let Some((Some(id), Some(fp), Some(w))) = row else {
        return Ok(None);
    };
    let material = unwrap(tenant, id, &fp, &w)?;
    let keys = Rc::new(IndexKeys {
        source: keyring::derive(&material, tenant, Purpose::SourceIndex),
        email: keyring::derive(&material, tenant, Purpose::EmailIndex),
        request: keyring::derive(&material, tenant, Purpose::RequestHash),
    });
    INDEX.with(|i| i.borrow_mut().insert(*tenant, keys.clone()));
    Ok(Some(keys))
}

/// The tenant's blind-index keys if this backend has them cached (no SPI).
pub fn index_keys_cached(tenant: &Tenant) -> Option<Rc<IndexKeys>> {
    INDEX.with(|i| i.borrow().get(tenant).cloned())
}

/// The tenant's blind-index keys, made on first use.
pub fn index_keys(client: &mut SpiClient<'_>, tenant: &Tenant) -> Result<Rc<IndexKeys>> {
    if let Some(k) = index_keys_read(client, tenant)? {
        return Ok(k);
    }
    ensure_keys(client, tenant)?;
    index_keys_read(client, tenant)?
        .ok_or_else(|| VoucherError::NotReady("voucher_ext: the tenant has no index key".into()))
}

pub fn source_index(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    source_id: &str,
) -> Result<Vec<u8>> {
    Ok(keyring::blind_index(
        &index_keys(client, tenant)?.source,
        source_id,
    ))
}

pub fn email_index(client: &mut SpiClient<'_>, tenant: &Tenant, email: &str) -> Result<Vec<u8>> {
    Ok(keyring::blind_index(
        &index_keys(client, tenant)?.email,
        &keyring::normalize_email(email),
    ))
}

/// The AES key of data key `key_id` (for decrypting, or encrypting under a reserved key).
pub fn data_key(client: &mut SpiClient<'_>, tenant: &Tenant, key_id: i32) -> Result<Rc<Key>> {
    revalidate();
    if let Some(k) = DATA.with(|d| d.borrow().get(&(*tenant, key_id)).cloned()) {
        return Ok(k);
    }
    let row = client
        .select(
            "SELECT state, master_key_id, wrapped FROM voucher.tenant_key \
              WHERE tenant_id = $1 AND key_id = $2 AND kind = 'data'",
            None,
            &[uuid(tenant).into(), key_id.into()],
        )
        .expect("data key")
        .first()
        .get_three::<String, String, Vec<u8>>()
        .ok();
    let (fp, wrapped) = match row {
        Some((_, Some(fp), Some(w))) => (fp, w),
        Some((Some(state), _, _)) if state == "destroyed" => {
            return Err(VoucherError::NotReady(format!(
                "voucher_ext: data key {key_id} was destroyed: what it encrypted is gone"
            )))
        }
        _ => return Err(EnvelopeError::Authentication).map_err(|_| unknown_key(key_id)),
    };
    let material = unwrap(tenant, key_id, &fp, &wrapped)?;
    let key = Rc::new(keyring::derive(&material, tenant, Purpose::Encrypt));
    DATA.with(|d| d.borrow_mut().insert((*tenant, key_id), key.clone()));
    Ok(key)
}

fn unknown_key(key_id: i32) -> VoucherError {
    VoucherError::Corrupted {
        message: format!(
            "voucher_ext: ciphertext names data key {key_id}, which this tenant does not have"
        ),
        detail: "it was copied from another tenant or changed".into(),
    }
}

/// Reserves one encryption under the tenant's active data key: its id and AES key.
pub fn reserve(client: &mut SpiClient<'_>, tenant: &Tenant) -> Result<(i32, Rc<Key>)> {
    reserve_for(client, tenant, 1)
}

/// Reserves `n` (at most `BLOCK`) encryptions under the tenant's active data key: the fields
/// of one row, all under the same key.
pub fn reserve_for(client: &mut SpiClient<'_>, tenant: &Tenant, n: i64) -> Result<(i32, Rc<Key>)> {
    debug_assert!((1..=BLOCK).contains(&n));
    revalidate();
    let hit = ACTIVE.with(|a| {
        a.borrow()
            .get(tenant)
            .filter(|act| act.left >= n)
            .map(|act| (act.key_id, act.checked))
    });
    if let Some((id, checked)) = hit {
        let check = !shared() && checked.elapsed() >= UNSHARED_TRUST;
        if !check || still_active(client, tenant, id) {
            ACTIVE.with(|a| {
                if let Some(act) = a.borrow_mut().get_mut(tenant) {
                    act.left -= n;
                    if check {
                        act.checked = Instant::now();
                    }
                }
            });
            return Ok((id, data_key(client, tenant, id)?));
        }
        forget_cached_keys();
    }
    let sql = "UPDATE voucher.tenant_key SET encryptions = encryptions + $2 \
                WHERE tenant_id = $1 AND kind = 'data' AND state = 'active' \
                  AND superseded_by IS NULL \
               RETURNING key_id, encryptions";
    let mut row = client
        .update(sql, None, &[uuid(tenant).into(), BLOCK.into()])
        .expect("encryption reservation")
        .first()
        .get_two::<i32, i64>()
        .ok();
    if !matches!(row, Some((Some(_), Some(_)))) {
        ensure_keys(client, tenant)?;
        row = client
            .update(sql, None, &[uuid(tenant).into(), BLOCK.into()])
            .expect("encryption reservation")
            .first()
            .get_two::<i32, i64>()
            .ok();
    }
    let Some((Some(key_id), Some(count))) = row else {
        return Err(VoucherError::NotReady(
            "voucher_ext: the tenant has no data key".into(),
        ));
    };
    if count > ENCRYPTION_LIMIT {
        return Err(VoucherError::NotReady(format!(
            "voucher_ext: data key {key_id} reached its limit of {ENCRYPTION_LIMIT} encryptions; run voucher.rotate_data_key() to move to a fresh key"
        )));
    }
    ACTIVE.with(|a| {
        a.borrow_mut().insert(
            *tenant,
            Active {
                key_id,
                left: BLOCK - n,
                checked: Instant::now(),
            },
        )
    });
    Ok((key_id, data_key(client, tenant, key_id)?))
}

/// Where a ciphertext lives: for its associated data and for error messages.
#[derive(Clone, Copy)]
pub struct Place<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Place<'_> {
    fn aad(&self, tenant: &Tenant) -> Aad<'_> {
        Aad {
            tenant: *tenant,
            table: self.table,
            column: self.column,
            row: self.row,
        }
    }

    pub fn failed(&self, why: &EnvelopeError) -> VoucherError {
        let detail = match why {
            EnvelopeError::Authentication => {
                "it was changed, copied from another row or tenant, or made with another key"
                    .to_string()
            }
            other => other.to_string(),
        };
        VoucherError::Corrupted {
            message: format!(
                "voucher_ext: ciphertext in voucher.{}.{} of row {} failed authentication",
                self.table, self.column, self.row
            ),
            detail,
        }
    }
}

/// Encrypts under an already reserved key.
pub fn seal_with(
    key_id: i32,
    key: &Key,
    tenant: &Tenant,
    place: Place,
    plaintext: &[u8],
) -> Vec<u8> {
    envelope::seal(key, key_id as u32, &place.aad(tenant), plaintext)
}

/// Decrypts a ciphertext stored at `place`, with whichever data key it names.
pub fn open(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    place: Place,
    ct: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let key_id = envelope::key_id(ct).map_err(|e| place.failed(&e))?;
    let key_id = i32::try_from(key_id).map_err(|_| place.failed(&EnvelopeError::Authentication))?;
    let key = match data_key(client, tenant, key_id) {
        Ok(k) => k,
        Err(VoucherError::Corrupted { .. }) => {
            return Err(place.failed(&EnvelopeError::Authentication))
        }
        Err(e) => return Err(e),
    };
    envelope::open(&key, &place.aad(tenant), ct).map_err(|e| place.failed(&e))
}

/// Decrypts to text.
pub fn open_text(
    client: &mut SpiClient<'_>,
    tenant: &Tenant,
    place: Place,
    ct: &[u8],
) -> Result<String> {
    let p = open(client, tenant, place, ct)?;
    String::from_utf8(p.to_vec()).map_err(|_| place.failed(&EnvelopeError::Authentication))
}
