//! Overlay tests on temporary files.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::virtio::block::backend::DiskBackend;

const BS: u64 = 4096;

/// A fresh directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("hearth-ovl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A base image of `size` pseudo-random bytes; returns its contents.
fn make_base(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let data = Rng(seed).bytes(size as usize);
    std::fs::write(path, &data).unwrap();
    data
}

fn sha(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn raw(p: &Path) -> Parent {
    Parent::Raw(p.into())
}

/// Reads the whole disk in 1 MiB pieces and compares it with `model`.
fn check(disk: &mut dyn DiskBackend, model: &[u8]) {
    assert_eq!(disk.capacity(), model.len() as u64);
    let mut buf = vec![0u8; 1 << 20];
    for (k, want) in model.chunks(1 << 20).enumerate() {
        let got = &mut buf[..want.len()];
        disk.read_at(got, (k as u64) << 20).unwrap();
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
            panic!("byte {} differs", ((k as u64) << 20) + i as u64);
        }
    }
}

fn write(disk: &mut OverlayDisk, model: &mut [u8], data: &[u8], at: u64) {
    disk.write_at(data, at).unwrap();
    model[at as usize..at as usize + data.len()].copy_from_slice(data);
}

#[test]
fn unwritten_blocks_read_the_base_and_the_base_is_untouched() {
    let d = Dir::new("basic");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    let mut model = make_base(&base, 1 << 20, 1);
    let before = sha(&base);
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    check(&mut disk, &model);
    let mut rng = Rng(2);
    for i in [0u64, 5, 6, 255] {
        write(&mut disk, &mut model, &rng.bytes(4096), i * BS);
    }
    check(&mut disk, &model);
    assert_eq!(disk.present_blocks(), 4);
    disk.flush().unwrap();
    drop(disk);
    assert_eq!(sha(&base), before, "the base is never written");
    assert!(OverlayDisk::create(&ovl, raw(&base)).is_err_and(|e| matches!(e, OverlayError::Exists { .. })));
    let e = refusal(OverlayDisk::create_with(&base, raw(&base), CreateMode::Replace));
    assert!(matches!(e, OverlayError::InChain { .. }), "{e}");
    let p = Parent::Overlay(ovl.clone(), Box::new(raw(&base)));
    let e = refusal(OverlayDisk::create_with(&ovl, p, CreateMode::Replace));
    assert!(matches!(e, OverlayError::InChain { .. }), "{e}");
    assert_eq!(sha(&base), before);
    let mut disk = OverlayDisk::create_with(&ovl, raw(&base), CreateMode::Replace).unwrap();
    check(&mut disk, &make_base(&d.path("again.img"), 1 << 20, 1));
}

#[test]
fn partial_writes_at_odd_offsets() {
    let d = Dir::new("partial");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    // Not a multiple of the block size: the last block is short.
    let mut model = make_base(&base, (1 << 20) + 1536, 3);
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    let mut rng = Rng(4);
    let sectors = model.len() as u64 / 512;
    for round in 0..300 {
        let at = rng.below(sectors);
        let n = 1 + rng.below(20).min(sectors - at - 1);
        write(&mut disk, &mut model, &rng.bytes((n * 512) as usize), at * 512);
        if round % 50 == 0 {
            check(&mut disk, &model);
        }
    }
    // Spanning a block boundary at odd sectors, and the short last block.
    write(&mut disk, &mut model, &[0xa5; 1024], 3 * BS - 512);
    let last = model.len() as u64 - 512;
    write(&mut disk, &mut model, &[0x5a; 512], last);
    check(&mut disk, &model);
    drop(disk);
    let mut disk = OverlayDisk::open(&ovl, raw(&base)).unwrap();
    check(&mut disk, &model);
}

