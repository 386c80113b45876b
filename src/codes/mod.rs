//! Codes: patterns, charsets, check characters, the keyed permutation that draws unique codes,
//! generation in bounded chunks and import of caller-chosen codes.

pub mod charset;
pub mod checkchar;
pub mod generate;
pub mod import;
pub mod pattern;
pub mod permute;
mod probe;
