//! Diff snapshots: a snapshot of a VM restored from snapshot S writes
//! only the pages changed since S and a reference to S; chains restore;
//! a changed parent is refused.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::{Path, PathBuf};

use hearth::{DiskConfig, RestoreOptions, SerialBuffer, SerialOutput, Snapshot, SnapshotOptions, Vm};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-diff-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The counts of the complete `COUNT n` lines (a line still being printed
/// is not one).
fn counts(text: &str) -> Vec<u64> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.strip_prefix("COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn restore(dir: &Path) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let vm = Vm::restore(
        dir,
        &RestoreOptions::new().serial(SerialOutput::Buffer(console.clone())),
    )
    .unwrap();
    (vm, console)
}

/// Lets a restored counter run on a few counts, then pauses it; returns
/// the last count it printed.
fn run_on(vm: &Vm, console: &SerialBuffer) -> u64 {
    let first = loop {
        if let Some(&c) = counts(&console.text()).first() {
            break c;
        }
        assert!(console.wait_for("\n", GUEST_TIMEOUT));
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(console.wait_for(&format!("COUNT {}\n", first + 3), GUEST_TIMEOUT));
    vm.pause().unwrap();
    *counts(&console.text()).last().unwrap()
}

#[test]
fn a_chain_of_diffs_restores_each_state_and_writes_only_changes() {
    // S: full.
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    t.expect("COUNT 5\n", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    let s = dir("s");
    let full = t.vm.snapshot(&s).unwrap();
    assert_eq!(full.parent, None, "a booted VM's snapshot is full");
    drop(t);

    // D1, D2, D3: each a diff of the one before.
    let mut parent = s.clone();
    let mut expected = Vec::new();
    for name in ["d1", "d2", "d3"] {
        let (vm, console) = restore(&parent);
        let at = run_on(&vm, &console);
        let d = dir(name);
        let info = vm.snapshot(&d).unwrap();
        eprintln!("{name}: {info:?}");
        assert_eq!(
            info.parent.as_deref(),
            Some(std::fs::canonicalize(&parent).unwrap().as_path())
        );
        assert!(
            info.memory_written < full.memory_written / 4,
            "{name} wrote {} bytes; the full snapshot {}",
            info.memory_written,
            full.memory_written
        );
        expected.push((d.clone(), at));
        parent = d;
    }
    // Each restores to its own count, the deepest through three diffs.
    for (d, at) in &expected {
        let (vm, console) = restore(d);
        let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
        let first = loop {
            if let Some(&c) = counts(&console.text()).first() {
                break c;
            }
            assert!(std::time::Instant::now() < deadline, "no COUNT line");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(first, at + 1, "{} resumed from {first}", d.display());
        vm.stop();
    }
    // A full snapshot of a restored VM, on request.
    let (vm, console) = restore(&expected[2].0);
    run_on(&vm, &console);
    let f = vm
        .snapshot_with(dir("full-again"), &SnapshotOptions::new().full(true))
        .unwrap();
    assert_eq!(f.parent, None);
}

#[test]
fn a_diff_holds_about_what_changed_and_its_parent_must_not_change() {
    // The blk scenario reads 1 MiB back into guest memory after each byte
    // of serial input: that is the change.
    let disk = dir("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    let t = TestVm::scenario("blk")
        .arg("tg.blk.hold=2 tg.blk.sector=64 tg.blk.count=2048")
        .disk(DiskConfig::file(&disk))
        .start();
    t.expect("BLK-HOLD\n", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    let s = dir("blk-s");
    let full = t.vm.snapshot(&s).unwrap();
    drop(t);

    let (vm, console) = restore(&s);
    vm.send_serial_input(b"x");
    assert!(
        console.wait_for("BLK-READBACK-OK\nBLK-HOLD\n", GUEST_TIMEOUT),
        "{}",
        console.text()
    );
    vm.pause().unwrap();
    let d = dir("blk-d");
    let info = vm.snapshot(&d).unwrap();
    drop(vm);
    eprintln!(
        "full {} bytes, diff {} bytes",
        full.memory_written, info.memory_written
    );
    assert!(
        info.memory_written >= 1 << 20 && info.memory_written < (1 << 20) + (512 << 10),
        "the diff holds about the 1 MiB that changed: {}",
        info.memory_written
    );
    let on_disk = std::fs::metadata(d.join(hearth::MEMORY_FILE)).unwrap().len();
    assert_eq!(
        on_disk, info.memory_written,
        "the diff's memory file is the changed pages"
    );

    // Restoring D shows the second hold (its change); S shows the first.
    let (vm, console) = restore(&d);
    vm.send_serial_input(b"x");
    assert!(console.wait_for("BLK-OK\n", GUEST_TIMEOUT), "{}", console.text());
    drop(vm);

    // A changed parent is refused, naming it, and nothing is written.
    let mem = s.join(hearth::MEMORY_FILE);
    let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1], 4096).unwrap();
    drop(f);
    let e = Snapshot::open(&d).unwrap_err().to_string();
    assert!(
        e.contains("parent") && e.contains(&s.display().to_string()),
        "{e}"
    );
    std::fs::remove_dir_all(&s).unwrap();
    let e = Snapshot::open(&d).unwrap_err().to_string();
    assert!(e.contains("needs its parent"), "{e}");
}
