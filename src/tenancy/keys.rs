//! API keys: `vk_<prefix>_<secret>`.
//!
//! The 12-character prefix (60 random bits) is not secret: it is stored in clear, shown in
//! `voucher.api_keys` and used to find the key's row. The secret is 32 bytes from the OS CSPRNG.
//! Only SHA-256 of the whole key is stored, and it is compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::common::rng;

/// Lower-case Crockford base32: no i, l, o, u, so keys read back unambiguously.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const TAG: &str = "vk_";
const PREFIX_CHARS: usize = 12;
const SECRET_BYTES: usize = 32;
const SECRET_CHARS: usize = (SECRET_BYTES * 8).div_ceil(5);
pub const KEY_LEN: usize = TAG.len() + PREFIX_CHARS + 1 + SECRET_CHARS;
/// Length of the displayed, non-secret part: `vk_` and the prefix.
pub const DISPLAY_LEN: usize = TAG.len() + PREFIX_CHARS;

fn base32(bytes: &[u8], chars: usize) -> String {
    let mut out = String::with_capacity(chars);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 && out.len() < chars {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 && out.len() < chars {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A freshly generated key: the plaintext (shown once) and what is stored.
pub struct NewKey {
    pub plaintext: String,
    pub display_prefix: String,
    pub hash: [u8; 32],
}

pub fn generate() -> NewKey {
    let prefix = base32(&rng::os_bytes::<8>(), PREFIX_CHARS);
    let secret = base32(&rng::os_bytes::<SECRET_BYTES>(), SECRET_CHARS);
    let plaintext = format!("{TAG}{prefix}_{secret}");
    NewKey {
        display_prefix: format!("{TAG}{prefix}"),
        hash: hash(&plaintext),
        plaintext,
    }
}

/// The display prefix of a well-formed key, or None for anything that cannot be a key.
pub fn display_prefix(key: &str) -> Option<&str> {
    let b = key.as_bytes();
    let well_formed = b.len() == KEY_LEN
        && key.starts_with(TAG)
        && b[DISPLAY_LEN] == b'_'
        && b[TAG.len()..DISPLAY_LEN]
            .iter()
            .all(|c| ALPHABET.contains(c))
        && b[DISPLAY_LEN + 1..].iter().all(|c| ALPHABET.contains(c));
    well_formed.then(|| &key[..DISPLAY_LEN])
}

pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant-time comparison of a presented key's hash with a stored one.
pub fn matches(presented: &[u8; 32], stored: &[u8]) -> bool {
    stored.len() == presented.len() && bool::from(presented.as_slice().ct_eq(stored))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.plaintext.len(), KEY_LEN);
        assert_eq!(
            display_prefix(&a.plaintext),
            Some(a.display_prefix.as_str())
        );
        assert_ne!(a.plaintext, b.plaintext);
        assert_ne!(a.display_prefix, b.display_prefix);
        assert_eq!(a.hash, hash(&a.plaintext));
    }

    // checked when the crate compiles
    const _: () = assert!(SECRET_CHARS * 5 >= 256, "a key's secret carries 256 bits");
    const _: () = assert!(KEY_LEN == 3 + 12 + 1 + 52);

    #[test]
    fn malformed_keys_are_rejected() {
        let k = generate().plaintext;
        assert!(display_prefix(&k[..KEY_LEN - 1]).is_none());
        assert!(display_prefix(&format!("{k}x")).is_none());
        assert!(display_prefix(&k.replacen("vk_", "vx_", 1)).is_none());
        assert!(display_prefix(&k.to_uppercase()).is_none());
        let mut bad = k.clone().into_bytes();
        bad[DISPLAY_LEN] = b'-';
        assert!(display_prefix(std::str::from_utf8(&bad).unwrap()).is_none());
        assert!(display_prefix("").is_none());
        assert!(display_prefix("vk_é").is_none());
    }

    #[test]
    fn hash_comparison() {
        let k = generate();
        assert!(matches(&k.hash, &k.hash));
        let mut other = k.hash;
        other[31] ^= 1;
        assert!(!matches(&k.hash, &other));
        assert!(!matches(&k.hash, &k.hash[..31]));
    }

    #[test]
    fn base32_known_values() {
        assert_eq!(base32(&[0, 0], 4), "0000");
        assert_eq!(base32(&[0xff, 0xff], 4), "zzzg");
        // 10000 10000 10000 0 -> g g g
        assert_eq!(base32(&[0x84, 0x20], 3), "ggg");
        // a trailing partial group is padded with zero bits: 1 -> 10000
        assert_eq!(base32(&[0x84, 0x21], 4), "gggg");
    }
}
