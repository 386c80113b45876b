//! Code patterns: `#` is one random character from the charset, anything else is literal;
//! prefix and postfix are literal; an optional check character follows the pattern.
//!
//! A code is stored and looked up in canonical form ([`normalize`]): upper case, without spaces
//! and dashes. The display form keeps the pattern's separators.

use rand::Rng;

use crate::codes::charset::Charset;
use crate::codes::checkchar::CheckChar;
use crate::common::error::{Result, VoucherError};

pub const MAX_PATTERN: usize = 64;
pub const MAX_AFFIX: usize = 32;
/// Longest canonical code, generated or imported.
pub const MAX_CODE: usize = 100;

fn is_dash(c: char) -> bool {
    matches!(
        c,
        '-' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}'
    )
}

/// The canonical form of a code: ASCII letters upper-cased, whitespace and dashes (also the
/// typographic ones a copy-paste brings along) removed. `abcd-efgh` finds `ABCDEFGH`.
pub fn normalize(code: &str) -> String {
    code.chars()
        .filter(|&c| !(c.is_whitespace() || is_dash(c)))
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Literal(u8),
    Random,
}

#[derive(Clone, Debug)]
pub struct Shape {
    pattern: String,
    prefix: String,
    postfix: String,
    slots: Vec<Slot>,
    random: usize,
    charset: Charset,
    check: Option<CheckChar>,
    /// random positions driven by the permutation index (the rest are drawn independently)
    indexed: usize,
    domain: u64,
}

fn literal_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.chars().count() > max {
        return Err(VoucherError::invalid(format!(
            "{what} is longer than {max} characters"
        )));
    }
    if let Some(c) = s.chars().find(|&c| !(c.is_ascii_graphic() || c == ' ')) {
        return Err(VoucherError::invalid_hint(
            format!("{what} contains {c:?}; codes are printable ASCII"),
            "use letters, digits, spaces and punctuation from ASCII",
        ));
    }
    Ok(())
}

impl Shape {
    pub fn parse(
        pattern: &str,
        charset: &str,
        prefix: &str,
        postfix: &str,
        check_char: bool,
    ) -> Result<Shape> {
        if pattern.is_empty() {
            return Err(VoucherError::invalid_hint(
                "code pattern must not be empty",
                "# stands for one random character, e.g. '####-####'",
            ));
        }
        literal_text("code pattern", pattern, MAX_PATTERN)?;
        literal_text("code prefix", prefix, MAX_AFFIX)?;
        literal_text("code postfix", postfix, MAX_AFFIX)?;
        let charset = Charset::parse(charset)?;
        let check = if check_char {
            Some(CheckChar::for_size(charset.len())?)
        } else {
            None
        };
        let slots: Vec<Slot> = pattern
            .bytes()
            .map(|b| {
                if b == b'#' {
                    Slot::Random
                } else {
                    Slot::Literal(b)
                }
            })
            .collect();
        let random = slots.iter().filter(|s| matches!(s, Slot::Random)).count();

        let n = charset.len() as u64;
        let (mut indexed, mut domain) = (0usize, 1u64);
        while indexed < random {
            match domain.checked_mul(n) {
                Some(d) => {
                    domain = d;
                    indexed += 1;
                }
                None => break,
            }
        }
        let shape = Shape {
            pattern: pattern.to_string(),
            prefix: prefix.to_string(),
            postfix: postfix.to_string(),
            slots,
            random,
            charset,
            check,
            indexed,
            domain,
        };
        let len = shape.canonical_len();
        if len == 0 {
            return Err(VoucherError::invalid(
                "code pattern, prefix and postfix leave an empty code once spaces and dashes are removed",
            ));
        }
        if len > MAX_CODE {
            return Err(VoucherError::invalid(format!(
                "codes of this pattern would be {len} characters long; the limit is {MAX_CODE}"
            )));
        }
        Ok(shape)
    }

    fn canonical_len(&self) -> usize {
        normalize(&self.prefix).len()
            + normalize(&self.postfix).len()
            + self.random
            + self.check.is_some() as usize
            + self
                .slots
                .iter()
                .filter(|s| matches!(s, Slot::Literal(b) if !normalize(&(*b as char).to_string()).is_empty()))
                .count()
    }

    #[cfg(test)]
    pub fn charset(&self) -> &Charset {
        &self.charset
    }

