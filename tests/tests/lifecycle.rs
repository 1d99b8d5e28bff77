//! Stop, pause/resume, many VMs at once, and teardown without leaks.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::time::Duration;

use hearth::ExitReason;
use hearth_tests::{TestVm, GUEST_TIMEOUT};

fn last_count(t: &TestVm) -> u64 {
    t.lines_with("COUNT ")
        .last()
        .and_then(|l| l["COUNT ".len()..].trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn counter_runs_until_stopped() {
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    t.expect("COUNT 3\n", GUEST_TIMEOUT);
    assert_eq!(t.vm.exit_reason(), None);
    assert_eq!(t.vm.stop(), ExitReason::Stopped);
    assert_eq!(t.vm.stop(), ExitReason::Stopped, "stop is idempotent");
}

#[test]
fn pause_freezes_the_guest_and_resume_continues_it() {
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    t.expect("COUNT 2\n", GUEST_TIMEOUT);
    t.vm.pause().unwrap();
    t.vm.pause().unwrap();
    assert!(t.vm.is_paused());
    let frozen = last_count(&t);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(last_count(&t), frozen, "the counter moved while paused");
    t.vm.resume().unwrap();
    t.expect(&format!("COUNT {}\n", frozen + 2), GUEST_TIMEOUT);
    assert!(!t.vm.is_paused());
    // A paused VM stops cleanly too.
    t.vm.pause().unwrap();
    assert_eq!(t.vm.stop(), ExitReason::Stopped);
    assert!(t.vm.resume().is_err(), "resume after exit must fail");
}

#[test]
fn eight_vms_run_at_once_in_one_process() {
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let scenario = if i % 2 == 0 { "hello" } else { "smp" };
                let t = TestVm::scenario(scenario).vcpus(1 + i % 3).start();
                let reason = t.expect_exit(GUEST_TIMEOUT);
                (reason, t.console.text())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (reason, console) = h.join().unwrap();
        assert_eq!(reason, ExitReason::Reset, "VM {i}: {console}");
        let expected = if i % 2 == 0 { "GUEST-READY" } else { "SMP-OK" };
        assert!(console.contains(expected), "VM {i}: {console}");
    }
}

#[test]
fn vm_moves_between_threads() {
    let t = TestVm::scenario("counter").arg("tg.period_ms=10").start();
    let t = std::thread::spawn(move || {
        t.expect("COUNT 1\n", GUEST_TIMEOUT);
        t
    })
    .join()
    .unwrap();
    assert_eq!(t.vm.stop(), ExitReason::Stopped);
}
