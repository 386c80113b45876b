//! The key hierarchy, pure Rust (no Postgres).
//!
//! ```text
//! master key (file beside the audit key, or printed by voucher.master_key_command)
//!  └─ wraps every tenant key (voucher.tenant_key.wrapped, AES-256-GCM, AAD = tenant + key id)
//!      ├─ data key   --HKDF "aes-256-gcm"--> encrypts personal fields; wraps customer keys
//!      │   └─ customer key (voucher.customer.audit_key): that customer's personal data in audit rows
//!      └─ index key  --HKDF "blind-index/<field>"--> HMAC-SHA256 blind indexes (source_id, email)
//!                    --HKDF "request-hash"--> HMAC-SHA256 of redeem requests (idempotency)
//! ```
//!
//! Tenant key material is 32 random bytes. It is never used directly: each use gets its own
//! key derived with HKDF-SHA256 (salt: the tenant id, info: the purpose), so the blind-index keys
//! reveal nothing about the encryption key and one tenant's keys nothing about another's.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::{self, Aad, EnvelopeError, Key};

/// Encryptions allowed under one data key before it must be rotated. NIST SP 800-38D bounds
/// random 96-bit nonces at 2^32 invocations per key; we stop at half of that.
pub const ENCRYPTION_LIMIT: i64 = 1 << 31;

/// What a derived key is for; the HKDF info string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// AES-256-GCM key of a tenant's data key.
    Encrypt,
    /// HMAC key of the source_id blind index.
    SourceIndex,
    /// HMAC key of the email blind index.
    EmailIndex,
    /// HMAC key of the idempotency fingerprints of redeem requests (redemption.request_hash).
    RequestHash,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::Encrypt => b"voucher_ext/1/aes-256-gcm",
            Purpose::SourceIndex => b"voucher_ext/1/blind-index/source_id",
            Purpose::EmailIndex => b"voucher_ext/1/blind-index/email",
            Purpose::RequestHash => b"voucher_ext/1/request-hash",
        }
    }
}

/// A fresh 32-byte key from the OS CSPRNG.
pub fn random_key() -> Key {
    let mut k = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut k[..]).expect("the OS CSPRNG is available");
    k
}

/// The key for `purpose` derived from tenant key material.
pub fn derive(material: &[u8; 32], tenant: &[u8; 16], purpose: Purpose) -> Key {
    let hk = Hkdf::<Sha256>::new(Some(tenant), material);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(purpose.info(), &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// The blind index of a value: HMAC-SHA256 under a field's index key.
pub fn blind_index(field_key: &[u8; 32], value: &str) -> Vec<u8> {
    blind_index_bytes(field_key, value.as_bytes())
}

/// HMAC-SHA256 of bytes under a derived key.
pub fn blind_index_bytes(field_key: &[u8; 32], value: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256>>::new_from_slice(field_key).expect("HMAC takes any key length");
    m.update(value);
    m.finalize().into_bytes().to_vec()
}

/// The form of an email address that look-ups compare: trimmed, lower case.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A non-secret name for a master key: 8 bytes of an HMAC under it, as 16 hex digits. Stored
/// beside every key it wraps, so the right master key is found and a wrong file is recognised.
pub fn master_fingerprint(master: &[u8; 32]) -> String {
    let mut m = <Hmac<Sha256>>::new_from_slice(master).expect("HMAC takes any key length");
    m.update(b"voucher_ext/1/master-key-fingerprint");
    hex(&m.finalize().into_bytes()[..8])
}

/// The envelope key id of a master key: the first 4 bytes of its fingerprint.
pub fn master_key_id(fingerprint: &str) -> u32 {
    u32::from_str_radix(&fingerprint[..8], 16).unwrap_or(0)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses the master key file (or the output of the master key command): one key per line,
/// 64 hex digits; blank lines and `#` comments are ignored. The last key is the newest.
/// Errors never quote the file's content.
pub fn parse_master_keys(text: &str) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "line {} is not a key (64 hexadecimal digits)",
                n + 1
            ));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        for (i, chunk) in line.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).expect("ascii");
            k[i] = u8::from_str_radix(s, 16).expect("checked hex");
        }
        keys.push(k);
    }
    if keys.is_empty() {
        return Err("it holds no key".into());
    }
    Ok(keys)
}

