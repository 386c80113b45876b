//! The ciphertext format, pure Rust (no Postgres): AES-256-GCM with a fresh 96-bit nonce per
//! encryption and associated data binding the value to where it is stored.
//!
//! ```text
//! byte 0      version (1)
//! bytes 1..5  id of the key it was sealed with (big-endian u32)
//! bytes 5..17 nonce (96 bits from the OS CSPRNG)
//! bytes 17..  ciphertext || 128-bit tag
//! ```
//!
//! The header (version and key id) is authenticated too: the GCM associated data is the header
//! followed by the [`Aad`] (tenant, table, column, row, each length-prefixed). A ciphertext
//! copied to another row, column, table or tenant, or relabelled with another key id, fails.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

pub const VERSION: u8 = 1;
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;
pub const HEADER_BYTES: usize = 1 + 4 + NONCE_BYTES;
/// Bytes a ciphertext adds to its plaintext.
pub const OVERHEAD: usize = HEADER_BYTES + TAG_BYTES;

/// A 256-bit key, wiped when dropped.
pub type Key = Zeroizing<[u8; 32]>;

/// Where a ciphertext belongs. Every field is part of the authenticated data.
#[derive(Clone, Copy, Debug)]
pub struct Aad<'a> {
    pub tenant: [u8; 16],
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Aad<'_> {
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"voucher_ext.aad/1");
        for part in [
            &self.tenant[..],
            self.table.as_bytes(),
            self.column.as_bytes(),
            self.row.as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("ciphertext is too short to be one")]
    Truncated,
    #[error("unknown ciphertext format version {0}")]
    UnknownVersion(u8),
    /// Tampered with, moved to another place, or the wrong key: GCM cannot tell these apart.
    #[error("ciphertext failed authentication")]
    Authentication,
}

/// The version and key id a ciphertext names, checked for shape only (not authenticated yet).
pub fn header(ct: &[u8]) -> Result<(u8, u32), EnvelopeError> {
    if ct.len() < OVERHEAD {
        return Err(EnvelopeError::Truncated);
    }
    if ct[0] != VERSION {
        return Err(EnvelopeError::UnknownVersion(ct[0]));
    }
    Ok((
        ct[0],
        u32::from_be_bytes(ct[1..5].try_into().expect("4 bytes")),
    ))
}

/// The key id a ciphertext names.
pub fn key_id(ct: &[u8]) -> Result<u32, EnvelopeError> {
    header(ct).map(|(_, id)| id)
}

fn associated(header: &[u8], aad: &Aad) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 64);
    a.extend_from_slice(header);
    aad.append_to(&mut a);
    a
}

/// Seals `plaintext` under `key` (named `key_id` in the header) with the caller's `nonce`, which
/// must be fresh from the OS CSPRNG: [`seal`] is the function to call; this one exists so tests
/// can pin the nonce.
pub fn seal_with_nonce(
    key: &[u8; 32],
    key_id: u32,
    nonce: [u8; NONCE_BYTES],
    aad: &Aad,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.push(VERSION);
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&nonce);
    let ad = associated(&out, aad);
    let cipher = Aes256Gcm::new(key.into());
    let body = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &ad,
            },
        )
        .expect("AES-GCM encryption of a bounded message cannot fail");
    out.extend_from_slice(&body);
    out
}

/// Seals `plaintext` with a fresh random nonce.
pub fn seal(key: &[u8; 32], key_id: u32, aad: &Aad, plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).expect("the OS CSPRNG is available");
    seal_with_nonce(key, key_id, nonce, aad, plaintext)
}

/// Opens a ciphertext made by [`seal`] with the same key and associated data. The plaintext is
/// wiped when dropped.
pub fn open(key: &[u8; 32], aad: &Aad, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    header(ct)?;
    let (head, body) = ct.split_at(HEADER_BYTES);
    let ad = associated(head, aad);
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            Nonce::from_slice(&head[5..]),
            Payload {
                msg: body,
                aad: &ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Authentication)
}

#[cfg(test)]
mod unit {
    use super::*;

    const K1: [u8; 32] = [7u8; 32];
    const K2: [u8; 32] = [8u8; 32];

