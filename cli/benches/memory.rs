//! What a VM costs in host memory beyond its guest RAM, as Rss, Pss and
//! private (dirty) memory, for the launcher and for VMs embedded in one
//! process, with Firecracker beside the launcher when `FIRECRACKER` names
//! its binary.
//!
//! The guest is the test guest's `counter` scenario (1 vCPU, 128 MiB): it
//! prints `COUNT n` forever, so the VMM is measured running, after
//! `COUNT 2` (Firecracker: after 1 s, as its serial device drops the
//! guest's string writes). Figures come from /proc/PID/smaps: every mapping but the
//! guest RAM one (the 128 MiB anonymous mapping), in MiB.
//!
//! `cargo bench -p hearth-cli --bench memory [-- RUNS]` (default 5).
//! `HEARTH_LAUNCHER=path` measures another launcher binary (scripts/bench
//! passes the statically linked one); `FIRECRACKER=path` adds Firecracker
//! (booted with `--no-api --no-seccomp --config-file`, same kernel and
//! command line).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hearth::{SerialBuffer, SerialOutput, Vm, VmConfig};

const MEMORY_MIB: u64 = 128;

/// Sums of smaps fields, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    pss: u64,
    private_dirty: u64,
    private: u64,
}

impl Mem {
    fn sub(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss.saturating_sub(o.rss),
            pss: self.pss.saturating_sub(o.pss),
            private_dirty: self.private_dirty.saturating_sub(o.private_dirty),
            private: self.private.saturating_sub(o.private),
        }
    }
}

/// (everything but guest RAM, guest RAM) of process `pid`: mappings of
/// exactly `guest_kib` are guest RAM.
fn smaps(pid: u32, guest_kib: u64) -> (Mem, Mem) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut vmm, mut guest) = (Mem::default(), Mem::default());
    let mut is_guest = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(key), Some(value)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(kib) = value.parse::<u64>() else {
            continue;
        };
        let target = if is_guest { &mut guest } else { &mut vmm };
        match key {
            "Size:" => is_guest = kib == guest_kib,
            "Rss:" => target.rss += kib,
            "Pss:" => target.pss += kib,
            "Private_Dirty:" => {
                target.private_dirty += kib;
                target.private += kib;
            }
            "Private_Clean:" => target.private += kib,
            _ => {}
        }
    }
    (vmm, guest)
}

fn wait_for_count(child: &mut Child) {
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("COUNT 2\n") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the VMM ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // Keep draining so the guest never blocks on a full pipe.
    std::thread::spawn(move || while out.read(&mut buf).is_ok_and(|n| n > 0) {});
}

fn measure(mut child: Child, prints: bool) -> Mem {
    if prints {
        wait_for_count(&mut child);
        std::thread::sleep(Duration::from_millis(200));
    } else {
        // Firecracker's serial device drops the test guest's `rep outsb`
        // writes: give the guest time to boot and count, and check the
        // VMM is still running (a crashed guest would have ended it).
        std::thread::sleep(Duration::from_millis(1000));
        assert!(child.try_wait().unwrap().is_none(), "the VMM exited early");
    }
    let (vmm, _) = smaps(child.id(), MEMORY_MIB * 1024);
    child.kill().unwrap();
    child.wait().unwrap();
    vmm
}

fn launcher_path() -> String {
    std::env::var("HEARTH_LAUNCHER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hearth").to_string())
}

