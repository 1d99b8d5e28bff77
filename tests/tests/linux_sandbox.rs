//! Linux tier, the sandbox case end to end: boot Linux with the agent
//! (~30 s here), snapshot it, then restore it in a new process, where the
//! agent answers at once; then five clones of the same snapshot in one
//! process each run their own command and write their own file without
//! seeing each other's.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hearth::{DiskConfig, RestoreOptions, SerialBuffer, SerialOutput, Vm};
use hearth_tests::linux::{guest, AgentGuest, LINUX_TIMEOUT};

const CLONES: usize = 5;
const CHILD_ENV: &str = "HEARTH_SANDBOX_CHILD_DIR";

#[test]
fn linux_sandbox_snapshot_restore_in_a_new_process_and_clones() {
    let Some(g) = guest("linux_sandbox_snapshot_restore_in_a_new_process_and_clones") else {
        return;
    };
    let a = AgentGuest::new(&g, "sandbox");
    let t = a.vm(&g).start();
    t.expect("AGENT-READY port=52", LINUX_TIMEOUT);
    let booted = Instant::now();
    t.vm.write_file("/tmp/before.txt", b"written before the snapshot\n", 0o644)
        .unwrap();
    eprintln!(
        "boot to agent: {:.1} s",
        t.vm.boot_time().map_or(0.0, |b| b.wall.as_secs_f64())
    );

    t.vm.pause().unwrap();
    let snap = a.dir.join("snap");
    let info = t.vm.snapshot(&snap).unwrap();
    eprintln!("snapshot: {info:?}");
    drop(t);
    // The disk as it was at the snapshot, once per restored VM.
    for i in 0..=CLONES {
        a.disk_copy(&format!("disk{i}.ext4"));
    }
    eprintln!("setup after boot: {:?}", booted.elapsed());

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_restores_the_sandbox",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &a.dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "child failed: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

fn restore(dir: &Path, snap: &Path, disk: &str, sock: &str) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let vm = Vm::restore(
        snap,
        &RestoreOptions::new()
            .serial(SerialOutput::Buffer(console.clone()))
            .disk(0, DiskConfig::file(dir.join(disk)))
            .vsock_uds_path(dir.join(sock)),
    )
    .unwrap();
    (vm, console)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// The new process (run by the test above).
#[test]
#[ignore = "run in a child process by linux_sandbox_snapshot_restore_in_a_new_process_and_clones"]
fn child_restores_the_sandbox() {
    let dir = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
    let snap = dir.join("snap");

    // Restore, then the first answer from the agent.
    let t0 = Instant::now();
    let (vm, console) = restore(&dir, &snap, "disk0.ext4", "r.sock");
    let restored = t0.elapsed();
    let out = vm.exec(&["cat", "/tmp/before.txt"]).unwrap();
    let answered = t0.elapsed();
    assert_eq!(out.stdout_text(), "written before the snapshot\n");
    eprintln!(
        "new process: restore call {:.2} ms, first agent answer (exec cat) {:.0} ms after the call",
        restored.as_secs_f64() * 1e3,
        answered.as_secs_f64() * 1e3
    );
    assert!(
        !console.text().contains("GUEST-READY"),
        "the guest rebooted: {}",
        console.text()
    );
    vm.stop();
    drop(vm);

    // Five clones in this process, each with its own disk copy and socket.
    let base = rss_kib();
    let t0 = Instant::now();
    let clones: Vec<(Vm, SerialBuffer)> = (1..=CLONES)
        .map(|i| restore(&dir, &snap, &format!("disk{i}.ext4"), &format!("c{i}.sock")))
        .collect();
    eprintln!("{CLONES} clones restored in {:?}", t0.elapsed());
    std::thread::scope(|s| {
        for (i, (vm, _)) in clones.iter().enumerate() {
            s.spawn(move || {
                let mine = format!("clone {i} was here\n");
                vm.write_file("/tmp/mine.txt", mine.as_bytes(), 0o644).unwrap();
                let out = vm
                    .exec(&[
                        "sh",
                        "-c",
                        &format!("echo $(( {i} * 1000 + 7 )); cat /tmp/mine.txt /tmp/before.txt"),
                    ])
                    .unwrap();
                assert_eq!(
                    out.stdout_text(),
                    format!("{}\n{mine}written before the snapshot\n", i * 1000 + 7),
                    "clone {i}"
                );
                assert_eq!(
                    vm.read_file("/tmp/mine.txt").unwrap(),
                    mine.as_bytes(),
                    "clone {i}"
                );
            });
        }
    });
    eprintln!(
        "{CLONES} clones each ran a command and wrote a file in {:?}; RSS grew {} MiB (guest memory {} MiB each)",
        t0.elapsed(),
        rss_kib().saturating_sub(base) / 1024,
        clones[0].0.config().memory_mib
    );
    for (vm, console) in &clones {
        assert!(!console.text().contains("GUEST-READY"), "{}", console.text());
        vm.stop();
    }
}
