//! Boot benchmarks with the bare-metal test guest (`hello` scenario), as
//! medians over repeated runs:
//!
//! - launcher process start → `GUEST-READY` on its stdout;
//! - in-process `Vm::start` → `GUEST-READY` in the console buffer, with and
//!   without the PIT;
//! - VMM RSS beyond guest memory (smaps total minus the guest RAM mapping);
//! - drop/teardown time of an exited VM.
//!
//! `cargo bench -p hearth-cli --bench boot [-- RUNS]` (default 30 runs).
//! `HEARTH_LAUNCHER=path` measures another launcher binary (e.g. the
//! statically linked one `scripts/bench` builds).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth::{SerialBuffer, SerialOutput, Vm, VmConfig};

const MEMORY_MIB: u64 = 128;

struct Stats {
    name: &'static str,
    unit: &'static str,
    values: Vec<f64>,
}

impl Stats {
    fn new(name: &'static str, unit: &'static str) -> Self {
        Self {
            name,
            unit,
            values: Vec::new(),
        }
    }

    fn print(&mut self) {
        self.values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = self.values.len();
        let median = if n % 2 == 1 {
            self.values[n / 2]
        } else {
            (self.values[n / 2 - 1] + self.values[n / 2]) / 2.0
        };
        println!(
            "{:<44} median {:>8.3} {}   min {:>8.3}   max {:>8.3}   (n={n})",
            self.name,
            median,
            self.unit,
            self.values[0],
            self.values[n - 1]
        );
    }
}

fn launcher() -> String {
    std::env::var("HEARTH_LAUNCHER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hearth").to_string())
}

fn config(scenario: &str, console: &SerialBuffer, pit: bool) -> VmConfig {
    VmConfig::builder(hearth_testguest::elf())
        .memory_mib(MEMORY_MIB)
        .cmdline(format!("tg.scenario={scenario}"))
        .serial(SerialOutput::Buffer(console.clone()))
        .pit(pit)
        .build()
        .unwrap()
}

/// Launcher process start to the guest's line on its stdout.
fn launcher_start_to_ready() -> f64 {
    let t = Instant::now();
    let mut child = Command::new(launcher())
        .args([
            "run",
            "--memory",
            &MEMORY_MIB.to_string(),
            "--cmdline",
            "tg.scenario=hello",
            "--kernel",
        ])
        .arg(hearth_testguest::elf())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while !seen.ends_with(b"GUEST-READY\n") {
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "launcher ended without GUEST-READY: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let elapsed = t.elapsed();
    assert!(child.wait().unwrap().success());
    elapsed.as_secs_f64() * 1e3
}

/// In-process start to ready, and the teardown time of the exited VM.
fn in_process(pit: bool) -> (f64, f64) {
    let console = SerialBuffer::new();
    let cfg = config("hello", &console, pit);
    let t = Instant::now();
    let vm = Vm::start(cfg).unwrap();
    assert!(console.wait_for("GUEST-READY\n", Duration::from_secs(10)));
    let ready = t.elapsed();
    vm.wait();
    let t = Instant::now();
    drop(vm);
    (ready.as_secs_f64() * 1e3, t.elapsed().as_secs_f64() * 1e3)
}

/// RSS of a running launcher beyond its guest memory mapping, in MiB.
fn launcher_rss_beyond_guest() -> (f64, f64) {
    let mut child = Command::new(launcher())
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
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("COUNT 2\n") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut total_kib, mut guest_kib) = (0u64, 0u64);
    let mut size_kib = 0u64;
    for line in smaps.lines() {
        let field = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Size:") {
            size_kib = field(line);
        } else if line.starts_with("Rss:") {
            let rss = field(line);
            total_kib += rss;
            if size_kib == MEMORY_MIB * 1024 {
                guest_kib += rss;
            }
        }
    }
    ((total_kib - guest_kib) as f64 / 1024.0, guest_kib as f64 / 1024.0)
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    println!("hearth boot benchmark: test guest `hello`, {MEMORY_MIB} MiB, 1 vCPU, {runs} runs each");
    // Warm the page cache and the process-wide KVM handle.
    launcher_start_to_ready();
    in_process(false);

    let mut launcher = Stats::new("launcher process start -> GUEST-READY", "ms");
    let mut start = Stats::new("Vm::start -> GUEST-READY (no PIT)", "ms");
    let mut start_pit = Stats::new("Vm::start -> GUEST-READY (with PIT)", "ms");
    let mut teardown = Stats::new("drop(Vm) after guest exit", "ms");
    let mut rss = Stats::new("launcher RSS beyond guest memory", "MiB");
    let mut guest_rss = Stats::new("  (guest memory RSS, for reference)", "MiB");
    for _ in 0..runs {
        launcher.values.push(launcher_start_to_ready());
        let (ready, drop_ms) = in_process(false);
        start.values.push(ready);
        teardown.values.push(drop_ms);
        start_pit.values.push(in_process(true).0);
    }
    for _ in 0..runs.min(10) {
        let (vmm, guest) = launcher_rss_beyond_guest();
        rss.values.push(vmm);
        guest_rss.values.push(guest);
    }
    for s in [
        &mut launcher,
        &mut start,
        &mut start_pit,
        &mut teardown,
        &mut rss,
        &mut guest_rss,
    ] {
        s.print();
    }
}