/// One line of the master key file for `key`.
pub fn master_key_line(key: &[u8; 32]) -> Zeroizing<String> {
    Zeroizing::new(hex(key))
}

/// Wraps tenant key material under a master key, bound to the tenant and the key's id.
pub fn wrap_tenant_key(
    master: &[u8; 32],
    tenant: &[u8; 16],
    key_id: i32,
    material: &[u8; 32],
) -> Vec<u8> {
    let row = key_id.to_string();
    let aad = Aad {
        tenant: *tenant,
        table: "tenant_key",
        column: "wrapped",
        row: &row,
    };
    envelope::seal(
        master,
        master_key_id(&master_fingerprint(master)),
        &aad,
        material,
    )
}

/// Unwraps what [`wrap_tenant_key`] made.
pub fn unwrap_tenant_key(
    master: &[u8; 32],
    tenant: &[u8; 16],
    key_id: i32,
    wrapped: &[u8],
) -> Result<Key, EnvelopeError> {
    let row = key_id.to_string();
    let aad = Aad {
        tenant: *tenant,
        table: "tenant_key",
        column: "wrapped",
        row: &row,
    };
    to_key(envelope::open(master, &aad, wrapped)?)
}

/// Wraps a customer key under the tenant's data key (its derived encryption key), bound to the
/// tenant and the customer's row.
pub fn wrap_customer_key(
    data_key: &[u8; 32],
    data_key_id: i32,
    tenant: &[u8; 16],
    customer: &str,
    material: &[u8; 32],
) -> Vec<u8> {
    let aad = Aad {
        tenant: *tenant,
        table: "customer",
        column: "audit_key",
        row: customer,
    };
    envelope::seal(data_key, data_key_id as u32, &aad, material)
}

pub fn unwrap_customer_key(
    data_key: &[u8; 32],
    tenant: &[u8; 16],
    customer: &str,
    wrapped: &[u8],
) -> Result<Key, EnvelopeError> {
    let aad = Aad {
        tenant: *tenant,
        table: "customer",
        column: "audit_key",
        row: customer,
    };
    to_key(envelope::open(data_key, &aad, wrapped)?)
}

/// Personal data of one customer inside an audit row, sealed under that customer's key and bound
/// to the tenant and customer (issue 15 forgets a customer by destroying the key).
pub fn seal_audit_personal(
    customer_key: &[u8; 32],
    tenant: &[u8; 16],
    customer: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    envelope::seal(customer_key, 0, &audit_aad(tenant, customer), plaintext)
}

/// Opens what [`seal_audit_personal`] made. For `export_customer` (issue 15, not written yet).
#[allow(dead_code)]
pub fn open_audit_personal(
    customer_key: &[u8; 32],
    tenant: &[u8; 16],
    customer: &str,
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    envelope::open(customer_key, &audit_aad(tenant, customer), ct)
}

fn audit_aad<'a>(tenant: &[u8; 16], customer: &'a str) -> Aad<'a> {
    Aad {
        tenant: *tenant,
        table: "audit_event",
        column: "personal",
        row: customer,
    }
}

fn to_key(v: Zeroizing<Vec<u8>>) -> Result<Key, EnvelopeError> {
    if v.len() != 32 {
        return Err(EnvelopeError::Authentication);
    }
    let mut k = Zeroizing::new([0u8; 32]);
    k.copy_from_slice(&v);
    Ok(k)
}

#[cfg(test)]
mod unit {
    use super::*;

    const T1: [u8; 16] = [1u8; 16];
    const T2: [u8; 16] = [2u8; 16];

