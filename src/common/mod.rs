//! Plumbing every capability uses: errors and their SQLSTATEs, settings (GUCs), randomness.
//! Depends on nothing else in the crate.

pub mod auth_guard;
pub mod error;
pub mod events;
pub mod gucs;
pub mod index;
pub mod jsonb;
pub mod rng;
pub mod spi;
pub mod srf;

/// A uuid's canonical text (`uuid_out`'s: 36 lower-case characters, 8-4-4-4-12), for the hot
/// paths. pgrx's `Display` of a uuid gives the same text through `core::fmt`, at about 3,700
/// instructions a uuid against some 250 here: the three uuids of a redemption's audit details
/// cost 11k instructions per redemption that way (callgrind, issue 17).
pub fn uuid_text(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod unit {
    #[test]
    fn uuid_text_is_pgrx_display_and_uuid_out() {
        let b = [
            0x01, 0xa2, 0x3d, 0x73, 0x7f, 0x4f, 0x75, 0x46, 0xb6, 0x33, 0xb0, 0xa5, 0x53, 0xcb,
            0x51, 0x08,
        ];
        assert_eq!(super::uuid_text(&b), "01a23d73-7f4f-7546-b633-b0a553cb5108");
        assert_eq!(
            super::uuid_text(&[0; 16]),
            "00000000-0000-0000-0000-000000000000"
        );
        for seed in 0..=255u8 {
            let b: [u8; 16] =
                std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 17));
            assert_eq!(super::uuid_text(&b), pgrx::Uuid::from_bytes(b).to_string());
        }
    }
}
