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

/// (Pss, RssAnon) of this process in KiB: Pss counts a page shared by N
/// mappings as 1/N, so clones sharing the memory file count it once.
fn pss_and_anon_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Anonymous:"))
}

fn counter_snapshot(name: &str) -> PathBuf {
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    t.expect("COUNT 3\n", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    let dir = snap_dir(name);
    t.vm.snapshot(&dir).unwrap();
    dir
}

#[test]
fn twenty_clones_run_independently_and_share_memory() {
    let dir = counter_snapshot("clones");
    let snap = Snapshot::open(&dir).unwrap();
    let guest_mib = snap.config().memory_mib;
    let (pss0, anon0) = pss_and_anon_kib();
    let clones: Vec<(Vm, SerialBuffer)> = (0..20)
        .map(|_| {
            let console = SerialBuffer::new();
            let vm = snap
                .restore(&RestoreOptions::new().serial(SerialOutput::Buffer(console.clone())))
                .unwrap();
            (vm, console)
        })
        .collect();
    for (i, (_, console)) in clones.iter().enumerate() {
        assert!(
            console.wait_for("COUNT 8\n", GUEST_TIMEOUT),
            "clone {i}: {}",
            console.text()
        );
    }
    // Independence: pausing one clone does not stop the others.
    clones[0].0.pause().unwrap();
    let frozen = counts(&clones[0].1.text()).last().copied().unwrap();
    let other = counts(&clones[1].1.text()).last().copied().unwrap();
    assert!(clones[1]
        .1
        .wait_for(&format!("COUNT {}\n", other + 5), GUEST_TIMEOUT));
    assert_eq!(counts(&clones[0].1.text()).last().copied().unwrap(), frozen);
    // Each clone is a new machine: its own VM generation (the ports a
    // guest agent reads to reseed its RNG and set its clock).
    let mut generations: Vec<u64> = clones.iter().map(|(vm, _)| vm.generation()).collect();
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(generations.len(), 20, "clones share a generation");
    let (pss1, anon1) = pss_and_anon_kib();
    let naive = 20 * guest_mib * 1024;
    eprintln!(
        "20 clones of a {guest_mib} MiB guest: Pss +{} KiB, anonymous +{} KiB (20 x guest memory = {naive} KiB)",
        pss1.saturating_sub(pss0),
        anon1.saturating_sub(anon0)
    );
    assert!(pss1.saturating_sub(pss0) < naive / 20, "clones must share memory");
    for (vm, _) in &clones {
        assert_eq!(vm.stop(), ExitReason::Stopped);
    }
}

#[test]
fn corrupt_snapshots_are_refused_with_clear_errors() {
    let dir = counter_snapshot("corrupt");
    let good_state = std::fs::read(dir.join(hearth::STATE_FILE)).unwrap();
    let open_err = |state: &[u8]| {
        std::fs::write(dir.join(hearth::STATE_FILE), state).unwrap();
        Snapshot::open(&dir).unwrap_err().to_string()
    };
    let mut flipped = good_state.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    assert!(
        open_err(&flipped).contains("CRC-64 mismatch"),
        "{}",
        open_err(&flipped)
    );
    let truncated = &good_state[..good_state.len() - 100];
    assert!(open_err(truncated).contains("truncated"));
    let mut magic = good_state.clone();
    magic[..8].copy_from_slice(b"NOTHEART");
    assert!(open_err(&magic).contains("bad magic"));
    let mut newer = good_state.clone();
    newer[8..10].copy_from_slice(&99u16.to_le_bytes());
    assert!(open_err(&newer).contains("newer than this Hearth reads"));
    std::fs::write(dir.join(hearth::STATE_FILE), &good_state).unwrap();
    assert!(Snapshot::open(&dir).is_ok());

    // Memory file of the wrong size, then missing.
    let mem = dir.join(hearth::MEMORY_FILE);
    let size = std::fs::metadata(&mem).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(size - 4096)
        .unwrap();
    let e = Snapshot::open(&dir).unwrap_err().to_string();
    assert!(e.contains("memory file") && e.contains("bytes"), "{e}");
    std::fs::remove_file(&mem).unwrap();
    let e = Vm::restore(&dir, &RestoreOptions::new()).unwrap_err().to_string();
    assert!(e.contains("memory") && e.contains("No such file"), "{e}");
    let e = Vm::restore(dir.join("nope"), &RestoreOptions::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read snapshot state"), "{e}");
}

#[test]
fn snapshot_needs_a_paused_vm_and_restored_vm_can_start_paused() {
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    t.expect("COUNT 1\n", GUEST_TIMEOUT);
    let e = t.vm.snapshot(snap_dir("unpaused")).unwrap_err().to_string();
    assert!(e.contains("must be paused"), "{e}");
    t.vm.pause().unwrap();
    let dir = snap_dir("paused-restore");
    t.vm.snapshot(&dir).unwrap();
    drop(t);
    let console = SerialBuffer::new();
    let vm = Vm::restore(
        &dir,
        &RestoreOptions::new()
            .paused(true)
            .serial(SerialOutput::Buffer(console.clone())),
    )
    .unwrap();
    assert!(vm.is_paused());
    assert!(
        !console.wait_for("COUNT", std::time::Duration::from_millis(200)),
        "a paused restore ran"
    );
    vm.resume().unwrap();
    assert!(console.wait_for("COUNT", GUEST_TIMEOUT));
}
