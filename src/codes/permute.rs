//! A keyed pseudo-random permutation of `[0, domain)`, for drawing codes without repeats.
//!
//! An 8-round (unbalanced) Feistel network over the smallest bit width holding `domain - 1`,
//! with AES-128 as round function, and cycle-walking back into the domain. Walking counter
//! values `start, start+1, ...` through it yields distinct, uniformly distributed indexes: a
//! batch of codes that never repeats, drawn in constant memory, with no retry loop. The key comes
//! from the OS CSPRNG for every batch and is thrown away afterwards, so the sequence cannot be
//! predicted from codes already seen.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;

const ROUNDS: u8 = 8;

pub struct Permutation {
    cipher: Aes128,
    domain: u64,
    left_bits: u32,
    right_bits: u32,
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Permutation {
    pub fn new(domain: u64, key: [u8; 16]) -> Permutation {
        assert!(domain >= 1, "empty domain");
        let width = (64 - (domain - 1).leading_zeros()).max(2);
        let left_bits = width / 2;
        Permutation {
            cipher: Aes128::new(&key.into()),
            domain,
            left_bits,
            right_bits: width - left_bits,
        }
    }

    pub fn domain(&self) -> u64 {
        self.domain
    }

    fn round(&self, round: u8, half: u64) -> u64 {
        let mut block = [0u8; 16];
        block[0] = round;
        block[1..9].copy_from_slice(&half.to_le_bytes());
        block[9..].copy_from_slice(&self.domain.to_le_bytes()[..7]);
        let mut b = block.into();
        self.cipher.encrypt_block(&mut b);
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }

    fn feistel(&self, x: u64) -> u64 {
        let (lm, rm) = (mask(self.left_bits), mask(self.right_bits));
        let mut left = (x >> self.right_bits) & lm;
        let mut right = x & rm;
        for r in 0..ROUNDS {
            if r % 2 == 0 {
                left ^= self.round(r, right) & lm;
            } else {
                right ^= self.round(r, left) & rm;
            }
        }
        (left << self.right_bits) | right
    }

    /// The image of `x`, for `x < domain`.
    pub fn apply(&self, x: u64) -> u64 {
        debug_assert!(x < self.domain);
        if self.domain == 1 {
            return 0;
        }
        let mut y = self.feistel(x);
        // The network permutes [0, 2^width) and 2^width < 2 * domain (width >= 2 aside), so
        // this walk ends after fewer than two steps on average.
        while y >= self.domain {
            y = self.feistel(y);
        }
        y
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn is_a_permutation_of_small_domains() {
        for domain in [1u64, 2, 3, 4, 5, 7, 31, 100, 961, 1000, 4096, 29791] {
            let p = Permutation::new(domain, [7u8; 16]);
            let mut seen = vec![false; domain as usize];
            for x in 0..domain {
                let y = p.apply(x);
                assert!(y < domain);
                assert!(!seen[y as usize], "domain {domain}: {y} twice");
                seen[y as usize] = true;
            }
        }
    }

    #[test]
    fn different_keys_give_different_orders() {
        let a: Vec<u64> = (0..50)
            .map(|x| Permutation::new(1 << 40, [1; 16]).apply(x))
            .collect();
        let b: Vec<u64> = (0..50)
            .map(|x| Permutation::new(1 << 40, [2; 16]).apply(x))
            .collect();
        assert_ne!(a, b);
    }

    #[test]
    fn large_domains_stay_in_range() {
        for domain in [u64::MAX, 31u64.pow(12), 10u64.pow(19), (1 << 63) + 1] {
            let p = Permutation::new(domain, [9; 16]);
            for x in [0, 1, 2, domain / 2, domain - 1] {
                assert!(p.apply(x) < domain);
            }
        }
    }

    /// Consecutive inputs land uniformly: a chi-square test over 64 buckets.
    #[test]
    fn outputs_are_uniform() {
        let domain = 31u64.pow(8);
        let p = Permutation::new(domain, [42; 16]);
        let buckets = 64u64;
        let draws = 64_000u64;
        let mut counts = vec![0u64; buckets as usize];
        for x in 0..draws {
            let y = p.apply(x);
            counts[(y as u128 * buckets as u128 / domain as u128) as usize] += 1;
        }
        let expected = (draws / buckets) as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        // 63 degrees of freedom: p = 0.0001 at about 113
        assert!(chi2 < 113.0, "chi-square {chi2}");
    }
}
