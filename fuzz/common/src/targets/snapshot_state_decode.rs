//! Snapshot state files into the decoder `Snapshot::open` uses
//! (vmm/src/snapshot/format.rs, then the state's serde decoding), via
//! `hearth::fuzzing::decode_snapshot_state`.
//!
//! The input is either raw bytes (one time in four) or a header built
//! from fields plus a body, with the right CRC most of the time, so that
//! the JSON decoding of the state is reached.
//!
//! Invariants: no panic; a file whose header announces a body over the
//! 64 MiB cap, or whose length differs from the header's, is refused with
//! the matching error; a state that decodes encodes to a file that
//! decodes to the same encoding again.

use arbitrary::{Arbitrary, Unstructured};
use hearth::fuzzing::{
    decode_snapshot_state, FormatError, HEADER_LEN, MAGIC, MAX_STATE_BYTES, VERSION_MAJOR, VERSION_MINOR,
};

#[derive(Arbitrary, Debug)]
enum Len {
    Exact,
    Delta(i16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Framed {
    bad_magic: bool,
    major: u8,
    minor: u8,
    reserved: u32,
    len: Len,
    bad_crc: bool,
}

fn crc64(bytes: &[u8]) -> u64 {
    let mut d = crc64fast::Digest::new();
    d.write(bytes);
    d.sum64()
}

/// The file for `body` with header fields from `f`.
fn frame(f: &Framed, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(if f.bad_magic { b"HEARTHSX" } else { &MAGIC });
    let major = if f.major < 250 {
        VERSION_MAJOR
    } else {
        u16::from(f.major - 250)
    };
    let minor = if f.minor < 250 {
        VERSION_MINOR
    } else {
        u16::from(f.minor - 250)
    };
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&f.reserved.to_le_bytes());
    let exact = body.len() as u64;
    let len = match f.len {
        Len::Exact => exact,
        Len::Delta(d) => exact.wrapping_add(i64::from(d) as u64),
        Len::Any(n) => n,
    };
    out.extend_from_slice(&len.to_le_bytes());
    let crc = crc64(body) ^ u64::from(f.bad_crc);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn check(bytes: &[u8]) {
    let result = decode_snapshot_state(bytes);
    if bytes.len() >= HEADER_LEN && bytes[..8] == MAGIC {
        let announced = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
        let version_ok = bytes[8..10] == VERSION_MAJOR.to_le_bytes()
            && u16::from_le_bytes([bytes[10], bytes[11]]) <= VERSION_MINOR;
        if version_ok && announced > MAX_STATE_BYTES {
            assert_eq!(result, Err(FormatError::TooLarge(announced)), "size cap");
        } else if version_ok && announced != (bytes.len() - HEADER_LEN) as u64 {
            assert!(
                matches!(result, Err(FormatError::Truncated { .. })),
                "length check"
            );
        }
    }
    if let Ok(again) = result {
        let twice = decode_snapshot_state(&again);
        assert_eq!(twice.as_ref(), Ok(&again), "encode(decode(state)) is not stable");
    }
}

/// The `snapshot_state_decode` target.
pub fn snapshot_state_decode(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 4 == 0 {
        check(rest);
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(f) = Framed::arbitrary(&mut u) else {
        return;
    };
    let body = u.take_rest();
    check(&frame(&f, body));
}
