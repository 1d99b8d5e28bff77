//! Sequential start/drop cycles leave no fd, thread or mapping behind.
//!
//! Alone in its test binary, so no other test's VMs change the counts.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::time::{Duration, Instant};

use hearth::ExitReason;
use hearth_tests::{fd_count, mapping_count, thread_count, TestVm, GUEST_TIMEOUT};

fn cycle(i: usize) {
    let scenario = if i.is_multiple_of(2) { "hello" } else { "counter" };
    let t = TestVm::scenario(scenario).vcpus(1 + (i % 2) as u32).start();
    if i.is_multiple_of(2) {
        assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    } else {
        t.expect("GUEST-READY", GUEST_TIMEOUT);
    }
}

#[test]
fn hundred_start_drop_cycles_leak_nothing() {
    // Warm up with the same pattern: the process-wide KVM handle, the kick
    // signal handler, glibc's per-thread malloc arenas and its cache of
    // exited threads' stacks all appear on first use and are then reused.
    for i in 0..4 {
        cycle(i);
    }
    let (fds, threads, maps) = (fd_count(), thread_count(), mapping_count());
    for i in 0..100 {
        cycle(i);
    }
    // Give exiting threads a moment to be reaped by the kernel.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (fd_count(), thread_count(), mapping_count()) != (fds, threads, maps) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fd_count(), fds, "file descriptors leaked");
    assert_eq!(thread_count(), threads, "threads leaked");
    assert_eq!(mapping_count(), maps, "mappings leaked");
}
