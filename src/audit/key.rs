//! The audit key: a file outside the database (`voucher.audit_key_file`), created on first use,
//! never in SQL text; only its fingerprint is ever shown or stored.

use std::cell::RefCell;
use std::ffi::CStr;

use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use sha2::{Digest, Sha256};

use super::hash::Keyed;
use crate::common::error::{Result, VoucherError};
use crate::common::gucs;
use crate::common::rng;

pub type HmacSha256 = Hmac<Sha256>;

pub const KEY_BYTES: usize = 32;

thread_local! {
    /// The audit key file's path, the key, and the key ready to MAC.
    static KEY: RefCell<Option<(String, [u8; KEY_BYTES], Keyed)>> = const { RefCell::new(None) };
}

pub fn key_path() -> String {
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
pub fn load_key(path: &str) -> std::result::Result<[u8; KEY_BYTES], String> {
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
pub fn with_key<R>(f: impl FnOnce(&[u8; KEY_BYTES], &Keyed) -> R) -> Result<R> {
    let path = key_path();
    let (key, keyed) = KEY.with(|k| {
        let mut k = k.borrow_mut();
        if !matches!(&*k, Some((p, _, _)) if *p == path) {
            // scale: a key made on a standby would not be the primary's (the file is not in the WAL)
            if crate::scale::standby::in_recovery() && !std::path::Path::new(&path).exists() {
                return Err(VoucherError::NotReady(format!(
                    "audit key file \"{path}\" is missing on this standby: copy it from the primary"
                )));
            }
            let key = load_key(&path).map_err(VoucherError::NotReady)?;
            *k = Some((path, key, Keyed::new(&key)));
        }
        let (_, key, keyed) = k.as_ref().expect("just loaded");
        Ok::<_, VoucherError>((*key, keyed.clone()))
    })?;
    Ok(f(&key, &keyed))
}

pub fn mac(key: &[u8; KEY_BYTES]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// HMAC-SHA256 under the audit key over `domain` and length-prefixed `parts`: keyed
/// fingerprints of identities that must not be stored in plaintext (src/throttle/).
pub fn keyed_digest(domain: &str, parts: &[&[u8]]) -> Result<[u8; 32]> {
    use hmac::Mac;
    with_key(|key, _| {
        let mut m = mac(key);
        for p in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    })
}

/// The audit key file's path and the key's fingerprint (loading or creating the key), for
/// `voucher.key_fingerprints()`.
pub fn key_identity() -> Result<(String, String)> {
    with_key(|key, _| (key_path(), fingerprint(key)))
}

/// Identifies the key without revealing it.
pub fn fingerprint(key: &[u8; KEY_BYTES]) -> String {
    let d = Sha256::digest([b"voucher_ext audit key id\0".as_slice(), key].concat());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}
