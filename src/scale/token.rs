//! The context token's claims, encoding and MAC (pure Rust; the shipping and checking are in
//! `cluster.rs`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const KEY_BYTES: usize = 32;
const VERSION: &str = "v1";

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

/// The permit that lets a worker's append-only audit triggers pass `purge_audit`'s deletes: an
/// HMAC of the transaction's token under the cluster key (so it holds exactly where and while
/// that token does).
pub fn purge_tag(token: &str, key: &[u8; KEY_BYTES]) -> String {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"voucher_ext cluster purge\0");
    m.update(token.as_bytes());
    hex(&m.finalize().into_bytes())
}

/// Does `tag` permit a purge in the transaction of `token`? (constant-time comparison)
pub fn purge_permitted(tag: &str, token: &str, key: &[u8; KEY_BYTES]) -> bool {
    let Some(tag) = unhex::<32>(tag) else {
        return false;
    };
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"voucher_ext cluster purge\0");
    m.update(token.as_bytes());
    m.verify_slice(&tag).is_ok()
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

    #[test]
    fn a_purge_permit_holds_for_its_token_only() {
        let key = [1u8; KEY_BYTES];
        let t = encode(&claims(), &key);
        let tag = purge_tag(&t, &key);
        assert!(purge_permitted(&tag, &t, &key));
        let mut other = claims();
        other.txn.number += 1;
        assert!(!purge_permitted(&tag, &encode(&other, &key), &key));
        assert!(!purge_permitted(&tag, &t, &[2u8; KEY_BYTES]));
        assert!(!purge_permitted(
            &purge_tag(&t, &[2u8; KEY_BYTES]),
            &t,
            &key
        ));
        assert!(!purge_permitted("", &t, &key));
        assert!(!purge_permitted(&t, &t, &key));
    }
}
