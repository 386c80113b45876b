//! The characters a code's random positions are drawn from.

use crate::common::error::{Result, VoucherError};

/// No 0/O, 1/I/L: codes read aloud or typed from paper come back right. 31 characters.
pub const UNAMBIGUOUS: &str = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";
pub const NUMBERS: &str = "0123456789";
pub const ALPHABETIC: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub const ALPHANUMERIC: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

const NONE: u8 = u8::MAX;

#[derive(Clone, Debug)]
pub struct Charset {
    /// The name it was given by (`unambiguous`, ...) or the literal characters.
    name: String,
    symbols: Vec<u8>,
    /// symbol -> index, NONE when not in the set
    index: [u8; 128],
}

impl Charset {
    /// A named charset, or a literal string of characters (deduplicated, order kept).
    pub fn parse(spec: &str) -> Result<Charset> {
        let symbols = match spec {
            "unambiguous" => UNAMBIGUOUS,
            "numbers" => NUMBERS,
            "alphabetic" => ALPHABETIC,
            "alphanumeric" => ALPHANUMERIC,
            literal => return Charset::literal(literal),
        };
        Ok(Charset::build(
            spec.to_string(),
            symbols.as_bytes().to_vec(),
        ))
    }

    fn literal(spec: &str) -> Result<Charset> {
        let mut symbols: Vec<u8> = Vec::new();
        for c in spec.chars() {
            if !c.is_ascii_graphic() {
                return Err(VoucherError::invalid_hint(
                    format!("charset contains {c:?}, which is not a printable ASCII character"),
                    "use unambiguous, numbers, alphabetic, alphanumeric or printable ASCII characters",
                ));
            }
            if c.is_ascii_lowercase() || c == '-' {
                return Err(VoucherError::invalid_hint(
                    format!("charset contains {c:?}, which normalization would change"),
                    "codes are matched upper-case with dashes and spaces removed: use upper-case letters, digits and symbols other than '-'",
                ));
            }
            if !symbols.contains(&(c as u8)) {
                symbols.push(c as u8);
            }
        }
        if symbols.len() < 2 {
            return Err(VoucherError::invalid_hint(
                "charset needs at least 2 distinct characters",
                "use unambiguous, numbers, alphabetic, alphanumeric or a string of characters",
            ));
        }
        Ok(Charset::build(
            String::from_utf8(symbols.clone()).expect("ASCII"),
            symbols,
        ))
    }

    fn build(name: String, symbols: Vec<u8>) -> Charset {
        let mut index = [NONE; 128];
        for (i, &s) in symbols.iter().enumerate() {
            index[s as usize] = i as u8;
        }
        Charset {
            name,
            symbols,
            index,
        }
    }

    pub fn len(&self) -> u32 {
        self.symbols.len() as u32
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn symbol(&self, i: u32) -> u8 {
        self.symbols[i as usize]
    }

    pub fn index_of(&self, c: u8) -> Option<u32> {
        match self.index.get(c as usize) {
            Some(&i) if i != NONE => Some(i as u32),
            _ => None,
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn named_charsets() {
        assert_eq!(Charset::parse("unambiguous").unwrap().len(), 31);
        assert_eq!(Charset::parse("numbers").unwrap().len(), 10);
        assert_eq!(Charset::parse("alphabetic").unwrap().len(), 26);
        assert_eq!(Charset::parse("alphanumeric").unwrap().len(), 36);
        let u = Charset::parse("unambiguous").unwrap();
        for c in "01OIL".bytes() {
            assert_eq!(u.index_of(c), None, "{} is ambiguous", c as char);
        }
    }

    #[test]
    fn literal_charsets_are_deduplicated_in_order() {
        let c = Charset::parse("ABAB9C").unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.name(), "AB9C");
        assert_eq!(c.index_of(b'9'), Some(2));
        assert_eq!(c.symbol(3), b'C');
        assert_eq!(Charset::parse("*+").unwrap().len(), 2);
    }

    #[test]
    fn literal_charsets_are_validated() {
        for bad in ["", "A", "AAAA", "abc", "AB-", "A B", "AÉ", "A\tB"] {
            let e = Charset::parse(bad).unwrap_err();
            assert_eq!(e.sqlstate(), "22023", "{bad:?}");
        }
    }

    #[test]
    fn every_named_symbol_survives_normalization() {
        for name in ["unambiguous", "numbers", "alphabetic", "alphanumeric"] {
            let c = Charset::parse(name).unwrap();
            for i in 0..c.len() {
                let s = c.symbol(i) as char;
                assert_eq!(
                    crate::codes::pattern::normalize(&s.to_string()),
                    s.to_string()
                );
            }
        }
    }
}
