//! Pause is all or nothing: when the event loop or a vCPU does not answer
//! a pause in time, every part of the VM runs again, `is_paused` says so,
//! the guest and its devices keep working (a virtio-blk read completes, a
//! byte of serial input gets through), and later pauses work normally.
//!
//! The misbehaving threads come from `test-hooks`. The hooks are
//! process-wide, so this file's VMs run one at a time, in one test.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use hearth::{test_hooks, DiskConfig, Error, ExitReason};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

const TIMEOUT: Duration = Duration::from_millis(300);

fn disk(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-pause-rollback-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(16 << 20).unwrap();
    p
}

/// Boots the blk scenario on two vCPUs and waits until the guest holds
/// after its write, waiting for a byte of serial input (twice).
fn holding_guest(name: &str) -> TestVm {
    let t = TestVm::scenario("blk")
        .arg("tg.blk.hold=2 tg.blk.sector=64 tg.blk.count=32")
        .vcpus(2)
        .disk(DiskConfig::file(disk(name)))
        .start();
    t.expect("BLK-HOLD\n", GUEST_TIMEOUT);
    t
}

/// After a failed pause: not paused; the guest takes serial input and
/// reads its disk back (vCPUs and event loop run); then a normal pause
/// and resume work, and the guest does it again.
fn still_runs(t: &TestVm) {
    assert!(!t.vm.is_paused(), "a failed pause must leave the VM running");
    assert_eq!(t.vm.send_serial_input(b"x"), 1);
    t.expect("BLK-READBACK-OK\n", GUEST_TIMEOUT);
    t.expect("BLK-HOLD\nBLK-READBACK-OK\nBLK-HOLD\n", GUEST_TIMEOUT);

    t.vm.pause().unwrap();
    assert!(t.vm.is_paused());
    t.vm.resume().unwrap();
    assert!(!t.vm.is_paused());
    t.vm.pause().unwrap();
    t.vm.resume().unwrap();
    assert_eq!(t.vm.send_serial_input(b"x"), 1);
    t.expect("BLK-OK\n", GUEST_TIMEOUT);
    assert_eq!(t.lines_with("BLK-READBACK-OK").len(), 2, "{}", t.console.text());
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
}

#[test]
fn a_failed_pause_leaves_every_part_running() {
    // 1. The event loop is slow to park: the vCPUs had paused and run
    //    again, and the loop's pending park is cancelled.
    let t = holding_guest("event-loop.img");
    test_hooks::set_answer_timeout(TIMEOUT);
    test_hooks::slow_event_loop_park(TIMEOUT * 3);
    match t.vm.pause() {
        Err(Error::EventLoopUnresponsive) => {}
        other => panic!("expected EventLoopUnresponsive, got {other:?}"),
    }
    // Let the slow loop reach its park point: it must not park now.
    std::thread::sleep(TIMEOUT * 4);
    test_hooks::clear();
    still_runs(&t);
    drop(t);

    // 2. vCPU 1 answers late, after vCPU 0 paused: vCPU 0 runs again, and
    //    vCPU 1's late answer is not taken for the answer to a later pause.
    let t = holding_guest("vcpu.img");
    test_hooks::set_answer_timeout(TIMEOUT);
    test_hooks::slow_vcpu_pause(1, TIMEOUT * 3);
    match t.vm.pause() {
        Err(Error::VcpuUnresponsive {
            index: 1,
            request: "pause",
        }) => {}
        other => panic!("expected vCPU 1 to be unresponsive, got {other:?}"),
    }
    std::thread::sleep(TIMEOUT * 4);
    test_hooks::clear();
    still_runs(&t);
}