#[test]
fn large_requests_cross_present_and_absent_runs() {
    let d = Dir::new("large");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    let mut model = make_base(&base, 16 << 20, 5);
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    let mut rng = Rng(6);
    for i in (0..4096).step_by(7) {
        write(&mut disk, &mut model, &rng.bytes(4096), i * BS);
    }
    write(&mut disk, &mut model, &rng.bytes(5 << 20), (3 << 20) + 512);
    write(&mut disk, &mut model, &rng.bytes(3 << 20), 10 << 20);
    let mut big = vec![0u8; 7 << 20];
    disk.read_at(&mut big, (1 << 20) + 1024).unwrap();
    assert!(big == model[(1 << 20) + 1024..(8 << 20) + 1024]);
    check(&mut disk, &model);
}

#[test]
fn write_zeroes_and_discard() {
    let d = Dir::new("zeroes");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    let mut model = make_base(&base, 1 << 20, 7);
    let orig = model.clone();
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    let mut rng = Rng(8);
    write(&mut disk, &mut model, &rng.bytes(16 * 4096), 16 * BS);
    let zero = |disk: &mut OverlayDisk, model: &mut [u8], at: u64, len: u64, unmap: bool| {
        disk.write_zeroes(at, len, unmap).unwrap();
        model[at as usize..(at + len) as usize].fill(0);
    };
    // Absent blocks, partial at both ends.
    zero(&mut disk, &mut model, 512, 3 * BS, true);
    // Present blocks, partial at both ends, and whole ones in between.
    zero(&mut disk, &mut model, 17 * BS + 1024, 4 * BS, false);
    // Inside one block.
    zero(&mut disk, &mut model, 40 * BS + 512, 1024, false);
    check(&mut disk, &model);
    // Discard: whole present blocks read zeros; absent ones keep the base;
    // partial blocks are untouched.
    disk.discard(24 * BS + 512, 8 * BS).unwrap();
    model[25 * BS as usize..32 * BS as usize].fill(0);
    disk.discard(100 * BS, 4 * BS).unwrap();
    check(&mut disk, &model);
    assert_eq!(
        model[100 * BS as usize..104 * BS as usize],
        orig[100 * BS as usize..104 * BS as usize]
    );
    drop(disk);
    let mut disk = OverlayDisk::open(&ovl, raw(&base)).unwrap();
    check(&mut disk, &model);
    // Zeroed whole blocks are holes: the file stays small.
    disk.write_zeroes(0, 1 << 20, true).unwrap();
    check(&mut disk, &[0; 1 << 20]);
    disk.flush().unwrap();
    let blocks = std::fs::metadata(&ovl).unwrap().blocks();
    assert!(blocks * 512 <= 64 << 10, "{blocks} sectors allocated");
}

#[test]
fn flush_or_drop_then_reopen_keeps_the_bitmap() {
    let d = Dir::new("reopen");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    let mut model = make_base(&base, 2 << 20, 9);
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    let id = disk.layer_id();
    write(&mut disk, &mut model, &[1; 8192], 8192);
    disk.flush().unwrap();
    // The flushed bitmap is in the file, before any drop.
    let mut byte = [0u8];
    File::open(&ovl).unwrap().read_exact_at(&mut byte, 4096).unwrap();
    assert_eq!(byte[0], 0b1100);
    let mut other = OverlayDisk::open(&ovl, raw(&base)).unwrap();
    other.skip_bitmap_on_drop = true;
    check(&mut other, &model);
    drop(other);
    write(&mut disk, &mut model, &[2; 4096], 300 * BS);
    drop(disk);
    let mut disk = OverlayDisk::open(&ovl, raw(&base)).unwrap();
    assert_eq!(disk.layer_id(), id);
    assert_eq!(disk.present_blocks(), 3);
    check(&mut disk, &model);
    assert_eq!(inspect(&ovl).unwrap().parent_path, base);
}

