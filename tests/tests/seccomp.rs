//! seccomp on real VMs: Hearth's threads run filtered (and only they),
//! and a vCPU thread that makes a call outside its list kills the process
//! with SIGSYS (or, in log mode, does not).

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use hearth::{ExitReason, SeccompMode};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

/// (thread name, seccomp mode number, filter count) of each thread of
/// this process, from /proc.
fn threads() -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0)
        };
        out.push((
            comm.trim().to_string(),
            field("Seccomp:"),
            field("Seccomp_filters:"),
        ));
    }
    out
}

fn hearth_threads(all: &[(String, u32, u32)]) -> Vec<(String, u32, u32)> {
    all.iter()
        .filter(|(name, ..)| name.starts_with("hearth-"))
        .cloned()
        .collect()
}

#[test]
fn vm_threads_run_filtered_and_the_embedders_do_not() {
    let t = TestVm::scenario("counter")
        .arg("tg.period_ms=10")
        .vcpus(2)
        .start();
    t.expect("COUNT 2\n", GUEST_TIMEOUT);
    let all = threads();
    let ours = hearth_threads(&all);
    let names: Vec<&str> = ours.iter().map(|(n, ..)| n.as_str()).collect();
    assert!(
        names.contains(&"hearth-vcpu0") && names.contains(&"hearth-vcpu1"),
        "{names:?}"
    );
    assert!(names.contains(&"hearth-life"), "{names:?}");
    for (name, mode, filters) in &ours {
        // 2 is SECCOMP_MODE_FILTER; the allow-list plus the filter that
        // refuses opens with EACCES. The lifecycle thread has the API
        // thread's allow-list alone (it writes snapshots, so it opens
        // files).
        let want = if name == "hearth-life" { 1 } else { 2 };
        assert_eq!((*mode, *filters), (2, want), "{name}");
    }
    let me = all.iter().find(|(n, ..)| n.starts_with("vm_threads")).unwrap();
    assert_eq!(me.1, 0, "the test's own thread is not filtered");
    t.vm.stop();

    let t = TestVm::scenario("counter")
        .arg("tg.period_ms=10")
        .seccomp(SeccompMode::Off)
        .start();
    t.expect("COUNT 2\n", GUEST_TIMEOUT);
    for (name, mode, _) in hearth_threads(&threads()) {
        if name.starts_with("hearth-vcpu") {
            assert_eq!(mode, 0, "{name} with seccomp off");
        }
    }
    t.vm.stop();
}

const CHILD_ENV: &str = "HEARTH_SECCOMP_CHILD_MODE";

/// Runs `child_vm_with_a_forbidden_vcpu_syscall` in a new process.
fn run_child(mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_vm_with_a_forbidden_vcpu_syscall",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_forbidden_vcpu_syscall_kills_the_process_with_sigsys() {
    let out = run_child("enforce");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "status {:?}: {stderr}",
        out.status
    );

    // In log mode the call goes through and the VM runs on.
    let out = run_child("log");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status {:?}: {stdout}", out.status);
    assert!(stdout.contains("CHILD-VM-EXITED Reset"), "{stdout}");
}

/// The child's side (not a test of its own: it runs only when
/// `a_forbidden_vcpu_syscall_kills_the_process_with_sigsys` starts it).
#[test]
#[ignore = "run in a child process by a_forbidden_vcpu_syscall_kills_the_process_with_sigsys"]
fn child_vm_with_a_forbidden_vcpu_syscall() {
    let mode = match std::env::var(CHILD_ENV).as_deref() {
        Ok("enforce") => SeccompMode::Enforce,
        Ok("log") => SeccompMode::Log,
        other => panic!("{CHILD_ENV} is {other:?}"),
    };
    hearth::test_hooks::violate_seccomp_on_vcpu_start();
    let t = TestVm::scenario("hello").seccomp(mode).start();
    let reason = t.expect_exit(GUEST_TIMEOUT);
    assert_eq!(reason, ExitReason::Reset, "{}", t.console.text());
    // Only reached if the process survived the call.
    let name = format!("{reason:?}");
    std::io::Write::write_all(
        &mut std::io::stdout(),
        format!("CHILD-VM-EXITED {name}\n").as_bytes(),
    )
    .unwrap();
}
