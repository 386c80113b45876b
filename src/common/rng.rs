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

/// A time-ordered (version 7) UUID: keeps b-tree inserts of new rows at the right edge.
pub fn uuid_v7() -> [u8; 16] {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut b = uuid_v4();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
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
    fn v7_is_time_ordered() {
        let a = uuid_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = uuid_v7();
        assert!(a[..6] < b[..6]);
    }
}
