//! Linux tier, virtio-blk: Linux's own driver writes a file through our
//! device (the host then reads it out of the image), refuses writes to a
//! read-only disk, and boots with its root file system on virtio-blk.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hearth::{DiskConfig, ExitReason};
use hearth_tests::linux::{guest, linux_vm, LINUX_TIMEOUT};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-linux-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn mkfs(path: &Path, mib: u64) {
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal"])
        .arg(path)
        .arg(format!("{mib}M"))
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success());
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn linux_writes_a_file_through_virtio_blk() {
    let Some(g) = guest("linux_writes_a_file_through_virtio_blk") else {
        return;
    };
    let img = scratch("rw.img");
    mkfs(&img, 16);
    let (len, seed) = (262_144usize, 0x5au8);
    let t = linux_vm(
        &g,
        &format!(
            "hearth.checks=blk-write hearth.blk.bytes={} hearth.blk.len={len} hearth.blk.seed={seed}",
            16 << 20
        ),
    )
    .initrd(g.initramfs.clone())
    .disk(DiskConfig::file(&img))
    .start();
    t.expect("CHECK blk-write PASS", LINUX_TIMEOUT);
    assert_eq!(t.expect_exit(LINUX_TIMEOUT), ExitReason::Reset);
    // The host reads the file out of the image with debugfs.
    let out = Command::new("debugfs")
        .args(["-R", "cat /hearth-blk-test"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected: Vec<u8> = (0..len).map(|i| (((i * 31 + 7) & 0xff) as u8) ^ seed).collect();
    assert_eq!(
        out.stdout.len(),
        len,
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == expected,
        "the file in the image differs from what the guest wrote"
    );
    let fsck = Command::new("e2fsck").arg("-fn").arg(&img).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn linux_refuses_writes_to_a_read_only_disk() {
    let Some(g) = guest("linux_refuses_writes_to_a_read_only_disk") else {
        return;
    };
    let img = scratch("ro.img");
    mkfs(&img, 8);
    let before = sha256(&img);
    let t = linux_vm(&g, "hearth.checks=blk-ro")
        .initrd(g.initramfs.clone())
        .disk(DiskConfig::file(&img).read_only(true))
        .start();
    t.expect("CHECK blk-ro PASS", LINUX_TIMEOUT);
    assert_eq!(t.expect_exit(LINUX_TIMEOUT), ExitReason::Reset);
    assert_eq!(sha256(&img), before, "a read-only disk changed");
    assert_eq!(t.vm.disk_counters()[0].writes, 0);
}

#[test]
fn linux_boots_with_root_on_virtio_blk() {
    let Some(g) = guest("linux_boots_with_root_on_virtio_blk") else {
        return;
    };
    let root = scratch("root.img");
    std::fs::copy(&g.rootfs, &root).unwrap();
    let t = linux_vm(&g, "root=/dev/vda ro rootfstype=ext4 hearth.checks=rootfs")
        .disk(DiskConfig::file(&root).read_only(true))
        .start();
    t.expect("CHECK rootfs PASS", LINUX_TIMEOUT);
    t.expect("HEARTH-INIT DONE pass=1 fail=0", LINUX_TIMEOUT);
    assert_eq!(t.expect_exit(LINUX_TIMEOUT), ExitReason::Reset);
    let ready = t.vm.boot_time().expect("boot-timer marker");
    eprintln!(
        "root on virtio-blk: user space after {:.1} s",
        ready.wall.as_secs_f64()
    );
}
