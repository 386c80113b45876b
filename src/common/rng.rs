//! Randomness: the operating system's CSPRNG, never `random()` or a time seed.
//!
//! Secrets (API keys, per-batch code keys) come straight from `getrandom`. Bulk, non-secret
//! randomness (row ids) comes from a ChaCha20 stream seeded from `getrandom` in each backend.

use std::cell::RefCell;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Fills `buf` from the operating system's CSPRNG.
pub fn os_fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random source failed");
}

pub fn os_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    os_fill(&mut b);
    b
}

thread_local! {
    // (pid, generator): reseeded if we find ourselves in a forked child.
    static STREAM: RefCell<Option<(u32, ChaCha20Rng)>> = const { RefCell::new(None) };
}

/// Runs `f` with this backend's ChaCha20 generator.
pub fn with_stream<R>(f: impl FnOnce(&mut ChaCha20Rng) -> R) -> R {
    STREAM.with(|cell| {
        let mut slot = cell.borrow_mut();
        let pid = std::process::id();
        if !matches!(&*slot, Some((p, _)) if *p == pid) {
            *slot = Some((pid, ChaCha20Rng::from_seed(os_bytes::<32>())));
        }
        f(&mut slot.as_mut().expect("seeded above").1)
    })
}

/// A random (version 4) UUID.
pub fn uuid_v4() -> [u8; 16] {
    let mut b = [0u8; 16];
    with_stream(|r| r.fill_bytes(&mut b));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

thread_local! {
    /// The last version 7 UUID this backend made.
    static LAST_V7: std::cell::Cell<[u8; 16]> = const { std::cell::Cell::new([0; 16]) };
}

/// A time-ordered (version 7, RFC 9562) UUID: keeps b-tree inserts of new rows at the right
/// edge, and orders the ids one backend makes: the 12 bits after the version are the
/// sub-millisecond time (the RFC's method 3), and an id that would not sort after the backend's
/// previous one (the same clock tick, a clock set back) is that one plus one. Rows ordered by
/// such an id (a customer's consents) keep the order in which one session made them, also
/// within a millisecond.
pub fn uuid_v7() -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = now.as_millis() as u64;
    // 0..4096: the fraction of the current millisecond
    let sub = (u64::from(now.subsec_nanos() % 1_000_000) * 4096 / 1_000_000) as u16;
    let mut b = uuid_v4();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (sub >> 8) as u8;
    b[7] = sub as u8;
    LAST_V7.with(|last| {
        if b <= last.get() {
            b = v7_successor(last.get());
        }
        last.set(b);
    });
    b
}

/// The version 7 UUID right after `b`: its 62 random bits plus one, carried into the 12
/// sub-millisecond bits and then into the 48 bits of milliseconds.
fn v7_successor(mut b: [u8; 16]) -> [u8; 16] {
    const LOW: u64 = (1 << 62) - 1;
    let low = u64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
    if low & LOW != LOW {
        b[8..].copy_from_slice(&(low + 1).to_be_bytes());
        return b;
    }
    b[8..].copy_from_slice(&(low & !LOW).to_be_bytes());
    let sub = u16::from_be_bytes([b[6], b[7]]) & 0x0fff;
    if sub != 0x0fff {
        let sub = sub + 1;
        b[6] = 0x70 | (sub >> 8) as u8;
        b[7] = sub as u8;
        return b;
    }
    b[6] = 0x70;
    b[7] = 0;
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    let ms = u64::from_be_bytes(ms) + 1;
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b
}

/// Internal, for SQL functions: a new time-ordered id.
#[pgrx::pg_extern(volatile, parallel_safe, name = "_uuid_v7")]
fn uuid_v7_sql() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(uuid_v7())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn uuid_versions_and_variants() {
        let a = uuid_v4();
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] >> 6, 0b10);
        let b = uuid_v7();
        assert_eq!(b[6] >> 4, 7);
        assert_eq!(b[8] >> 6, 0b10);
        assert_ne!(uuid_v4(), uuid_v4());
    }

    #[test]
    fn a_backends_v7_ids_sort_in_the_order_it_made_them() {
        let mut last = uuid_v7();
        for _ in 0..100_000 {
            let b = uuid_v7();
            assert!(b > last, "{b:x?} after {last:x?}");
            assert_eq!(b[6] >> 4, 7);
            assert_eq!(b[8] >> 6, 0b10);
            last = b;
        }
        // the successor carries through the random bits, the sub-millisecond bits and the time
        let mut b = [0u8; 16];
        b[5] = 9;
        b[6] = 0x7f;
        b[7] = 0xff;
        b[8] = 0xbf;
        b[9..].fill(0xff);
        let next = super::v7_successor(b);
        assert!(next > b);
        assert_eq!(next[5], 10);
        assert_eq!((next[6], next[7]), (0x70, 0));
        assert_eq!(next[8], 0x80);
        assert!(next[9..].iter().all(|&x| x == 0));
        let mut c = b;
        c[8] = 0x80;
        c[9..15].fill(0);
        let next = super::v7_successor(c);
        assert_eq!(next[15], 0);
        assert_eq!(next[14], 1);
        assert_eq!(next[5], 9);
    }

    #[test]
    fn v7_is_time_ordered() {
        let a = uuid_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = uuid_v7();
        assert!(a[..6] < b[..6]);
    }
}
