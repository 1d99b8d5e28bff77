//! The on-disk header: layout, encoding, validation (see `docs/DISK.md`).
//!
//! ```text
//! offset size field (little-endian)
//!      0    8 magic "HRTHOVL1"
//!      8    4 format version (1)
//!     12    4 block size (4096)
//!     16    8 virtual size in bytes (the parent's size, a multiple of 512)
//!     24    8 bitmap offset (4096)
//!     32    8 bitmap length in bytes (ceil(blocks / 8), padded to 4096)
//!     40    8 data offset (bitmap offset + length, 4096-aligned)
//!     48    8 this layer's id (random, non-zero)
//!     56    8 CRC-64/XZ of the 4096 header bytes with this field zero
//!     64    4 parent kind: 1 raw image, 2 overlay layer
//!     68    4 reserved (zero)
//!     72    8 parent size in bytes
//!     80    8 raw parent: mtime, ns since the epoch (i64); else zero
//!     88   32 raw parent: SHA-256 of its first and last 64 KiB; else zero
//!    120    8 overlay parent: its layer id; else zero
//!    128    4 parent path length in bytes (at most 3964)
//!    132    … parent path, UTF-8; the rest of the header is zero
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::OverlayError;

/// Bytes of the header.
pub const HEADER_SIZE: u64 = 4096;
/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"HRTHOVL1";
/// The format version written and read.
pub const VERSION: u32 = 1;
/// The unit of copy-on-write, in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes hashed at each end of a raw parent.
pub const HASH_SPAN: u64 = 64 << 10;
/// Largest virtual size read or made (its bitmap is 2 GiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Alignment of the bitmap and data regions.
const ALIGN: u64 = 4096;
const CRC_AT: usize = 56;
const PATH_AT: usize = 132;
/// Longest parent path the header holds.
pub const MAX_PATH: usize = HEADER_SIZE as usize - PATH_AT;

const KIND_RAW: u32 = 1;
const KIND_OVERLAY: u32 = 2;

/// What identifies a raw parent image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// SHA-256 of the first and last [`HASH_SPAN`] bytes (the whole file
    /// when it is at most twice that).
    pub hash: [u8; 32],
}

impl fmt::Display for RawIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "size {}, mtime {}, hash ", self.size, self.mtime_ns)?;
        for b in &self.hash[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…")
    }
}

/// The parent an overlay was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentRef {
    /// A raw image.
    Raw(RawIdentity),
    /// Another overlay layer.
    Overlay {
        /// Its virtual size.
        size: u64,
        /// Its layer id.
        layer_id: u64,
    },
}

impl ParentRef {
    /// The parent's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Self::Raw(id) => id.size,
            Self::Overlay { size, .. } => *size,
        }
    }

    /// "raw image" or "overlay layer", for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Raw(_) => "raw image",
            Self::Overlay { .. } => "overlay layer",
        }
    }
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Where the bitmap starts.
    pub bitmap_offset: u64,
    /// Bytes reserved for the bitmap.
    pub bitmap_len: u64,
    /// Where block 0's data is.
    pub data_offset: u64,
    /// This layer's id.
    pub layer_id: u64,
    /// The parent's identity.
    pub parent: ParentRef,
    /// The parent's path when the overlay was made.
    pub parent_path: PathBuf,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// CRC-64/XZ of a header with its CRC field taken as zero.
fn header_crc(b: &[u8; HEADER_SIZE as usize]) -> u64 {
    let mut d = crc64fast::Digest::new();
    d.write(&b[..CRC_AT]);
    d.write(&[0; 8]);
    d.write(&b[CRC_AT + 8..]);
    d.sum64()
}

/// Blocks of a disk of `size` bytes (the last one may be short).
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

impl Header {
    /// The header of a new layer of `virtual_size` bytes on `parent`.
    pub fn new(virtual_size: u64, layer_id: u64, parent: ParentRef, parent_path: &Path) -> Self {
        let bitmap_len = block_count(virtual_size).div_ceil(8).next_multiple_of(ALIGN);
        Self {
            virtual_size,
            bitmap_offset: HEADER_SIZE,
            bitmap_len,
            data_offset: HEADER_SIZE + bitmap_len,
            layer_id,
            parent,
            parent_path: parent_path.into(),
        }
    }

