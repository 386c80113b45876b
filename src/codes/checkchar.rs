//! Check characters: the Damm algorithm over a charset of N symbols.
//!
//! Damm's scheme needs a totally anti-symmetric quasigroup of order N; with it, every single
//! substituted character and every swap of two adjacent characters (the check character
//! included) is detected. We build the quasigroup in closed form:
//! - N odd: `x * y = 2x + y (mod N)`;
//! - N = 2^m * q with m >= 2, q odd: the direct product of `x * y = a*x + y` over GF(2^m)
//!   (a = the field element "x", neither 0 nor 1) and the odd construction over Z_q;
//! - N = 10: Damm's published table.
//!
//! Other N (2 mod 4, apart from 10) have no such closed form, and are refused.

use crate::common::error::{Result, VoucherError};

/// Damm's totally anti-symmetric quasigroup of order 10 (his 2004 thesis).
const DAMM10: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

/// Irreducible polynomials for GF(2^m), m = 2..=6 (the charset has at most 94 symbols).
const IRREDUCIBLE: [u32; 7] = [0, 0, 0b111, 0b1011, 0b10011, 0b100101, 0b1000011];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Odd,
    Decimal,
    /// N = 2^m * q: m bits of GF(2^m), q odd
    Product {
        m: u32,
        q: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct CheckChar {
    n: u32,
    kind: Kind,
}

fn gf_mul_x(v: u32, m: u32) -> u32 {
    // multiply by the element "x" in GF(2^m)
    let r = v << 1;
    if r & (1 << m) != 0 {
        r ^ IRREDUCIBLE[m as usize]
    } else {
        r
    }
}

impl CheckChar {
    pub fn for_size(n: u32) -> Result<CheckChar> {
        let kind = if n % 2 == 1 && n >= 3 {
            Kind::Odd
        } else if n == 10 {
            Kind::Decimal
        } else if n.is_multiple_of(4) && n >= 4 {
            let m = n.trailing_zeros();
            Kind::Product { m, q: n >> m }
        } else {
            return Err(VoucherError::invalid_hint(
                format!("check characters are not available for a charset of {n} characters"),
                "use a charset whose size is odd, a multiple of 4, or 10 (unambiguous, numbers and alphanumeric all work)",
            ));
        };
        if let Kind::Product { m, .. } = kind {
            assert!((2..=6).contains(&m), "charsets have at most 94 symbols");
        }
        Ok(CheckChar { n, kind })
    }

    /// One step of the quasigroup: `interim * digit`.
    fn op(&self, x: u32, y: u32) -> u32 {
        match self.kind {
            Kind::Odd => (2 * x + y) % self.n,
            Kind::Decimal => DAMM10[x as usize][y as usize] as u32,
            Kind::Product { m, q } => {
                let mask = (1 << m) - 1;
                let (x2, xq) = (x & mask, x >> m);
                let (y2, yq) = (y & mask, y >> m);
                let a = gf_mul_x(x2, m) ^ y2;
                let b = if q == 1 { 0 } else { (2 * xq + yq) % q };
                (b << m) | a
            }
        }
    }

    fn interim(&self, digits: impl IntoIterator<Item = u32>) -> u32 {
        digits.into_iter().fold(0, |r, d| self.op(r, d))
    }

    /// The check digit that makes the whole sequence reduce to 0.
    pub fn compute(&self, digits: impl IntoIterator<Item = u32>) -> u32 {
        let r = self.interim(digits);
        (0..self.n)
            .find(|&c| self.op(r, c) == 0)
            .expect("a quasigroup row is a permutation")
    }

    /// Does the sequence, its check digit last, verify?
    pub fn verify(&self, digits_with_check: impl IntoIterator<Item = u32>) -> bool {
        self.interim(digits_with_check) == 0
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn sample(n: u32, len: usize, seed: u64) -> Vec<u32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % n as u64) as u32
            })
            .collect()
    }

    fn with_check(c: &CheckChar, digits: &[u32]) -> Vec<u32> {
        let mut v = digits.to_vec();
        v.push(c.compute(digits.iter().copied()));
        v
    }

    /// The quasigroup property and total anti-symmetry, exhaustively.
    fn assert_totally_anti_symmetric(c: &CheckChar) {
        let n = c.n;
        for x in 0..n {
            let mut row: Vec<u32> = (0..n).map(|y| c.op(x, y)).collect();
            let mut col: Vec<u32> = (0..n).map(|y| c.op(y, x)).collect();
            row.sort();
            col.sort();
            assert_eq!(row, (0..n).collect::<Vec<_>>(), "row {x} of order {n}");
            assert_eq!(col, (0..n).collect::<Vec<_>>(), "column {x} of order {n}");
        }
        for r in 0..n {
            for x in 0..n {
                for y in 0..n {
                    if x != y {
                        assert_ne!(c.op(c.op(r, x), y), c.op(c.op(r, y), x), "order {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn supported_orders_are_totally_anti_symmetric() {
        for n in [3, 4, 5, 8, 9, 10, 12, 16, 20, 31, 32, 36, 64, 93] {
            assert_totally_anti_symmetric(&CheckChar::for_size(n).unwrap());
        }
    }

    #[test]
    fn unsupported_orders_are_refused() {
        for n in [2, 6, 14, 26, 30, 94] {
            assert_eq!(
                CheckChar::for_size(n).unwrap_err().sqlstate(),
                "22023",
                "{n}"
            );
        }
    }

    #[test]
    fn every_substitution_and_adjacent_swap_is_detected() {
        for n in [10, 31, 36, 16, 9] {
            let c = CheckChar::for_size(n).unwrap();
            for seed in 0..20 {
                let code = with_check(&c, &sample(n, 10, seed));
                assert!(c.verify(code.iter().copied()));
                for i in 0..code.len() {
                    for v in 0..n {
                        if v != code[i] {
                            let mut typo = code.clone();
                            typo[i] = v;
                            assert!(!c.verify(typo.iter().copied()), "n={n} pos {i} -> {v}");
                        }
                    }
                    if i + 1 < code.len() && code[i] != code[i + 1] {
                        let mut swapped = code.clone();
                        swapped.swap(i, i + 1);
                        assert!(!c.verify(swapped.iter().copied()), "n={n} swap {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn damm_decimal_known_value() {
        // the worked example of the Damm algorithm: 572 -> check digit 4
        let c = CheckChar::for_size(10).unwrap();
        assert_eq!(c.compute([5, 7, 2]), 4);
        assert!(c.verify([5, 7, 2, 4]));
    }
}
