//! Fork: a running VM becomes N children that go on from its state, each
//! independent, sharing its memory; the parent goes on; dropping the
//! children leaks nothing.
//!
//! Alone in its test binary, so that no other test's VMs change the fd,
//! thread and mapping counts.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::time::{Duration, Instant};

use hearth::{ForkOptions, SerialBuffer, SerialOutput, VsockConfig};
use hearth_tests::{fd_count, mapping_count, thread_count, TestVm, GUEST_TIMEOUT};

fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("COUNT "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[test]
fn a_running_vm_forks_twenty_independent_children_and_leaks_nothing() {
    let dir = std::env::temp_dir().join(format!("hearth-fork-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let parent = TestVm::scenario("counter")
        .arg("tg.period_ms=10")
        .vsock(VsockConfig::new(3, dir.join("parent.vsock")))
        .start();
    parent.expect("COUNT 5\n", GUEST_TIMEOUT);
    // A warm-up fork of the same size: process-wide caches (glibc's
    // per-thread malloc arenas, its cache of thread stacks) appear on
    // first use and are then reused.
    drop(parent.vm.fork(20, &ForkOptions::new(dir.join("warm"))).unwrap());
    let (fds, threads, maps) = (fd_count(), thread_count(), mapping_count());

    let consoles: Vec<SerialBuffer> = (0..20).map(|_| SerialBuffer::new()).collect();
    let c = consoles.clone();
    let before = *counts(&parent.console.text()).last().unwrap();
    let t = Instant::now();
    let children = parent
        .vm
        .fork(
            20,
            &ForkOptions::new(dir.join("kids"))
                .customize(move |i, o| o.serial(SerialOutput::Buffer(c[i].clone()))),
        )
        .unwrap();
    eprintln!("fork(20) of a running VM: {:?}", t.elapsed());
    let forked_at = *counts(&parent.console.text()).last().unwrap();
    assert!(!parent.vm.is_paused(), "the parent goes on");

    // Each child goes on from the parent's count, on its own.
    for (i, console) in consoles.iter().enumerate() {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        let first = loop {
            if let Some(&c) = counts(&console.text()).first() {
                break c;
            }
            assert!(Instant::now() < deadline, "child {i} never counted");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            first > before && first <= forked_at + 1,
            "child {i} started at {first}; the parent was at {before} before the fork, {forked_at} after"
        );
        assert!(!console.text().contains("GUEST-READY"), "child {i} rebooted");
    }
    // Independence: a paused child stops, the others and the parent go on.
    children[0].pause().unwrap();
    let frozen = *counts(&consoles[0].text()).last().unwrap();
    let other = *counts(&consoles[1].text()).last().unwrap();
    assert!(consoles[1].wait_for(&format!("COUNT {}\n", other + 5), GUEST_TIMEOUT));
    let p = *counts(&parent.console.text()).last().unwrap();
    parent.expect(&format!("COUNT {}\n", p + 5), GUEST_TIMEOUT);
    assert_eq!(*counts(&consoles[0].text()).last().unwrap(), frozen);
    // Each child is a new machine (its own VM generation) with its own socket.
    let mut generations: Vec<u64> = children.iter().map(|c| c.generation()).collect();
    generations.push(parent.vm.generation());
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(generations.len(), 21);
    assert!(dir.join("kids").join("child-19.vsock").exists());

    drop(children);
    // Give exiting threads a moment to be reaped by the kernel.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (fd_count(), thread_count(), mapping_count()) != (fds, threads, maps) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fd_count(), fds, "file descriptors leaked");
    assert_eq!(thread_count(), threads, "threads leaked");
    assert_eq!(mapping_count(), maps, "mappings leaked");
}
