//! Copy-on-write disks with the test guest: writes land in the overlay and
//! never in the base, a snapshot freezes the disk state so that clones
//! with their own overlays see it, forks get overlays of their own, and
//! every bad overlay is refused with one line naming it.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::{Path, PathBuf};

use hearth::{DiskConfig, ExitReason, ForkOptions, RestoreOptions, SerialBuffer, SerialOutput, Snapshot, Vm};
use hearth_tests::{TestVm, GUEST_TIMEOUT};
use sha2::{Digest, Sha256};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-overlay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn base(d: &Path) -> PathBuf {
    let p = d.join("base.img");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(40503) >> 9) as u8)
        .collect();
    std::fs::write(&p, data).unwrap();
    p
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// The blk scenario on `disk`: it writes its pattern, then holds.
fn holding(disk: DiskConfig) -> TestVm {
    let t = TestVm::scenario("blk")
        .arg("tg.blk.hold=1 tg.blk.sector=64 tg.blk.count=32")
        .disk(disk)
        .start();
    t.expect("BLK-WRITE-OK sector=64 count=32\n", GUEST_TIMEOUT);
    t.expect("BLK-HOLD\n", GUEST_TIMEOUT);
    t
}

#[test]
fn writes_go_to_the_overlay_and_clones_see_the_frozen_state() {
    let d = dir("clones");
    let base = base(&d);
    let before = sha(&base);
    let t = holding(DiskConfig::file(&base).overlay(d.join("vm.overlay")));
    assert_eq!(sha(&base), before, "the base is never written");
    t.vm.pause().unwrap();
    let snap = d.join("snap");
    t.vm.snapshot(&snap).unwrap();
    drop(t);
    let s = Snapshot::open(&snap).unwrap();
    assert_eq!(
        s.config().disks[0].layers.len(),
        1,
        "the disk state is frozen into the snapshot"
    );

    // Two clones, each with its own overlay on the frozen layer: each reads
    // the pattern written before the snapshot.
    for i in 0..2 {
        let console = SerialBuffer::new();
        let vm = s
            .restore(
                &RestoreOptions::new()
                    .disk_overlay(0, d.join(format!("clone{i}.overlay")))
                    .serial(SerialOutput::Buffer(console.clone())),
            )
            .unwrap();
        vm.send_serial_input(b"x");
        assert!(console.wait_for("BLK-OK\n", GUEST_TIMEOUT), "{}", console.text());
        assert!(console.text().contains("BLK-READBACK-OK"), "{}", console.text());
        assert_eq!(vm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    }
    assert_eq!(sha(&base), before, "the base is never written");
}

#[test]
fn forked_children_get_overlays_on_the_parents_disk_state() {
    let d = dir("fork");
    let base = base(&d);
    let before = sha(&base);
    let t = holding(DiskConfig::file(&base).overlay(d.join("parent.overlay")));
    let consoles: Vec<SerialBuffer> = (0..3).map(|_| SerialBuffer::new()).collect();
    let c = consoles.clone();
    let kids =
        t.vm.fork(
            3,
            &ForkOptions::new(d.join("kids"))
                .customize(move |i, o| o.serial(SerialOutput::Buffer(c[i].clone()))),
        )
        .unwrap();
    for (kid, console) in kids.iter().zip(&consoles) {
        kid.send_serial_input(b"x");
        assert!(console.wait_for("BLK-OK\n", GUEST_TIMEOUT), "{}", console.text());
        assert!(console.text().contains("BLK-READBACK-OK"));
    }
    assert!(d.join("kids").join("child-2-disk0.overlay").exists());
    // The parent goes on with its own overlay.
    t.vm.send_serial_input(b"x");
    t.expect("BLK-OK\n", GUEST_TIMEOUT);
    assert_eq!(sha(&base), before);

    // A writable raw disk cannot be shared by children.
    let raw = d.join("raw.img");
    std::fs::copy(&base, &raw).unwrap();
    let t = holding(DiskConfig::file(&raw));
    let e =
        t.vm.fork(1, &ForkOptions::new(d.join("nope")))
            .unwrap_err()
            .to_string();
    assert!(e.contains("disk 0") && e.contains("overlay"), "{e}");
}

fn start_error(disk: DiskConfig) -> String {
    let console = SerialBuffer::new();
    let config = TestVm::scenario("blk").disk(disk).config(&console);
    let e = Vm::start(config).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn bad_overlays_are_refused_with_one_line_naming_them() {
    let d = dir("bad");
    let base = base(&d);
    let overlay = d.join("vm.overlay");
    drop(holding(DiskConfig::file(&base).overlay(&overlay)));
    let before = sha(&overlay);

    // Against another base of the same size.
    let other = d.join("other.img");
    std::fs::write(&other, vec![0u8; 16 << 20]).unwrap();
    let e = start_error(DiskConfig::file(&other).overlay(&overlay));
    assert!(
        e.contains(&overlay.display().to_string()) && e.contains("base"),
        "{e}"
    );
    assert_eq!(sha(&overlay), before, "nothing is written");

    // A missing base.
    let e = start_error(DiskConfig::file(d.join("nope.img")).overlay(&overlay));
    assert!(e.contains("nope.img"), "{e}");

    // A truncated overlay.
    let cut = d.join("cut.overlay");
    std::fs::copy(&overlay, &cut).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let e = start_error(DiskConfig::file(&base).overlay(&cut));
    assert!(e.contains("cut.overlay") && e.contains("truncated"), "{e}");

    // A read-only disk with an overlay is a config error.
    let e = hearth::VmConfig::builder("k")
        .disk(DiskConfig::file(&base).overlay(&overlay).read_only(true))
        .build()
        .unwrap_err()
        .to_string();
    assert!(e.contains("disks[0]") && e.contains("read-only"), "{e}");
}
