//! Linux tier, clones are new machines (docs/AGENT.md): boot Linux with
//! the agent (one boot), sync and snapshot it, wait 5 s, then
//!
//! - restore two clones in this process, each with its own disk copy and
//!   vsock socket; the library refreshes their agents (REFRESH) right
//!   after the restore, and `wait_agent_refresh` gives "the window", the
//!   time from the restore call to the agent's answer;
//! - resume the original VM: the parent's continuation;
//! - restore a third clone in a new process through the launcher
//!   (`hearth restore DIR --vsock-uds P --disk 0=COPY`) and ask it through
//!   `hearth exec --vsock-uds P`.
//!
//! In each, `head -c 16 /dev/urandom` and `/proc/sys/kernel/random/uuid`
//! must differ from every other (a clone that kept the parent's RNG state
//! repeats the parent's bytes: with the agent's reseed disabled, all four
//! printed the same), and `date +%s` in each clone must be within 2 s of
//! the host's (the parent's clock is put an hour back before the
//! snapshot, so a clone whose clock was not set is an hour off). A
//! clone's agent answers and has the files written before the snapshot.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth::{DiskConfig, RefreshOutcome, RestoreOptions, SerialBuffer, SerialOutput, Snapshot, Vm};
use hearth_tests::linux::{guest, launcher, AgentGuest, ConsoleOnPanic, Reaped, LINUX_TIMEOUT};

/// What every machine is asked.
const PROBE: &str = "head -c 16 /dev/urandom | od -An -tx1; cat /proc/sys/kernel/random/uuid; date +%s";
/// How long the snapshot ages before the clones start.
const AGE: Duration = Duration::from_secs(5);
/// A clone's clock may be this far from the host's.
const CLOCK_SLACK: u64 = 2;
/// How long the refresh may take at most here.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(120);

/// What one machine answered to [`PROBE`].
#[derive(Debug, Clone)]
struct Probe {
    who: String,
    random: String,
    uuid: String,
    date: u64,
    /// The host's clock before and after the question.
    host: (u64, u64),
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Parses [`PROBE`]'s output: the bytes (one line of hex), the uuid, the
/// date.
fn parse_probe(who: &str, text: &str, host: (u64, u64)) -> Probe {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "{who}: unexpected output {text:?}");
    let random = lines[0].split_whitespace().collect::<Vec<_>>().join("");
    assert_eq!(random.len(), 32, "{who}: {text:?}");
    assert_eq!(lines[1].len(), 36, "{who}: {text:?}");
    Probe {
        who: who.to_string(),
        random,
        uuid: lines[1].to_string(),
        date: lines[2]
            .parse()
            .unwrap_or_else(|_| panic!("{who}: date {:?}", lines[2])),
        host,
    }
}

/// Runs [`PROBE`] in `vm`.
fn probe_vm(who: &str, vm: &Vm) -> Probe {
    let before = unix_now();
    let out = vm.exec(&["sh", "-c", PROBE]).unwrap();
    let after = unix_now();
    assert!(out.status.success(), "{who}: {out:?}");
    parse_probe(who, &out.stdout_text(), (before, after))
}

fn check_clock(p: &Probe) {
    assert!(
        p.date + CLOCK_SLACK >= p.host.0 && p.date <= p.host.1 + CLOCK_SLACK,
        "{}: the guest's clock says {}, the host's was {}..{}: the clock was not set after the restore",
        p.who,
        p.date,
        p.host.0,
        p.host.1
    );
}

fn all_differ(probes: &[Probe]) {
    for (i, a) in probes.iter().enumerate() {
        for b in &probes[i + 1..] {
            assert_ne!(
                a.random, b.random,
                "{} and {} read the same /dev/urandom bytes",
                a.who, b.who
            );
            assert_ne!(a.uuid, b.uuid, "{} and {} made the same uuid", a.who, b.who);
        }
    }
}

/// A clone restored in this process.
struct Clone {
    name: String,
    vm: Vm,
    console: SerialBuffer,
    restore_call: Duration,
}

fn restore_clone(snap: &Snapshot, dir: &Path, name: &str, disk: &Path) -> Clone {
    let console = SerialBuffer::new();
    let t0 = Instant::now();
    let vm = snap
        .restore(
            &RestoreOptions::new()
                .serial(SerialOutput::Buffer(console.clone()))
                .disk(0, DiskConfig::file(disk))
                .vsock_uds_path(dir.join(format!("{name}.sock"))),
        )
        .unwrap();
    Clone {
        name: name.to_string(),
        vm,
        console,
        restore_call: t0.elapsed(),
    }
}