fn spawn_hearth() -> Child {
    Command::new(launcher_path())
        .args([
            "run",
            "--memory",
            &MEMORY_MIB.to_string(),
            "--cmdline",
            "tg.scenario=counter",
            "--kernel",
        ])
        .arg(hearth_testguest::elf())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn hearth_launcher() -> Mem {
    measure(spawn_hearth(), true)
}

/// `k` VMMs running at once: each one's memory beyond guest RAM (Pss
/// shares the binary's pages among them).
fn fleet(k: usize, spawn: impl Fn() -> (Child, bool)) -> Vec<Mem> {
    let mut children: Vec<Child> = (0..k)
        .map(|_| {
            let (mut c, prints) = spawn();
            if prints {
                wait_for_count(&mut c);
            }
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let out = children
        .iter()
        .map(|c| smaps(c.id(), MEMORY_MIB * 1024).0)
        .collect();
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    out
}

/// The launcher's (beyond guest RAM, guest RAM), once.
fn smaps_of_launcher_guest() -> (Mem, Mem) {
    let mut child = spawn_hearth();
    wait_for_count(&mut child);
    let m = smaps(child.id(), MEMORY_MIB * 1024);
    child.kill().unwrap();
    child.wait().unwrap();
    m
}

fn spawn_firecracker(binary: &Path, dir: &Path) -> Child {
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": hearth_testguest::elf(),
            "boot_args": "tg.scenario=counter",
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEMORY_MIB },
    });
    let path = dir.join("fc.json");
    if !path.exists() {
        let tmp = dir.join("fc.json.tmp");
        std::fs::write(&tmp, config.to_string()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    Command::new(binary)
        // Its seccomp filters are written for its musl build; a glibc build
        // (all this machine can build) needs them off.
        .args(["--no-api", "--no-seccomp", "--level", "Error", "--config-file"])
        .arg(&path)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn firecracker(binary: &Path, dir: &Path) -> Mem {
    measure(spawn_firecracker(binary, dir), false)
}

/// Memory per VM when `n` VMs run in this process, beyond what the
/// process had before, guest RAM included (the kernel merges adjacent
/// guest mappings, so they cannot be told apart by size here), in KiB.
fn embedded(n: usize) -> Mem {
    let pid = std::process::id();
    let total = |(a, b): (Mem, Mem)| Mem {
        rss: a.rss + b.rss,
        pss: a.pss + b.pss,
        private_dirty: a.private_dirty + b.private_dirty,
        private: a.private + b.private,
    };
    let before = total(smaps(pid, MEMORY_MIB * 1024));
    let mut vms = Vec::new();
    for _ in 0..n {
        let console = SerialBuffer::new();
        let config = VmConfig::builder(hearth_testguest::elf())
            .memory_mib(MEMORY_MIB)
            .cmdline("tg.scenario=counter")
            .serial(SerialOutput::Buffer(console.clone()))
            .build()
            .unwrap();
        let vm = Vm::start(config).unwrap();
        vms.push((vm, console));
    }
    for (_, c) in &vms {
        assert!(c.wait_for("COUNT 2\n", Duration::from_secs(30)));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = total(smaps(pid, MEMORY_MIB * 1024));
    drop(vms);
    let per = |m: Mem| Mem {
        rss: m.rss / n as u64,
        pss: m.pss / n as u64,
        private_dirty: m.private_dirty / n as u64,
        private: m.private / n as u64,
    };
    per(after.sub(before))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn report(name: &str, samples: &[Mem]) {
    let col = |f: fn(&Mem) -> u64| median(samples.iter().map(|m| f(m) as f64 / 1024.0).collect());
    println!(
        "{name:<44} Rss {:>6.2}  Pss {:>6.2}  Private_Dirty {:>6.2}  Private {:>6.2}  MiB  (median of {})",
        col(|m| m.rss),
        col(|m| m.pss),
        col(|m| m.private_dirty),
        col(|m| m.private),
        samples.len()
    );
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    println!(
        "memory beyond guest RAM: test guest `counter`, {MEMORY_MIB} MiB, 1 vCPU, measured after COUNT 2, {runs} runs"
    );
    let dir = std::env::temp_dir().join(format!("hearth-membench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fc = std::env::var_os("FIRECRACKER").map(std::path::PathBuf::from);
    // Alternate the two VMMs so that machine noise hits both alike.
    let (mut hearth, mut firecracker_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        hearth.push(hearth_launcher());
        if let Some(fc) = &fc {
            firecracker_runs.push(firecracker(fc, &dir));
        }
    }
    report("hearth launcher", &hearth);
    if fc.is_some() {
        report("firecracker", &firecracker_runs);
    } else {
        println!("(set FIRECRACKER=path to measure Firecracker beside it)");
    }
    let k = 10;
    report(
        &format!("hearth launcher, {k} running at once, each"),
        &fleet(k, || (spawn_hearth(), true)),
    );
    if let Some(fc) = &fc {
        let d = dir.clone();
        report(
            &format!("firecracker, {k} running at once, each"),
            &fleet(k, || (spawn_firecracker(fc, &d), false)),
        );
    }
    let (_, guest) = smaps_of_launcher_guest();
    report("  (the launcher's guest RAM, for reference)", &[guest]);
    for n in [1, 10, 50] {
        let all: Vec<Mem> = (0..runs.min(3)).map(|_| embedded(n)).collect();
        report(
            &format!("embedded, {n} VMs in one process, per VM, guest RAM included"),
            &all,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
