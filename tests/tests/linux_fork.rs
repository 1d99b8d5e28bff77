//! Copy-on-write disks and forks of a Linux sandbox, one boot: the root
//! file system (ext4) is a read-only base with an overlay.
//!
//! - Two clones of one snapshot, each with its own overlay on the same
//!   base, write different files through ext4; each reads back its own and
//!   not the other's; the base image is unchanged.
//! - A clone with an overlay, snapshotted and restored in a new process
//!   (`hearth restore`), still sees its files (`hearth exec`).
//! - A running clone forked into 4 children: each runs its own command and
//!   sees its own files, not its siblings'.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use hearth::{
    DiskConfig, ForkOptions, RestoreOptions, SerialBuffer, SerialOutput, Snapshot, Vm, VsockConfig,
};
use hearth_tests::linux::{guest, launcher, linux_vm, ConsoleOnPanic, LinuxGuest, Reaped, LINUX_TIMEOUT};
use sha2::{Digest, Sha256};

/// How long a restored agent may take to answer (emulated guest kernel).
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Runs `script` in `vm` and returns its stdout; panics on failure.
fn sh(vm: &Vm, who: &str, script: &str) -> String {
    let out = vm
        .agent()
        .unwrap()
        .timeout(Some(AGENT_TIMEOUT))
        .exec(&hearth::Command::new(["sh", "-c", script]))
        .unwrap_or_else(|e| panic!("{who}: {script}: {e}"));
    assert!(
        out.status.success(),
        "{who}: {script}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `/data/<name>.txt` holding `name`, and syncs.
fn write_own(vm: &Vm, name: &str) {
    sh(
        vm,
        name,
        &format!("mkdir -p /data && echo {name} > /data/{name}.txt && sync"),
    );
}

/// Which of `names` have their file in `vm`.
fn present(vm: &Vm, who: &str, names: &[&str]) -> Vec<String> {
    let script: String = names
        .iter()
        .map(|n| format!("[ -e /data/{n}.txt ] && cat /data/{n}.txt; "))
        .collect();
    sh(vm, who, &format!("{script}true"))
        .lines()
        .map(str::to_string)
        .collect()
}

fn restore(snap: &Snapshot, dir: &Path, name: &str) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let vm = snap
        .restore(
            &RestoreOptions::new()
                .serial(SerialOutput::Buffer(console.clone()))
                .vsock_uds_path(dir.join(format!("{name}.sock")))
                .disk_overlay(0, dir.join(format!("{name}.overlay"))),
        )
        .unwrap();
    (vm, console)
}

fn boot(g: &LinuxGuest, dir: &Path) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let config = linux_vm(g, "root=/dev/vda rw rootfstype=ext4 hearth.agent=1")
        .disk(DiskConfig::file(&g.rootfs).overlay(dir.join("parent.overlay")))
        .vsock(VsockConfig::new(3, dir.join("parent.sock")))
        .config(&console);
    (Vm::start(config).unwrap(), console)
}

#[test]
fn linux_overlay_clones_and_forks_keep_their_own_files() {
    let Some(g) = guest("linux_overlay_clones_and_forks_keep_their_own_files") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hearth-linux-fork-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base_sha = sha(&g.rootfs);

    // The parent: root on the shared base, writes in its overlay.
    let t0 = Instant::now();
    let (parent, console) = boot(&g, &dir);
    let _dump = ConsoleOnPanic::new("the parent", &console);
    assert!(
        console.wait_for("AGENT-READY", LINUX_TIMEOUT),
        "{}",
        console.text()
    );
    eprintln!("parent booted in {:.1} s", t0.elapsed().as_secs_f64());
    write_own(&parent, "parent");
    parent.pause().unwrap();
    let snap_dir = dir.join("snap");
    parent.snapshot(&snap_dir).unwrap();
    drop(parent);
    let snap = Snapshot::open(&snap_dir).unwrap();

    // Two clones, each on its own overlay over the snapshot's disk state.
    let (a, ca) = restore(&snap, &dir, "clone-a");
    let (b, cb) = restore(&snap, &dir, "clone-b");
    let (_da, _db) = (
        ConsoleOnPanic::new("clone a", &ca),
        ConsoleOnPanic::new("clone b", &cb),
    );
    write_own(&a, "clone-a");
    write_own(&b, "clone-b");
    let all = ["parent", "clone-a", "clone-b"];
    assert_eq!(present(&a, "clone a", &all), ["parent", "clone-a"]);
    assert_eq!(present(&b, "clone b", &all), ["parent", "clone-b"]);
    drop(b);
    assert_eq!(sha(&g.rootfs), base_sha, "the base image changed");
    eprintln!(
        "two overlay clones checked after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Clone a forked into 4 children: each writes and sees its own file.
    let kids = a
        .fork(4, &ForkOptions::new(dir.join("kids")).sync_agent(true))
        .unwrap();
    let names: Vec<String> = (0..kids.len()).map(|k| format!("child-{k}")).collect();
    std::thread::scope(|s| {
        for (kid, name) in kids.iter().zip(&names) {
            s.spawn(move || {
                let who = sh(
                    kid,
                    name,
                    &format!("echo {name} > /data/{name}.txt && sync && hostname {name} && hostname"),
                );
                assert_eq!(who.trim(), name.as_str());
            });
        }
    });
    let mut every: Vec<&str> = vec!["parent", "clone-a"];
    every.extend(names.iter().map(String::as_str));
    for (kid, name) in kids.iter().zip(&names) {
        assert_eq!(present(kid, name, &every), ["parent", "clone-a", name.as_str()]);
    }
    // The fork's parent goes on, without its children's files.
    assert_eq!(present(&a, "clone a", &every), ["parent", "clone-a"]);
    drop(kids);
    eprintln!(
        "4 forked children checked after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Clone a snapshotted, restored in a new process on a new overlay.
    a.pause().unwrap();
    let snap_a = dir.join("snap-a");
    a.snapshot(&snap_a).unwrap();
    drop(a);
    let hearth = launcher();
    let sock = dir.join("cli.sock");
    let child = Process::new(&hearth)
        .arg("restore")
        .arg(&snap_a)
        .arg("--vsock-uds")
        .arg(&sock)
        .arg("--disk")
        .arg(format!(
            "0={},overlay={}",
            g.rootfs.display(),
            dir.join("cli.overlay").display()
        ))
        .args(["--serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _child = Reaped(child);
    let deadline = Instant::now() + AGENT_TIMEOUT;
    let out = loop {
        let out = Process::new(&hearth)
            .arg("exec")
            .arg("--vsock-uds")
            .arg(&sock)
            .args(["--", "cat", "/data/clone-a.txt", "/data/parent.txt"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "clone-a\nparent\n");
    assert_eq!(sha(&g.rootfs), base_sha, "the base image changed");
    eprintln!(
        "restore in a new process checked after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