#[test]
fn two_overlays_on_one_base_are_independent() {
    let d = Dir::new("two");
    let base = d.path("base.img");
    let orig = make_base(&base, 1 << 20, 10);
    let (mut ma, mut mb) = (orig.clone(), orig.clone());
    let mut a = OverlayDisk::create(&d.path("a.ovl"), raw(&base)).unwrap();
    let mut b = OverlayDisk::create(&d.path("b.ovl"), raw(&base)).unwrap();
    assert_ne!(a.layer_id(), b.layer_id());
    write(&mut a, &mut ma, &[0xaa; 6000], 1000);
    write(&mut b, &mut mb, &[0xbb; 6000], 3000);
    check(&mut a, &ma);
    check(&mut b, &mb);
}

/// base ← l1 ← l2 ← live, each with its own writes; returns the model.
fn three_deep(d: &Dir) -> (OverlayDisk, Vec<u8>) {
    let base = d.path("base.img");
    let mut model = make_base(&base, 4 << 20, 11);
    let mut rng = Rng(12);
    let mut l1 = OverlayDisk::create(&d.path("l1.ovl"), raw(&base)).unwrap();
    for _ in 0..200 {
        write(&mut l1, &mut model, &rng.bytes(4096), rng.below(1024) * BS);
    }
    write(&mut l1, &mut model, &rng.bytes(1 << 20), 2 << 20);
    let p1 = l1.as_parent();
    drop(l1);
    let mut l2 = OverlayDisk::create(&d.path("l2.ovl"), p1).unwrap();
    for _ in 0..200 {
        let at = rng.below(8192) * 512;
        write(&mut l2, &mut model, &rng.bytes(1536), at.min((4 << 20) - 1536));
    }
    l2.write_zeroes(2 << 20, 64 << 10, true).unwrap();
    model[2 << 20..(2 << 20) + (64 << 10)].fill(0);
    let p2 = l2.as_parent();
    drop(l2);
    let mut live = OverlayDisk::create(&d.path("live.ovl"), p2).unwrap();
    for _ in 0..100 {
        write(&mut live, &mut model, &rng.bytes(4096), rng.below(1024) * BS);
    }
    check(&mut live, &model);
    (live, model)
}

#[test]
fn overlay_on_a_frozen_layer_sees_both() {
    let d = Dir::new("stack");
    let base = d.path("base.img");
    let mut model = make_base(&base, 1 << 20, 13);
    let mut l1 = OverlayDisk::create(&d.path("l1.ovl"), raw(&base)).unwrap();
    write(&mut l1, &mut model, &[1; 8192], 0);
    drop(l1);
    let parent = Parent::Overlay(d.path("l1.ovl"), Box::new(raw(&base)));
    let layer = parent.open().unwrap();
    let mut first = [0u8; 16];
    layer.read_at(&mut first, 4090).unwrap();
    assert_eq!(first, [1; 16]);
    let mut top = OverlayDisk::create(&d.path("top.ovl"), parent.clone()).unwrap();
    write(&mut top, &mut model, &[2; 4096], 4096);
    write(&mut top, &mut model, &[3; 100 * 512], 20 * BS);
    check(&mut top, &model);
    drop(top);
    let mut top = OverlayDisk::open(&d.path("top.ovl"), parent).unwrap();
    check(&mut top, &model);
}

#[test]
fn freeze_collapses_a_three_deep_chain() {
    let d = Dir::new("freeze");
    let (mut live, model) = three_deep(&d);
    let merged = live.merged_bytes();
    let dest = d.path("frozen.ovl");
    assert_eq!(live.freeze_into(&dest).unwrap(), merged);
    assert!(matches!(
        live.freeze_into(&dest),
        Err(OverlayError::Exists { .. })
    ));
    // The live chain is unchanged and the frozen layer sits on the base.
    check(&mut live, &model);
    let h = inspect(&dest).unwrap();
    assert!(matches!(h.parent, ParentRef::Raw(_)));
    assert_eq!(h.parent_path, d.path("base.img"));
    let frozen = Parent::Overlay(dest.clone(), Box::new(raw(&d.path("base.img"))));
    let layer = frozen.open().unwrap();
    let (mut a, mut b) = (vec![0u8; BS as usize], vec![0u8; BS as usize]);
    for i in 0..model.len() as u64 / BS {
        layer.read_at(&mut a, i * BS).unwrap();
        live.read_at(&mut b, i * BS).unwrap();
        assert!(a == b, "block {i} differs");
    }
    let Layer::Frozen(f) = &layer else {
        panic!("not frozen")
    };
    assert_eq!(f.present_blocks() * BS, merged);
    // Sparse: only present blocks take space, and zeroed ones do not.
    let alloc = std::fs::metadata(&dest).unwrap().blocks() * 512;
    assert!(alloc < merged, "{alloc} bytes allocated for {merged}");
    // A new live layer on the frozen one.
    let mut next = OverlayDisk::create(&d.path("next.ovl"), frozen).unwrap();
    check(&mut next, &model);
    assert_eq!(next.merged_bytes(), merged);
}