    #[test]
    fn derived_keys_differ_by_purpose_and_tenant_and_never_equal_the_material() {
        let m = [5u8; 32];
        let e = derive(&m, &T1, Purpose::Encrypt);
        let s = derive(&m, &T1, Purpose::SourceIndex);
        let x = derive(&m, &T1, Purpose::EmailIndex);
        let r = derive(&m, &T1, Purpose::RequestHash);
        let e2 = derive(&m, &T2, Purpose::Encrypt);
        assert_ne!(*e, *s);
        assert_ne!(*s, *x);
        assert_ne!(*r, *s);
        assert_ne!(*r, *x);
        assert_ne!(*r, *e);
        assert_ne!(*r, *derive(&m, &T2, Purpose::RequestHash));
        assert_ne!(*e, *e2);
        assert_ne!(*e, m);
        assert_eq!(*e, *derive(&m, &T1, Purpose::Encrypt));
    }

    #[test]
    fn blind_indexes_are_deterministic_per_key() {
        let k1 = derive(&[5u8; 32], &T1, Purpose::EmailIndex);
        let k2 = derive(&[5u8; 32], &T2, Purpose::EmailIndex);
        let a = blind_index(&k1, &normalize_email("  Anna@Example.COM "));
        assert_eq!(a, blind_index(&k1, "anna@example.com"));
        assert_ne!(a, blind_index(&k2, "anna@example.com"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn master_key_file_parsing() {
        let k = [0xabu8; 32];
        let text = format!(
            "# voucher_ext master keys\n\n{}\n{}\n",
            hex(&[1u8; 32]),
            hex(&k)
        );
        let keys = parse_master_keys(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(*keys[1], k);
        assert!(parse_master_keys("").is_err());
        let e = parse_master_keys("deadbeef\n").unwrap_err();
        assert!(!e.contains("deadbeef"), "errors never quote the file");
        assert_eq!(master_key_line(&k).as_str(), hex(&k));
    }

    #[test]
    fn fingerprints_name_keys_without_revealing_them() {
        let f = master_fingerprint(&[3u8; 32]);
        assert_eq!(f.len(), 16);
        assert_ne!(f, master_fingerprint(&[4u8; 32]));
        assert!(!hex(&[3u8; 32]).contains(&f));
        assert_eq!(master_key_id(&f), u32::from_str_radix(&f[..8], 16).unwrap());
    }

    #[test]
    fn tenant_keys_wrap_and_bind_to_tenant_and_id() {
        let master = [9u8; 32];
        let material = [6u8; 32];
        let w = wrap_tenant_key(&master, &T1, 17, &material);
        assert_eq!(*unwrap_tenant_key(&master, &T1, 17, &w).unwrap(), material);
        assert!(unwrap_tenant_key(&master, &T2, 17, &w).is_err());
        assert!(unwrap_tenant_key(&master, &T1, 18, &w).is_err());
        assert!(unwrap_tenant_key(&[8u8; 32], &T1, 17, &w).is_err());
    }

    #[test]
    fn audit_personal_data_opens_only_with_its_customer_key() {
        let ck = [4u8; 32];
        let ct = seal_audit_personal(&ck, &T1, "c1", b"{\"customer\": \"anna\"}");
        assert_eq!(
            &open_audit_personal(&ck, &T1, "c1", &ct).unwrap()[..],
            b"{\"customer\": \"anna\"}"
        );
        assert!(open_audit_personal(&ck, &T1, "c2", &ct).is_err());
        assert!(open_audit_personal(&ck, &T2, "c1", &ct).is_err());
        // a destroyed (lost) key: another key opens nothing
        assert!(open_audit_personal(&[5u8; 32], &T1, "c1", &ct).is_err());
    }

    #[test]
    fn customer_keys_wrap_under_the_data_key() {
        let dk = derive(&[6u8; 32], &T1, Purpose::Encrypt);
        let ck = [4u8; 32];
        let w = wrap_customer_key(&dk, 3, &T1, "c1", &ck);
        assert_eq!(envelope::key_id(&w), Ok(3));
        assert_eq!(*unwrap_customer_key(&dk, &T1, "c1", &w).unwrap(), ck);
        assert!(unwrap_customer_key(&dk, &T1, "c2", &w).is_err());
    }
}
