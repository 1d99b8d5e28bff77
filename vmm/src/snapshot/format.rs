//! The snapshot state file: a fixed header, then a JSON body.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "HEARTHSN"
//!      8     2  format major version (LE)
//!     10     2  format minor version (LE)
//!     12     4  reserved, zero
//!     16     8  body length in bytes (LE)
//!     24     8  CRC-64 (XZ) of the body (LE)
//!     32     …  body: the state, serde-encoded as JSON
//! ```
//!
//! Versioning (docs/SNAPSHOT.md): adding fields that have defaults is a
//! minor bump and older snapshots of the same major still load; anything
//! else is a major bump, and snapshots of another major are refused.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HEARTHSN";
/// The format this build writes.
pub const VERSION_MAJOR: u16 = 1;
/// The minor revision this build writes.
pub const VERSION_MINOR: u16 = 2;
/// Header size.
pub const HEADER_LEN: usize = 32;
/// The largest state file accepted.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Why a state file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Not a Hearth snapshot.
    #[error("not a Hearth snapshot state file (bad magic)")]
    BadMagic,
    /// Written by a newer, incompatible Hearth.
    #[error("snapshot format {major}.{minor} is newer than this Hearth reads ({VERSION_MAJOR}.{VERSION_MINOR}); upgrade Hearth")]
    Newer {
        /// Its major version.
        major: u16,
        /// Its minor version.
        minor: u16,
    },
    /// An older major version, no longer readable.
    #[error(
        "snapshot format major version {0} is no longer supported (this Hearth reads {VERSION_MAJOR}.x)"
    )]
    OldMajor(u16),
    /// Shorter than its header says.
    #[error("state file is truncated: {found} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        found: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// Over the size cap.
    #[error("state file body of {0} bytes exceeds the {MAX_STATE_BYTES}-byte limit")]
    TooLarge(u64),
    /// The body does not match its checksum.
    #[error("state file is corrupt: CRC-64 mismatch")]
    Checksum,
    /// The body does not decode.
    #[error("state file body is invalid: {0}")]
    Body(String),
}

fn crc64(bytes: &[u8]) -> u64 {
    let mut d = crc64fast::Digest::new();
    d.write(bytes);
    d.sum64()
}

/// Encodes `state` with a header.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let body = serde_json::to_vec(state).map_err(|e| FormatError::Body(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
    out.extend_from_slice(&VERSION_MINOR.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc64(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the header and checksum, then decodes the body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    let found = bytes.len() as u64;
    let header = bytes.get(..HEADER_LEN).ok_or(FormatError::Truncated {
        found,
        expected: HEADER_LEN as u64,
    })?;
    if header[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (major, minor) = (u16_at(8), u16_at(10));
    if major > VERSION_MAJOR || (major == VERSION_MAJOR && minor > VERSION_MINOR) {
        return Err(FormatError::Newer { major, minor });
    }
    if major < VERSION_MAJOR {
        return Err(FormatError::OldMajor(major));
    }
    let len = u64_at(16);
    if len > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(len));
    }
    let expected = HEADER_LEN as u64 + len;
    if found != expected {
        return Err(FormatError::Truncated { found, expected });
    }
    let body = &bytes[HEADER_LEN..];
    if crc64(body) != u64_at(24) {
        return Err(FormatError::Checksum);
    }
    serde_json::from_slice(body).map_err(|e| FormatError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u32,
        b: Vec<u8>,
    }

    fn sample() -> Vec<u8> {
        encode(&S {
            a: 7,
            b: vec![1, 2, 3],
        })
        .unwrap()
    }

    #[test]
    fn round_trip() {
        assert_eq!(
            decode::<S>(&sample()).unwrap(),
            S {
                a: 7,
                b: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn corruption_is_detected() {
        let good = sample();
        // A flipped byte anywhere in the body.
        for i in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode::<S>(&bad), Err(FormatError::Checksum), "byte {i}");
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode::<S>(&bad), Err(FormatError::BadMagic));
        assert!(matches!(
            decode::<S>(&good[..good.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            decode::<S>(&good[..10]),
            Err(FormatError::Truncated { .. })
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode::<S>(&longer), Err(FormatError::Truncated { .. })));
    }

    #[test]
    fn version_gate_and_size_cap() {
        let mut newer = sample();
        newer[8..10].copy_from_slice(&(VERSION_MAJOR + 1).to_le_bytes());
        assert_eq!(
            decode::<S>(&newer),
            Err(FormatError::Newer {
                major: VERSION_MAJOR + 1,
                minor: VERSION_MINOR
            })
        );
        // An older minor of the same major loads (its missing fields take
        // their defaults).
        let mut older_minor = sample();
        older_minor[10..12].copy_from_slice(&0u16.to_le_bytes());
        assert!(decode::<S>(&older_minor).is_ok());
        let mut newer_minor = sample();
        newer_minor[10..12].copy_from_slice(&(VERSION_MINOR + 1).to_le_bytes());
        assert!(matches!(
            decode::<S>(&newer_minor),
            Err(FormatError::Newer { .. })
        ));
        let mut old = sample();
        old[8..10].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(decode::<S>(&old), Err(FormatError::OldMajor(0)));
        let mut huge = sample();
        huge[16..24].copy_from_slice(&(MAX_STATE_BYTES + 1).to_le_bytes());
        assert_eq!(
            decode::<S>(&huge),
            Err(FormatError::TooLarge(MAX_STATE_BYTES + 1))
        );
    }

    #[test]
    fn additive_fields_with_defaults_load_old_bodies() {
        #[derive(Debug, Deserialize)]
        struct Newer {
            a: u32,
            #[serde(default)]
            added: Option<u32>,
        }
        let n: Newer = decode(&sample()).unwrap();
        assert_eq!((n.a, n.added), (7, None));
    }
}