    /// Size of the code space (N^k), or None when it exceeds u128.
    pub fn space(&self) -> Option<u128> {
        (self.charset.len() as u128).checked_pow(self.random as u32)
    }

    /// How many codes of this shape may exist in a tenant: a share of the space, so codes stay
    /// hard to guess; a pattern without `#` has exactly one code.
    pub fn capacity(&self, fill: f64) -> u128 {
        if self.random == 0 {
            return 1;
        }
        match self.space() {
            Some(space) => ((space as f64) * fill).floor().min(u128::MAX as f64) as u128,
            None => u128::MAX,
        }
    }

    /// Identifies the code space: campaigns with equal keys draw from the same space.
    pub fn key(&self) -> String {
        let mut template = normalize(&self.prefix);
        for s in &self.slots {
            match s {
                Slot::Random => template.push('#'),
                Slot::Literal(b) => template.push_str(&normalize(&(*b as char).to_string())),
            }
        }
        if self.check.is_some() {
            template.push('+');
        }
        template.push_str(&normalize(&self.postfix));
        format!("{template}|{}", self.charset.name())
    }

    /// The domain the permutation index is drawn from (N^j for the first j random positions).
    pub fn domain(&self) -> u64 {
        self.domain
    }

    /// Writes the code for permutation index `index` into `display` and `canonical`.
    pub fn render(
        &self,
        index: u64,
        rng: &mut impl Rng,
        display: &mut String,
        canonical: &mut String,
    ) {
        display.clear();
        canonical.clear();
        let n = self.charset.len();
        // base-N digits of the index, most significant first, then independent draws
        let mut digits = [0u32; MAX_PATTERN];
        let mut rest = index;
        for i in (0..self.indexed).rev() {
            digits[i] = (rest % n as u64) as u32;
            rest /= n as u64;
        }
        for d in digits.iter_mut().take(self.random).skip(self.indexed) {
            *d = rng.random_range(0..n);
        }
        display.push_str(&self.prefix);
        canonical.push_str(&normalize(&self.prefix));
        let mut next = 0;
        for s in &self.slots {
            match *s {
                Slot::Random => {
                    let c = self.charset.symbol(digits[next]) as char;
                    display.push(c);
                    canonical.push(c);
                    next += 1;
                }
                Slot::Literal(b) => {
                    display.push(b as char);
                    if !(b == b' ' || b == b'-') {
                        canonical.push(b.to_ascii_uppercase() as char);
                    }
                }
            }
        }
        if let Some(check) = &self.check {
            let c = self
                .charset
                .symbol(check.compute(digits[..self.random].iter().copied()))
                as char;
            display.push(c);
            canonical.push(c);
        }
        display.push_str(&self.postfix);
        canonical.push_str(&normalize(&self.postfix));
    }

    /// Does `canonical` have this shape, and if so does its check character verify?
    /// None: not this shape. Some(true): it fits (check character right, or none). Some(false):
    /// it fits but the check character is wrong, a typo.
    pub fn check_status(&self, canonical: &str) -> Option<bool> {
        let mut rest = canonical
            .as_bytes()
            .strip_prefix(normalize(&self.prefix).as_bytes())?;
        let mut digits = Vec::with_capacity(self.random + 1);
        for s in &self.slots {
            match *s {
                Slot::Literal(b) if b == b' ' || b == b'-' => {}
                Slot::Literal(b) => {
                    let (&c, r) = rest.split_first()?;
                    if c != b.to_ascii_uppercase() {
                        return None;
                    }
                    rest = r;
                }
                Slot::Random => {
                    let (&c, r) = rest.split_first()?;
                    digits.push(self.charset.index_of(c)?);
                    rest = r;
                }
            }
        }
        if self.check.is_some() {
            let (&c, r) = rest.split_first()?;
            digits.push(self.charset.index_of(c)?);
            rest = r;
        }
        if rest != normalize(&self.postfix).as_bytes() {
            return None;
        }
        Some(
            self.check
                .as_ref()
                .is_none_or(|check| check.verify(digits.iter().copied())),
        )
    }

    /// Is `canonical` a code of this shape whose check character (if any) verifies?
    #[cfg(test)]
    pub fn matches(&self, canonical: &str) -> bool {
        self.check_status(canonical) == Some(true)
    }