#[test]
fn linux_clones_are_new_machines() {
    let Some(g) = guest("linux_clones_are_new_machines") else {
        return;
    };
    let hearth = launcher();
    let a = AgentGuest::new(&g, "sandbox");
    let t = a.vm(&g).start();
    let _dump = ConsoleOnPanic::new("the parent", &t.console);
    t.expect("AGENT-READY port=52", LINUX_TIMEOUT);
    eprintln!(
        "boot to the agent: {:.1} s",
        t.vm.boot_time().map_or(0.0, |b| b.wall.as_secs_f64())
    );
    let agent = t.vm.agent().unwrap();
    agent
        .write_file("/tmp/before.txt", b"written before the snapshot\n", 0o644)
        .unwrap();
    let before = probe_vm("the parent before the snapshot", &t.vm);
    // Put the parent's clock an hour back. A clone whose clock is right
    // then had it set by its agent: on PVM the guest's TSC is not rewound
    // by a restore, so a snapshot's age alone leaves no trace in its clock
    // (on hardware KVM it does: the clone would be AGE behind).
    let out =
        t.vm.exec(&[
            "sh",
            "-c",
            "date -s @$(( $(date +%s) - 3600 )) >/dev/null; date +%s",
        ])
        .unwrap();
    let skewed: u64 = out.stdout_text().trim().parse().unwrap();
    assert!(
        skewed + 3000 < unix_now(),
        "the parent's clock did not go back: {out:?}"
    );

    // Sync, then snapshot; the disk is copied while the VM is paused, so
    // each clone's disk matches its memory.
    agent.sync().unwrap();
    t.vm.pause().unwrap();
    let snap_dir = a.dir.join("snap");
    let info = t.vm.snapshot(&snap_dir).unwrap();
    eprintln!("snapshot: {info:?}");
    let disks: Vec<PathBuf> = ["c1.ext4", "c2.ext4", "cli.ext4"]
        .iter()
        .map(|n| a.disk_copy(n))
        .collect();
    std::thread::sleep(AGE);

    // Two clones in this process.
    let snap = Snapshot::open(&snap_dir).unwrap();
    let clones: Vec<Clone> = ["clone-1", "clone-2"]
        .iter()
        .zip(&disks)
        .map(|(name, disk)| restore_clone(&snap, &a.dir, name, disk))
        .collect();
    let guards: Vec<ConsoleOnPanic> = clones
        .iter()
        .map(|c| ConsoleOnPanic::new(&c.name, &c.console))
        .collect();
    for c in &clones {
        match c.vm.wait_agent_refresh(REFRESH_TIMEOUT) {
            Some(RefreshOutcome::Refreshed { after, answer }) => {
                eprintln!(
                    "{}: restore call {:.1} ms; the window (restore start to the agent's REFRESHED): {} ms; {answer:?}",
                    c.name,
                    c.restore_call.as_secs_f64() * 1e3,
                    after.as_millis()
                );
                assert!(answer.restored, "{}: the agent saw no new generation", c.name);
            }
            other => panic!("{}: no refresh: {other:?}", c.name),
        }
        let console = c.console.text();
        assert!(console.contains("AGENT-REFRESHED generation="), "{console}");
        // The agent says when a reseed or the clock failed.
        assert!(!console.contains("hearth-init: agent:"), "{}: {console}", c.name);
    }
    // The parent goes on.
    t.vm.resume().unwrap();

    let mut probes = vec![before];
    for c in &clones {
        let p = probe_vm(&c.name, &c.vm);
        check_clock(&p);
        probes.push(p);
    }
    probes.push(probe_vm("the parent after the snapshot", &t.vm));

    // A clone's agent answers, and has what was written before.
    assert_eq!(
        clones[0].vm.read_file("/tmp/before.txt").unwrap(),
        b"written before the snapshot\n"
    );
    let out = clones[1].vm.exec(&["cat", "/tmp/before.txt"]).unwrap();
    assert_eq!(out.stdout_text(), "written before the snapshot\n");
    for c in &clones {
        assert!(!c.console.text().contains("GUEST-READY"), "{} rebooted", c.name);
    }

    // A clone in a new process, through the launcher.
    let sock = a.dir.join("cli.sock");
    let console_file = a.dir.join("cli.console");
    let t0 = Instant::now();
    let child = Process::new(&hearth)
        .arg("restore")
        .arg(&snap_dir)
        .arg("--vsock-uds")
        .arg(&sock)
        .arg("--disk")
        .arg(format!("0={}", disks[2].display()))
        .arg("--serial")
        .arg(format!("file:{}", console_file.display()))
        .arg("--timing")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let cli_console = || std::fs::read_to_string(&console_file).unwrap_or_default();
    let deadline = Instant::now() + REFRESH_TIMEOUT;
    while !cli_console().contains("AGENT-REFRESHED") {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("hearth restore exited: {status}; console:\n{}", cli_console());
        }
        assert!(
            Instant::now() < deadline,
            "no refresh in the launcher's clone; console:\n{}",
            cli_console()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "launcher clone: AGENT-REFRESHED on its console {} ms after `hearth restore` was started",
        t0.elapsed().as_millis()
    );
    let before = unix_now();
    let out = Process::new(&hearth)
        .arg("exec")
        .arg("--vsock-uds")
        .arg(&sock)
        .args(["--", "sh", "-c", PROBE])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let after = unix_now();
    assert!(
        out.status.success(),
        "hearth exec: {:?}: {}\nconsole:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cli_console()
    );
    let p = parse_probe(
        "the launcher's clone",
        &String::from_utf8_lossy(&out.stdout),
        (before, after),
    );
    check_clock(&p);
    probes.push(p);
    let out = Process::new(&hearth)
        .arg("exec")
        .arg("--vsock-uds")
        .arg(&sock)
        .args(["--", "cat", "/tmp/before.txt"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written before the snapshot\n"
    );

    for p in &probes {
        eprintln!(
            "{:<32} urandom {} uuid {} date {} (host {}..{})",
            p.who, p.random, p.uuid, p.date, p.host.0, p.host.1
        );
    }
    all_differ(&probes);

    let _ = child.0.kill();
    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    eprintln!("hearth restore ({status}): {}", stderr.trim());
    drop(guards);
    for c in clones {
        c.vm.stop();
    }
    t.vm.stop();
}
