//! Devices across snapshot and restore: a block pattern written before the
//! snapshot reads back after it, and the `net` scenario keeps working on
//! another TAP given as an override.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hearth::{DiskConfig, ExitReason, NetConfig, RestoreOptions, SerialBuffer, SerialOutput, Vm};
use hearth_tests::netns::NetNs;
use hearth_tests::udp_echo::{boot_echo, echo_addr};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-snapdev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Boots the blk scenario with `tg.blk.hold=1` on `disk`, waits for the
/// guest to hold after its write, and snapshots it into `dir`.
fn blk_snapshot(disk: &Path, dir: &Path) {
    std::fs::File::create(disk).unwrap().set_len(16 << 20).unwrap();
    let t = TestVm::scenario("blk")
        .arg("tg.blk.hold=1 tg.blk.sector=64 tg.blk.count=32")
        .disk(DiskConfig::file(disk))
        .start();
    t.expect("BLK-WRITE-OK sector=64 count=32\n", GUEST_TIMEOUT);
    t.expect("BLK-HOLD\n", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    t.vm.snapshot(dir).unwrap();
}

fn restore(dir: &Path, options: RestoreOptions) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let vm = Vm::restore(dir, &options.serial(SerialOutput::Buffer(console.clone()))).unwrap();
    (vm, console)
}

#[test]
fn block_pattern_written_before_the_snapshot_reads_back_after_restore() {
    let (disk, dir) = (tmp("disk.img"), tmp("blk-snap"));
    blk_snapshot(&disk, &dir);

    let (vm, console) = restore(&dir, RestoreOptions::new());
    // The guest holds until a byte arrives, then reads its pattern back.
    assert_eq!(vm.send_serial_input(b"x"), 1);
    assert!(console.wait_for("BLK-OK\n", GUEST_TIMEOUT), "{}", console.text());
    assert!(
        console.text().starts_with("BLK-READBACK-OK\n"),
        "{}",
        console.text()
    );
    assert_eq!(vm.wait_timeout(GUEST_TIMEOUT), Some(ExitReason::Reset));
    drop(vm);

    // The check can fail: change one sector of the pattern on the host and
    // restore the same snapshot again.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&[0u8; 512], 70 * 512).unwrap();
    drop(f);
    let (vm, console) = restore(&dir, RestoreOptions::new());
    vm.send_serial_input(b"x");
    assert!(
        console.wait_for("BLK-FAIL readback mismatch at byte 3072", GUEST_TIMEOUT),
        "{}",
        console.text()
    );
    vm.stop();
}

#[test]
fn disk_override_restores_onto_a_copy() {
    let (disk, dir) = (tmp("orig.img"), tmp("blk-override"));
    blk_snapshot(&disk, &dir);
    let copy = tmp("copy.img");
    std::fs::copy(&disk, &copy).unwrap();
    std::fs::remove_file(&disk).unwrap();

    // Without the original the restore says which disk is missing.
    let e = Vm::restore(&dir, &RestoreOptions::new()).unwrap_err().to_string();
    assert!(e.contains(&disk.display().to_string()), "{e}");

    // A disk of another size would not be the disk the guest knows.
    let small = tmp("small.img");
    std::fs::File::create(&small).unwrap().set_len(8 << 20).unwrap();
    let e = Vm::restore(&dir, &RestoreOptions::new().disk(0, DiskConfig::file(&small)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the disk has 16384 sectors; the snapshot's disk had 32768"),
        "{e}"
    );

    let (vm, console) = restore(&dir, RestoreOptions::new().disk(0, DiskConfig::file(&copy)));
    vm.send_serial_input(b"x");
    assert!(console.wait_for("BLK-OK\n", GUEST_TIMEOUT), "{}", console.text());
    assert!(console.text().contains("BLK-READBACK-OK\n"));
    assert_eq!(vm.config().disks[0].path, copy);
    vm.stop();
}

#[test]
fn net_scenario_works_after_restore_on_another_tap() {
    let ns = NetNs::new();
    let (t, host) = boot_echo(&ns, |n| n.mac("52:54:00:00:00:07"));
    let mut buf = [0u8; 2048];
    t.vm.pause().unwrap();
    let dir = tmp("net-snap");
    t.vm.snapshot(&dir).unwrap();
    drop(t);
    drop(host);

    // A second namespace whose TAP has another name (and MAC): the host
    // side finds the guest afresh through ARP.
    let ns2 = NetNs::new();
    ns2.exec(&["link", "set", "tap0", "name", "tap9"]);
    ns2.enter();
    let host = UdpSocket::bind((ns2.host_ip, 0)).unwrap();
    host.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let (vm, _console) = restore(
        &dir,
        RestoreOptions::new().net(0, NetConfig::tap("tap9").mac("52:54:00:00:00:07")),
    );
    assert_eq!(vm.config().nets[0].tap, "tap9");
    let guest = echo_addr(&ns2);
    for i in 0..20u32 {
        let msg = format!("after-restore-{i}");
        host.send_to(msg.as_bytes(), guest).unwrap();
        let (n, from) = host.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), guest));
    }
    let out = ns2
        .command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "5", &ns2.guest_ip.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let c = vm.net_counters()[0];
    assert!(c.rx_frames >= 20 && c.tx_frames >= 20, "{c:?}");
    vm.stop();
}