    /// Refuses (VC011) a request that would take more than `fill` of the space.
    pub fn check_feasible(&self, count: u64, existing: u64, fill: f64) -> Result<()> {
        let capacity = self.capacity(fill);
        let wanted = count as u128 + existing as u128;
        if wanted <= capacity {
            return Ok(());
        }
        let space = match self.space() {
            Some(s) => group(s),
            None => "more than 2^128".to_string(),
        };
        let detail = if self.random == 0 {
            format!(
                "pattern \"{}\" has no # and so makes exactly one code; {} requested, {} already issued",
                self.pattern,
                group(count as u128),
                group(existing as u128)
            )
        } else {
            format!(
                "pattern \"{}\" with charset {} has {} codes, of which at most {} ({}%) may be issued; {} requested, {} already issued",
                self.pattern,
                self.charset.name(),
                space,
                group(capacity),
                fill * 100.0,
                group(count as u128),
                group(existing as u128)
            )
        };
        let hint = match self.suggest(wanted, fill) {
            Some(p) => {
                let k = p.bytes().filter(|&b| b == b'#').count();
                let plural = if k == 1 { "" } else { "s" };
                format!("a pattern with {k} random character{plural} would do, e.g. \"{p}\"")
            }
            None => "request fewer codes".to_string(),
        };
        Err(VoucherError::rule_with_hint("VC011", detail, hint))
    }

    /// The pattern with as many more `#` as it takes to hold `wanted` codes.
    fn suggest(&self, wanted: u128, fill: f64) -> Option<String> {
        let mut candidate = self.clone();
        for _ in 0..=MAX_PATTERN {
            candidate.random += 1;
            candidate.pattern.push('#');
            if candidate.pattern.len() > MAX_PATTERN {
                return None;
            }
            if candidate.capacity(fill) >= wanted {
                return Some(candidate.pattern);
            }
        }
        None
    }
}