fn refusal(r: Result<OverlayDisk, OverlayError>) -> OverlayError {
    match r {
        Ok(_) => panic!("opened"),
        Err(e) => e,
    }
}

#[test]
fn refuses_another_or_a_modified_base() {
    let d = Dir::new("wrongbase");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    make_base(&base, 1 << 20, 14);
    drop(OverlayDisk::create(&ovl, raw(&base)).unwrap());
    // Another file, another size.
    let other = d.path("other.img");
    make_base(&other, 2 << 20, 14);
    let e = refusal(OverlayDisk::open(&ovl, raw(&other)));
    let msg = e.to_string();
    assert!(
        matches!(e, OverlayError::WrongBase { mismatch: "size", .. }),
        "{msg}"
    );
    assert!(
        msg.contains(&*ovl.to_string_lossy()) && msg.contains(&*other.to_string_lossy()),
        "{msg}"
    );
    assert!(
        msg.contains(&*base.to_string_lossy()) && msg.contains("size 1048576"),
        "{msg}"
    );
    // Same size, same mtime, other content.
    let mtime = std::fs::metadata(&base).unwrap().modified().unwrap();
    make_base(&other, 1 << 20, 15);
    File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let e = refusal(OverlayDisk::open(&ovl, raw(&other)));
    assert!(
        matches!(
            e,
            OverlayError::WrongBase {
                mismatch: "content hash",
                ..
            }
        ),
        "{e}"
    );
    // The base touched after the overlay was made.
    let later = mtime + std::time::Duration::from_secs(1);
    File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let e = refusal(OverlayDisk::open(&ovl, raw(&base)));
    assert!(
        matches!(
            e,
            OverlayError::WrongBase {
                mismatch: "mtime",
                ..
            }
        ),
        "{e}"
    );
    File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(OverlayDisk::open(&ovl, raw(&base)).is_ok());
    // Missing base.
    std::fs::rename(&base, d.path("moved.img")).unwrap();
    let e = refusal(OverlayDisk::open(&ovl, raw(&base)));
    assert!(matches!(e, OverlayError::ParentMissing { .. }), "{e}");
    assert!(
        e.to_string().contains("x.ovl") && e.to_string().contains("base.img"),
        "{e}"
    );
    // The moved base is accepted: identity, not path, is checked.
    assert!(OverlayDisk::open(&ovl, raw(&d.path("moved.img"))).is_ok());
}

