//! The W3C `traceparent` header, parsed and written without the generic
//! OpenTelemetry propagator: every event crosses it several times, and the
//! propagator's split-collect-format costs more than the span it carries.

use crate::event::{InlineTraceparent, TRACEPARENT_LEN as LEN};

/// What a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parsed {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// The value of each lower-case hex digit; 0xff for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Up to 16 lower-case hex digits as a number: one table lookup per digit
/// and a single validity test at the end (this runs for every delivery).
fn hex(digits: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    let mut invalid = 0u8;
    for &b in digits {
        let v = HEX_VALUES[usize::from(b)];
        invalid |= v;
        n = n << 4 | u64::from(v & 0xf);
    }
    (invalid & 0xf0 == 0).then_some(n)
}

/// The parent in `value`, when it is a valid `traceparent`: version not
/// `ff`, lower-case hex ids that are not all zero, and for version 00
/// nothing after the flags.
pub(super) fn parse(value: &str) -> Option<Parsed> {
    let b = value.trim().as_bytes();
    if b.len() < LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex(&b[0..2])?;
    if version == 0xff || (version == 0 && b.len() != LEN) || (b.len() > LEN && b[LEN] != b'-') {
        return None;
    }
    let trace_id = u128::from(hex(&b[3..19])?) << 64 | u128::from(hex(&b[19..35])?);
    let span_id = hex(&b[36..52])?;
    let flags = hex(&b[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parsed {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lower-case hex into `out`, which is twice as long.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// `parent` as a version-00 `traceparent`, built on the stack: this runs
/// for most steps of every sampled event.
pub(super) fn format(parent: Parsed) -> InlineTraceparent {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut buf[3..35], &parent.trace_id.to_be_bytes());
    hex_into(&mut buf[36..52], &parent.span_id.to_be_bytes());
    if parent.sampled {
        buf[LEN - 1] = b'1';
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let p = parse(VALID).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(&format(p), VALID.as_bytes());
    }

    #[test]
    fn malformed_traceparents_are_rejected() {
        for bad in [
            "",
            "00-abc-def-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields_and_flags_keep_only_sampled() {
        let p = parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-ever").unwrap();
        assert!(p.sampled);
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled);
        assert!(format(unsampled).ends_with(b"-00"));
    }
}