/// 1234567 -> "1,234,567"
pub fn group(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;
    use rand::SeedableRng;

    fn shape(p: &str) -> Shape {
        Shape::parse(p, "unambiguous", "", "", false).unwrap()
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("abcd-efgh"), "ABCDEFGH");
        assert_eq!(normalize(" ab cd\t-ef\u{2013}gh "), "ABCDEFGH");
        assert_eq!(normalize("Ä-1"), "Ä1");
        assert_eq!(normalize("---"), "");
    }

    #[test]
    fn parsing_counts_random_positions() {
        let s = shape("##-##-##");
        assert_eq!(s.space(), Some(31u128.pow(6)), "six random positions");
        assert_eq!(s.space(), Some(31u128.pow(6)));
        assert_eq!(s.key(), "######|unambiguous");
        let s = Shape::parse("a#b", "numbers", "Pre ", "-post", true).unwrap();
        assert_eq!(s.key(), "PREA#B+POST|numbers");
        assert_eq!(s.domain(), 10);
    }

    #[test]
    fn bad_patterns_are_refused() {
        let err = |p: &str, cs: &str, pre: &str, check: bool| {
            Shape::parse(p, cs, pre, "", check).unwrap_err().sqlstate()
        };
        assert_eq!(err("", "unambiguous", "", false), "22023");
        assert_eq!(err("---", "unambiguous", "", false), "22023");
        assert_eq!(err(&"#".repeat(65), "unambiguous", "", false), "22023");
        assert_eq!(err("##é#", "unambiguous", "", false), "22023");
        assert_eq!(err("##\n#", "unambiguous", "", false), "22023");
        assert_eq!(err("####", "unambiguous", &"P".repeat(33), false), "22023");
        assert_eq!(err("####", "abc", "", false), "22023");
        assert_eq!(err("####", "alphabetic", "", true), "22023");
        let too_long = Shape::parse(
            &"#".repeat(64),
            "unambiguous",
            &"P".repeat(32),
            &"Q".repeat(32),
            true,
        );
        assert_eq!(too_long.unwrap_err().sqlstate(), "22023");
    }

    #[test]
    fn rendering_follows_the_pattern() {
        let s = Shape::parse("####-####", "numbers", "PR-", "-26", false).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (mut d, mut c) = (String::new(), String::new());
        s.render(12_345_678, &mut rng, &mut d, &mut c);
        assert_eq!(d, "PR-1234-5678-26");
        assert_eq!(c, "PR1234567826");
        assert_eq!(c, normalize(&d));
        assert!(s.matches(&c));
        s.render(0, &mut rng, &mut d, &mut c);
        assert_eq!(d, "PR-0000-0000-26");
    }

    #[test]
    fn rendered_check_characters_verify_and_typos_do_not() {
        let s = Shape::parse("########", "unambiguous", "", "", true).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let (mut d, mut c) = (String::new(), String::new());
        for i in 0..200u64 {
            s.render(i * 7_919_017, &mut rng, &mut d, &mut c);
            assert_eq!(c.len(), 9);
            assert!(s.matches(&c), "{c}");
            let b = c.as_bytes();
            for pos in 0..b.len() {
                for &sub in crate::codes::charset::UNAMBIGUOUS.as_bytes() {
                    if sub != b[pos] {
                        let mut t = b.to_vec();
                        t[pos] = sub;
                        assert!(!s.matches(std::str::from_utf8(&t).unwrap()));
                    }
                }
                if pos + 1 < b.len() && b[pos] != b[pos + 1] {
                    let mut t = b.to_vec();
                    t.swap(pos, pos + 1);
                    assert!(!s.matches(std::str::from_utf8(&t).unwrap()));
                }
            }
        }
    }

    #[test]
    fn long_patterns_mix_indexed_and_drawn_positions() {
        let s = shape(&"#".repeat(30));
        assert_eq!(s.space(), None, "31^30 exceeds u128");
        assert_eq!(s.capacity(0.1), u128::MAX);
        assert_eq!(s.domain(), 31u64.pow(12), "the largest power of 31 in u64");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (mut d, mut c) = (String::new(), String::new());
        s.render(s.domain() - 1, &mut rng, &mut d, &mut c);
        assert_eq!(c.len(), 30);
        assert!(s.matches(&c));
    }

    #[test]
    fn feasibility() {
        let s = shape("####");
        let space = 31u64.pow(4); // 923,521
        assert!(s.check_feasible(92_352, 0, 0.1).is_ok());
        assert!(s.check_feasible(92_352, 1, 0.1).is_err());
        assert!(s.check_feasible(50_000, 42_352, 0.1).is_ok());
        let e = s.check_feasible(space, 0, 0.1).unwrap_err();
        assert_eq!(e.sqlstate(), "VC011");
        let (_, detail, hint) = e.parts();
        assert!(detail.unwrap().contains("923,521 codes"));
        assert_eq!(
            hint.unwrap(),
            "a pattern with 5 random characters would do, e.g. \"#####\""
        );
        // no # at all: exactly one code
        let fixed = shape("SUMMER");
        assert!(fixed.check_feasible(1, 0, 0.1).is_ok());
        assert_eq!(
            fixed.check_feasible(2, 0, 0.1).unwrap_err().sqlstate(),
            "VC011"
        );
        assert_eq!(
            fixed.check_feasible(1, 1, 0.1).unwrap_err().sqlstate(),
            "VC011"
        );
    }

    #[test]
    fn digits_are_uniform_without_modulo_bias() {
        // 31 symbols do not divide 2^64: a biased mapping would favour the low symbols
        let s = Shape::parse(&"#".repeat(16), "unambiguous", "", "", false).unwrap();
        let p = crate::codes::permute::Permutation::new(s.domain(), [5; 16]);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let (mut d, mut c) = (String::new(), String::new());
        let mut counts = [[0u32; 31]; 16];
        let draws = 31 * 400;
        for i in 0..draws {
            s.render(p.apply(i), &mut rng, &mut d, &mut c);
            for (pos, b) in c.bytes().enumerate() {
                counts[pos][s.charset().index_of(b).unwrap() as usize] += 1;
            }
        }
        let expected = draws as f64 / 31.0;
        for (pos, row) in counts.iter().enumerate() {
            let chi2: f64 = row
                .iter()
                .map(|&n| (n as f64 - expected).powi(2) / expected)
                .sum();
            // 30 degrees of freedom: p = 0.0001 at about 67
            assert!(chi2 < 67.0, "position {pos}: chi-square {chi2}");
        }
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(923_521), "923,521");
        assert_eq!(group(1_000_000), "1,000,000");
    }
}