#[test]
fn refuses_damaged_files() {
    let d = Dir::new("damaged");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    make_base(&base, 1 << 20, 16);
    drop(OverlayDisk::create(&ovl, raw(&base)).unwrap());
    let good = std::fs::read(&ovl).unwrap();
    let open_with = |bytes: &[u8]| {
        std::fs::write(&ovl, bytes).unwrap();
        refusal(OverlayDisk::open(&ovl, raw(&base)))
    };
    let e = open_with(&good[..good.len() - 4096]);
    assert!(
        matches!(e, OverlayError::Truncated { .. }) && e.to_string().contains("is truncated"),
        "{e}"
    );
    let e = open_with(&good[..100]);
    assert!(matches!(e, OverlayError::Truncated { .. }), "{e}");
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(open_with(&b), OverlayError::BadMagic { .. }));
    let mut b = good.clone();
    b[8] = 2;
    assert!(matches!(
        open_with(&b),
        OverlayError::UnsupportedVersion { version: 2, .. }
    ));
    for at in [20, 50, 73, 200, 4095] {
        let mut b = good.clone();
        b[at] ^= 0x10;
        let e = open_with(&b);
        assert!(matches!(e, OverlayError::HeaderCrc { .. }), "byte {at}: {e}");
    }
    // A header whose CRC is right but whose data offset does not fit.
    std::fs::write(&ovl, &good).unwrap();
    let good_header = inspect(&ovl).unwrap();
    let mut h = good_header.clone();
    h.data_offset = 1 << 50;
    let mut b = good.clone();
    b[..4096].copy_from_slice(&h.encode().unwrap());
    let e = open_with(&b);
    assert!(matches!(e, OverlayError::Truncated { .. }), "{e}");
    h.data_offset = 4096;
    b[..4096].copy_from_slice(&h.encode().unwrap());
    assert!(matches!(open_with(&b), OverlayError::BadHeader { .. }));
    let mut h = good_header;
    h.bitmap_offset = 0;
    b[..4096].copy_from_slice(&h.encode().unwrap());
    let e = open_with(&b);
    assert!(e.to_string().contains("bitmap offset 0"), "{e}");
    std::fs::write(&ovl, &good).unwrap();
    assert!(OverlayDisk::open(&ovl, raw(&base)).is_ok());
}

#[test]
fn refuses_another_parent_layer() {
    let d = Dir::new("wronglayer");
    let base = d.path("base.img");
    make_base(&base, 1 << 20, 17);
    drop(OverlayDisk::create(&d.path("l1.ovl"), raw(&base)).unwrap());
    drop(OverlayDisk::create(&d.path("l1b.ovl"), raw(&base)).unwrap());
    let p1 = Parent::Overlay(d.path("l1.ovl"), Box::new(raw(&base)));
    drop(OverlayDisk::create(&d.path("top.ovl"), p1.clone()).unwrap());
    let p1b = Parent::Overlay(d.path("l1b.ovl"), Box::new(raw(&base)));
    let e = refusal(OverlayDisk::open(&d.path("top.ovl"), p1b));
    assert!(matches!(e, OverlayError::WrongLayer { .. }), "{e}");
    assert!(
        e.to_string().contains("l1.ovl") && e.to_string().contains("l1b.ovl"),
        "{e}"
    );
    // The raw base given where a layer was recorded, and the reverse.
    let e = refusal(OverlayDisk::open(&d.path("top.ovl"), raw(&base)));
    assert!(matches!(e, OverlayError::ParentKind { .. }), "{e}");
    let e = refusal(OverlayDisk::open(&d.path("l1b.ovl"), p1.clone()));
    assert!(matches!(e, OverlayError::ParentKind { .. }), "{e}");
    assert!(OverlayDisk::open(&d.path("top.ovl"), p1).is_ok());
    // A frozen layer checks its own parent too.
    let other = d.path("other.img");
    make_base(&other, 1 << 20, 18);
    let bad = Parent::Overlay(d.path("l1.ovl"), Box::new(raw(&other)));
    assert!(matches!(bad.open(), Err(OverlayError::WrongBase { .. })));
}

