//! The copy-on-write overlay format as a damaged or hostile file: a valid
//! overlay on a small raw base is made, then its header fields, bitmap
//! and length are changed (the header's CRC recomputed or not), and the
//! result is opened and used.
//!
//! Invariants: no panic; a file that opens reads and writes in bounds
//! without error or is refused with a typed error; what is written reads
//! back; the base image never changes.

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::virtio::block::overlay::{OverlayDisk, Parent};
use hearth_devices::virtio::block::DiskBackend;

const BASE_LEN: u64 = 64 << 10;
const HEADER: usize = 4096;
const CRC_AT: usize = 56;

#[derive(Arbitrary, Debug)]
enum Op {
    Read { at: u32, len: u16 },
    Write { at: u32, len: u16, byte: u8 },
    Zeroes { at: u32, len: u16 },
    Discard { at: u32, len: u16 },
    Flush,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// (offset into the file, byte) changes after it is made.
    pokes: Vec<(u16, u8)>,
    /// Recompute the header CRC after the changes (else a changed header
    /// is refused by its CRC, which is checked too).
    fix_crc: bool,
    /// Cut the file to this length.
    truncate: Option<u16>,
    ops: Vec<Op>,
}

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("hearth-fuzz-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz dir");
        let base: Vec<u8> = (0..BASE_LEN).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.join("base.img"), base).expect("base image");
        d
    })
}

fn crc(b: &[u8]) -> u64 {
    let mut d = crc64fast::Digest::new();
    d.write(&b[..CRC_AT]);
    d.write(&[0; 8]);
    d.write(&b[CRC_AT + 8..HEADER]);
    d.sum64()
}

/// The `overlay_image` target.
pub fn overlay_image(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let dir = dir();
    let base = dir.join("base.img");
    let path = dir.join("fuzz.overlay");
    let _ = std::fs::remove_file(&path);
    let parent = || Parent::Raw(base.clone());
    drop(OverlayDisk::create(&path, parent()).expect("a fresh overlay"));
    let mut file = std::fs::read(&path).expect("overlay bytes");
    for &(at, byte) in &input.pokes {
        if let Some(b) = file.get_mut(usize::from(at)) {
            *b = byte;
        }
    }
    if input.fix_crc && file.len() >= HEADER {
        let c = crc(&file).to_le_bytes();
        file[CRC_AT..CRC_AT + 8].copy_from_slice(&c);
    }
    if let Some(n) = input.truncate {
        file.truncate(usize::from(n));
    }
    std::fs::write(&path, &file).expect("write the overlay");
    let base_before = std::fs::read(&base).expect("base");

    if let Ok(mut disk) = OverlayDisk::open(&path, parent()) {
        let cap = disk.capacity();
        assert!(cap <= BASE_LEN, "capacity {cap} beyond the base");
        for op in input.ops.iter().take(64) {
            match *op {
                Op::Read { at, len } => {
                    let (at, len) = (u64::from(at) % cap.max(1), u64::from(len));
                    let len = len.min(cap - at.min(cap));
                    let mut buf = vec![0u8; len as usize];
                    let _ = disk.read_at(&mut buf, at);
                }
                Op::Write { at, len, byte } => {
                    let (at, len) = (u64::from(at) % cap.max(1), u64::from(len));
                    let len = len.min(cap - at.min(cap));
                    let buf = vec![byte; len as usize];
                    if disk.write_at(&buf, at).is_ok() {
                        let mut back = vec![0u8; len as usize];
                        if disk.read_at(&mut back, at).is_ok() {
                            assert_eq!(back, buf, "a write at {at} of {len} did not read back");
                        }
                    }
                }
                Op::Zeroes { at, len } => {
                    let at = u64::from(at) % cap.max(1);
                    let len = u64::from(len).min(cap - at);
                    let _ = disk.write_zeroes(at, len, true);
                }
                Op::Discard { at, len } => {
                    let at = u64::from(at) % cap.max(1);
                    let len = u64::from(len).min(cap - at);
                    let _ = disk.discard(at, len);
                }
                Op::Flush => {
                    let _ = disk.flush();
                }
            }
        }
    }
    assert_eq!(std::fs::read(&base).expect("base"), base_before, "the base image changed");
}
