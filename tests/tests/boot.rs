//! Boots the bare-metal test guest through the public API.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::time::Duration;

use hearth::{BootProtocol, ExitReason};
use hearth_tests::{testguest_bzimage, TestVm, GUEST_TIMEOUT};

#[test]
fn hello_via_pvh() {
    let t = TestVm::scenario("hello").protocol(BootProtocol::Pvh).start();
    t.expect("GUEST-READY", GUEST_TIMEOUT);
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    let bt = t.vm.boot_time().expect("the guest wrote the boot-timer marker");
    assert!(bt.wall > Duration::ZERO && bt.wall < GUEST_TIMEOUT);
}

#[test]
fn hello_via_linux_64bit_protocol() {
    let t = TestVm::scenario("hello").protocol(BootProtocol::Linux).start();
    t.expect("GUEST-READY", GUEST_TIMEOUT);
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
}

#[test]
fn hello_from_bzimage() {
    let t = TestVm::scenario("hello").kernel(testguest_bzimage()).start();
    t.expect("GUEST-READY", GUEST_TIMEOUT);
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
}

#[test]
fn hello_with_pit() {
    let t = TestVm::scenario("hello").pit(true).start();
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    t.expect("GUEST-READY", Duration::ZERO);
}

#[test]
fn smp_brings_up_four_vcpus_with_distinct_apic_ids() {
    let t = TestVm::scenario("smp").vcpus(4).start();
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    let lines = t.lines_with("SMP-");
    assert_eq!(lines.len(), 1, "console: {}", t.console.text());
    let line = &lines[0];
    assert!(line.starts_with("SMP-OK cpus=4 "), "{line}");
    let mut ids: Vec<u32> = line
        .rsplit("apic_ids=")
        .next()
        .unwrap()
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2, 3]);
}

#[test]
fn smp_with_linux_protocol_and_two_vcpus() {
    let t = TestVm::scenario("smp")
        .vcpus(2)
        .protocol(BootProtocol::Linux)
        .start();
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    t.expect("SMP-OK cpus=2", Duration::ZERO);
}

#[test]
fn triple_fault_is_reported_as_a_crash() {
    let t = TestVm::scenario("fault").start();
    t.expect("FAULT-NOW", GUEST_TIMEOUT);
    match t.expect_exit(GUEST_TIMEOUT) {
        ExitReason::Crash(why) => assert!(why.contains("triple fault"), "{why}"),
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn unknown_scenario_is_reported_by_the_guest() {
    let t = TestVm::scenario("no-such-thing").start();
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    t.expect("TG-ERROR unknown scenario", Duration::ZERO);
}