    /// Blocks of the virtual disk.
    pub fn blocks(&self) -> u64 {
        block_count(self.virtual_size)
    }

    /// The file length the layout needs.
    pub fn file_len(&self) -> u64 {
        self.data_offset.saturating_add(self.virtual_size)
    }

    /// The header's bytes (the parent path must be UTF-8 and fit).
    pub fn encode(&self) -> Result<[u8; HEADER_SIZE as usize], OverlayError> {
        let bad_path = |detail: String| OverlayError::BadPath {
            path: self.parent_path.clone(),
            detail,
        };
        let path = self
            .parent_path
            .to_str()
            .ok_or_else(|| bad_path("it is not UTF-8".into()))?
            .as_bytes();
        if path.len() > MAX_PATH {
            return Err(bad_path(format!("{} bytes, at most {MAX_PATH} fit", path.len())));
        }
        let mut b = [0u8; HEADER_SIZE as usize];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &MAGIC);
        put(8, &VERSION.to_le_bytes());
        put(12, &(BLOCK_SIZE as u32).to_le_bytes());
        put(16, &self.virtual_size.to_le_bytes());
        put(24, &self.bitmap_offset.to_le_bytes());
        put(32, &self.bitmap_len.to_le_bytes());
        put(40, &self.data_offset.to_le_bytes());
        put(48, &self.layer_id.to_le_bytes());
        match &self.parent {
            ParentRef::Raw(id) => {
                put(64, &KIND_RAW.to_le_bytes());
                put(72, &id.size.to_le_bytes());
                put(80, &id.mtime_ns.to_le_bytes());
                put(88, &id.hash);
            }
            ParentRef::Overlay { size, layer_id } => {
                put(64, &KIND_OVERLAY.to_le_bytes());
                put(72, &size.to_le_bytes());
                put(120, &layer_id.to_le_bytes());
            }
        }
        put(128, &(path.len() as u32).to_le_bytes());
        put(PATH_AT, path);
        let crc = header_crc(&b);
        b[CRC_AT..CRC_AT + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Decodes and checks the header of overlay `file`, `file_len` bytes
    /// long: magic, version, CRC, fields, and that the regions fit.
    pub fn decode(b: &[u8; HEADER_SIZE as usize], file: &Path, file_len: u64) -> Result<Self, OverlayError> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[..8]);
        if magic != MAGIC {
            return Err(OverlayError::BadMagic {
                path: file.into(),
                found: magic,
            });
        }
        let version = le_u32(b, 8);
        if version != VERSION {
            return Err(OverlayError::UnsupportedVersion {
                path: file.into(),
                version,
                supported: VERSION,
            });
        }
        let (stored, computed) = (le_u64(b, CRC_AT), header_crc(b));
        if stored != computed {
            return Err(OverlayError::HeaderCrc {
                path: file.into(),
                stored,
                computed,
            });
        }
        let bad = |detail: String| OverlayError::BadHeader {
            path: file.into(),
            detail,
        };
        let block_size = le_u32(b, 12);
        if u64::from(block_size) != BLOCK_SIZE {
            return Err(bad(format!(
                "block size {block_size} (only {BLOCK_SIZE} is supported)"
            )));
        }
        let parent_size = le_u64(b, 72);
        let parent = match le_u32(b, 64) {
            KIND_RAW => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&b[88..120]);
                ParentRef::Raw(RawIdentity {
                    size: parent_size,
                    mtime_ns: le_u64(b, 80) as i64,
                    hash,
                })
            }
            KIND_OVERLAY => ParentRef::Overlay {
                size: parent_size,
                layer_id: le_u64(b, 120),
            },
            k => return Err(bad(format!("parent kind {k} (1 raw image, 2 overlay)"))),
        };
        let path_len = le_u32(b, 128) as usize;
        let path = b
            .get(PATH_AT..PATH_AT.saturating_add(path_len))
            .ok_or_else(|| bad(format!("parent path of {path_len} bytes does not fit")))?;
        let path = std::str::from_utf8(path).map_err(|_| bad("parent path is not UTF-8".into()))?;
        let h = Self {
            virtual_size: le_u64(b, 16),
            bitmap_offset: le_u64(b, 24),
            bitmap_len: le_u64(b, 32),
            data_offset: le_u64(b, 40),
            layer_id: le_u64(b, 48),
            parent,
            parent_path: PathBuf::from(path),
        };
        h.check_layout(file, file_len)?;
        Ok(h)
    }

    /// Checks sizes and that bitmap and data fit in `file_len` bytes.
    fn check_layout(&self, file: &Path, file_len: u64) -> Result<(), OverlayError> {
        let bad = |detail: String| OverlayError::BadHeader {
            path: file.into(),
            detail,
        };
        if self.virtual_size > MAX_VIRTUAL_SIZE {
            return Err(bad(format!(
                "virtual size {} is over the {MAX_VIRTUAL_SIZE}-byte limit",
                self.virtual_size
            )));
        }
        if !self.virtual_size.is_multiple_of(512) {
            return Err(bad(format!(
                "virtual size {} is not a multiple of 512",
                self.virtual_size
            )));
        }
        if self.virtual_size != self.parent.size() {
            return Err(bad(format!(
                "virtual size {} differs from the parent's size {}",
                self.virtual_size,
                self.parent.size()
            )));
        }
        let need = self.blocks().div_ceil(8);
        if self.bitmap_offset < HEADER_SIZE || !self.bitmap_offset.is_multiple_of(ALIGN) {
            return Err(bad(format!(
                "bitmap offset {} is inside the header or unaligned",
                self.bitmap_offset
            )));
        }
        if self.bitmap_len < need {
            return Err(bad(format!(
                "bitmap of {} bytes cannot hold {} blocks",
                self.bitmap_len,
                self.blocks()
            )));
        }
        let bitmap_end = self.bitmap_offset.checked_add(self.bitmap_len);
        if !self.data_offset.is_multiple_of(ALIGN) || bitmap_end.is_none_or(|e| self.data_offset < e) {
            return Err(bad(format!(
                "data offset {} overlaps the bitmap ({} + {}) or is unaligned",
                self.data_offset, self.bitmap_offset, self.bitmap_len
            )));
        }
        match self.data_offset.checked_add(self.virtual_size) {
            Some(end) if end <= file_len => Ok(()),
            end => Err(OverlayError::Truncated {
                path: file.into(),
                detail: match end {
                    Some(end) => format!("{file_len} bytes, the layout needs {end}"),
                    None => "the data region's end overflows".into(),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        let id = RawIdentity {
            size: 10 << 20,
            mtime_ns: -5,
            hash: [7; 32],
        };
        Header::new(10 << 20, 42, ParentRef::Raw(id), Path::new("/a/base.img"))
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        assert_eq!(h.bitmap_len, 4096);
        assert_eq!(h.data_offset, 8192);
        let b = h.encode().unwrap();
        assert_eq!(Header::decode(&b, Path::new("x"), h.file_len()).unwrap(), h);
        let o = Header::new(
            1 << 40,
            1,
            ParentRef::Overlay {
                size: 1 << 40,
                layer_id: 9,
            },
            Path::new("p"),
        );
        assert_eq!(o.bitmap_len, (1 << 40) / 4096 / 8);
        let b = o.encode().unwrap();
        assert_eq!(Header::decode(&b, Path::new("x"), o.file_len()).unwrap(), o);
    }

    #[test]
    fn header_refusals() {
        let h = sample();
        let b = h.encode().unwrap();
        let p = Path::new("x");
        assert!(matches!(
            Header::decode(&b, p, h.file_len() - 1),
            Err(OverlayError::Truncated { .. })
        ));
        let mut c = b;
        c[100] ^= 1;
        assert!(matches!(
            Header::decode(&c, p, h.file_len()),
            Err(OverlayError::HeaderCrc { .. })
        ));
        let mut bad = h.clone();
        bad.data_offset = 4096;
        let b = bad.encode().unwrap();
        let e = Header::decode(&b, p, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("overlaps the bitmap"), "{e}");
        let huge = 1 << 47;
        let big = Header::new(
            huge,
            1,
            ParentRef::Overlay {
                size: huge,
                layer_id: 2,
            },
            p,
        );
        let e = Header::decode(&big.encode().unwrap(), p, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let mut long = h;
        long.parent_path = PathBuf::from("a".repeat(MAX_PATH + 1));
        assert!(matches!(long.encode(), Err(OverlayError::BadPath { .. })));
        long.parent_path = PathBuf::from("a".repeat(MAX_PATH));
        assert!(long.encode().is_ok());
    }
}
