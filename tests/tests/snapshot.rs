//! Snapshot and restore with the test guest.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::PathBuf;

use hearth::{ExitReason, RestoreOptions, SerialBuffer, SerialOutput, Snapshot, Vm};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

fn snap_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-snap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[test]
fn counter_continues_after_restore_in_process() {
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    t.expect("COUNT 5\n", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    let at = *counts(&t.console.text()).last().unwrap();
    let dir = snap_dir("counter");
    let info = t.vm.snapshot(&dir).unwrap();
    eprintln!("snapshot: {info:?}");
    drop(t);

    let console = SerialBuffer::new();
    let vm = Vm::restore(
        &dir,
        &RestoreOptions::new().serial(SerialOutput::Buffer(console.clone())),
    )
    .unwrap();
    assert!(
        console.wait_for(&format!("COUNT {}\n", at + 3), GUEST_TIMEOUT),
        "console: {}",
        console.text()
    );
    let after = counts(&console.text());
    assert!(after[0] > at, "restarted from {} (was at {at})", after[0]);
    assert!(!console.text().contains("GUEST-READY"), "the guest rebooted");
    assert_eq!(vm.stop(), ExitReason::Stopped);
    assert_eq!(Snapshot::open(&dir).unwrap().config().vcpus, 1);
}