#[test]
fn a_crash_leaves_old_or_new_blocks() {
    let d = Dir::new("crash");
    let (base, ovl) = (d.path("base.img"), d.path("x.ovl"));
    let orig = make_base(&base, 1 << 20, 19);
    let mut model = orig.clone();
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    let mut rng = Rng(20);
    for i in 0..64 {
        write(&mut disk, &mut model, &rng.bytes(4096), i * 2 * BS);
    }
    disk.flush().unwrap();
    let flushed = model.clone();
    // Unflushed: rewrites of present blocks, first writes, partial writes,
    // zeroing.
    for _ in 0..200 {
        let at = rng.below(2048) * 512;
        write(&mut disk, &mut model, &rng.bytes(1024), at.min((1 << 20) - 1024));
    }
    disk.write_zeroes(200 * BS, 8 * BS, true).unwrap();
    model[200 * BS as usize..208 * BS as usize].fill(0);
    disk.skip_bitmap_on_drop = true;
    drop(disk);
    let mut disk = OverlayDisk::open(&ovl, raw(&base)).unwrap();
    let mut got = vec![0u8; BS as usize];
    for i in 0..256 {
        let r = (i * BS) as usize..((i + 1) * BS) as usize;
        disk.read_at(&mut got, i * BS).unwrap();
        assert!(
            got == model[r.clone()] || got == flushed[r],
            "block {i} is neither old nor new"
        );
    }
    // A block whose data reached the file but not its bit reads the base,
    // and a partial write to it modifies the base's contents.
    let mut model = flushed;
    for i in 0..256u64 {
        if i % 2 == 1 {
            disk.read_at(&mut got, i * BS).unwrap();
            assert!(got[..] == orig[(i * BS) as usize..((i + 1) * BS) as usize]);
        }
    }
    let mut reread = vec![0u8; 1 << 20];
    disk.read_at(&mut reread, 0).unwrap();
    model.copy_from_slice(&reread);
    write(&mut disk, &mut model, &[9; 512], 201 * BS + 512);
    check(&mut disk, &model);
}

#[test]
fn random_operations_match_a_model() {
    let d = Dir::new("model");
    let base = d.path("base.img");
    let size = (3 << 20) + 512;
    let mut model = make_base(&base, size, 21);
    let mut parent = raw(&base);
    let mut disk = OverlayDisk::create(&d.path("0.ovl"), parent.clone()).unwrap();
    let mut rng = Rng(22);
    let sectors = size / 512;
    for round in 0..600 {
        let at = rng.below(sectors);
        let n = 1 + rng.below(64).min(sectors - at - 1);
        let (at, len) = (at * 512, n * 512);
        match rng.below(10) {
            0 => {
                disk.write_zeroes(at, len, rng.below(2) == 0).unwrap();
                model[at as usize..(at + len) as usize].fill(0);
            }
            1 => {
                disk.discard(at, len).unwrap();
                let mut now = vec![0u8; len as usize];
                disk.read_at(&mut now, at).unwrap();
                model[at as usize..(at + len) as usize].copy_from_slice(&now);
            }
            2 => disk.flush().unwrap(),
            _ => write(&mut disk, &mut model, &rng.bytes(len as usize), at),
        }
        if round % 150 == 149 {
            // Stack a new layer on this one.
            parent = disk.as_parent();
            drop(disk);
            disk = OverlayDisk::create(&d.path(&format!("{round}.ovl")), parent.clone()).unwrap();
        }
        if round % 50 == 0 {
            check(&mut disk, &model);
        }
    }
    check(&mut disk, &model);
    let dest = d.path("frozen.ovl");
    disk.freeze_into(&dest).unwrap();
    let mut top =
        OverlayDisk::create(&d.path("top.ovl"), Parent::Overlay(dest, Box::new(raw(&base)))).unwrap();
    check(&mut top, &model);
}

#[test]
fn unwritten_blocks_cost_nothing() {
    let d = Dir::new("sparse");
    let base = d.path("base.img");
    File::create(&base).unwrap().set_len(1 << 30).unwrap();
    let ovl = d.path("x.ovl");
    let mut disk = OverlayDisk::create(&ovl, raw(&base)).unwrap();
    assert_eq!(disk.header().bitmap_len, 32 << 10);
    assert_eq!(
        std::fs::metadata(&ovl).unwrap().len(),
        4096 + (32 << 10) + (1 << 30)
    );
    disk.write_at(&[1; 4096], 512 << 20).unwrap();
    disk.flush().unwrap();
    let alloc = std::fs::metadata(&ovl).unwrap().blocks() * 512;
    assert!(alloc <= 64 << 10, "{alloc} bytes allocated");
    assert_eq!(disk.merged_bytes(), 4096);
}