    fn aad(row: &str) -> Aad<'_> {
        Aad {
            tenant: [1u8; 16],
            table: "customer",
            column: "email",
            row,
        }
    }

    #[test]
    fn round_trip() {
        let ct = seal(&K1, 42, &aad("r1"), b"anna@example.com");
        assert_eq!(ct.len(), "anna@example.com".len() + OVERHEAD);
        assert_eq!(key_id(&ct), Ok(42));
        assert_eq!(
            &open(&K1, &aad("r1"), &ct).unwrap()[..],
            b"anna@example.com"
        );
        // the empty string too
        let ct = seal(&K1, 1, &aad("r1"), b"");
        assert_eq!(&open(&K1, &aad("r1"), &ct).unwrap()[..], b"");
    }

    #[test]
    fn fresh_nonce_every_time() {
        let a = seal(&K1, 1, &aad("r"), b"same");
        let b = seal(&K1, 1, &aad("r"), b"same");
        assert_ne!(a[5..HEADER_BYTES], b[5..HEADER_BYTES]);
        assert_ne!(a, b);
    }

    #[test]
    fn plaintext_does_not_show() {
        let ct = seal(&K1, 1, &aad("r"), b"anna@example.com");
        assert!(!ct.windows(4).any(|w| w == b"anna"));
    }

    #[test]
    fn tampered_tag_body_or_header_fails() {
        let ct = seal(&K1, 3, &aad("r1"), b"secret value");
        for i in [ct.len() - 1, HEADER_BYTES, 5, 1] {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&K1, &aad("r1"), &bad),
                Err(EnvelopeError::Authentication),
                "byte {i}"
            );
        }
    }

    #[test]
    fn wrong_aad_fails() {
        let ct = seal(&K1, 3, &aad("r1"), b"secret value");
        assert_eq!(
            open(&K1, &aad("r2"), &ct),
            Err(EnvelopeError::Authentication)
        );
        let other_tenant = Aad {
            tenant: [2u8; 16],
            ..aad("r1")
        };
        assert_eq!(
            open(&K1, &other_tenant, &ct),
            Err(EnvelopeError::Authentication)
        );
        let other_column = Aad {
            column: "name",
            ..aad("r1")
        };
        assert_eq!(
            open(&K1, &other_column, &ct),
            Err(EnvelopeError::Authentication)
        );
        // length prefixes: moving a byte between fields changes the associated data
        let a = Aad {
            table: "ab",
            column: "c",
            ..aad("r")
        };
        let b = Aad {
            table: "a",
            column: "bc",
            ..aad("r")
        };
        let ct = seal(&K1, 1, &a, b"x");
        assert_eq!(open(&K1, &b, &ct), Err(EnvelopeError::Authentication));
    }

    #[test]
    fn wrong_key_fails() {
        let ct = seal(&K1, 3, &aad("r1"), b"secret value");
        assert_eq!(
            open(&K2, &aad("r1"), &ct),
            Err(EnvelopeError::Authentication)
        );
    }

    #[test]
    fn version_and_length_are_checked() {
        let mut ct = seal(&K1, 3, &aad("r1"), b"v");
        ct[0] = 2;
        assert_eq!(
            open(&K1, &aad("r1"), &ct),
            Err(EnvelopeError::UnknownVersion(2))
        );
        assert_eq!(header(&ct[..OVERHEAD - 1]), Err(EnvelopeError::Truncated));
        assert_eq!(open(&K1, &aad("r1"), &[]), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn format_is_pinned() {
        // a fixed key, nonce and AAD give a fixed ciphertext: the stored format cannot drift
        let ct = seal_with_nonce(&K1, 0x0102_0304, [9u8; 12], &aad("r1"), b"abc");
        assert_eq!(&ct[..5], &[1, 1, 2, 3, 4]);
        assert_eq!(&ct[5..17], &[9u8; 12]);
        let again = seal_with_nonce(&K1, 0x0102_0304, [9u8; 12], &aad("r1"), b"abc");
        assert_eq!(ct, again);
        assert_eq!(&open(&K1, &aad("r1"), &ct).unwrap()[..], b"abc");
    }
}
