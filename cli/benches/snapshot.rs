//! Snapshot benchmarks with the test guest's `counter` scenario, medians:
//!
//! - snapshot create time;
//! - restore latency, call -> vCPUs running, in a new process
//!   (`hearth restore --timing`), and process start -> first guest output;
//! - in-process clone latency and clones per second on 2 threads;
//! - time from the restore call to the guest's first output;
//! - Pss of 50 clones.
//!
//! `cargo bench -p hearth-cli --bench snapshot [-- RUNS]` (default 20).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth::{RestoreOptions, SerialBuffer, SerialOutput, Snapshot, Vm, VmConfig};

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (m, v[0], v[n - 1])
}

fn row(name: &str, unit: &str, v: Vec<f64>) {
    let n = v.len();
    let (m, lo, hi) = median(v);
    println!("{name:<52} median {m:>9.3} {unit}   min {lo:>9.3}   max {hi:>9.3}   (n={n})");
}

fn pss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Boots `counter` with `mib` of memory, lets it count, pauses.
fn counter_vm(mib: u64, period_ms: u32) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let config = VmConfig::builder(hearth_testguest::elf())
        .memory_mib(mib)
        .cmdline(format!("tg.scenario=counter tg.period_ms={period_ms}"))
        .serial(SerialOutput::Buffer(console.clone()))
        .build()
        .unwrap();
    let vm = Vm::start(config).unwrap();
    assert!(console.wait_for("COUNT 3\n", Duration::from_secs(30)));
    vm.pause().unwrap();
    (vm, console)
}

fn restore_options(console: &SerialBuffer) -> RestoreOptions {
    RestoreOptions::new().serial(SerialOutput::Buffer(console.clone()))
}

/// Puts `mib` MiB of non-zero data at 64 MiB in a snapshot's memory file,
/// as if the guest had used that much memory.
fn add_used_memory(dir: &Path, mib: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(hearth::MEMORY_FILE))
        .unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251 + 1) as u8).collect();
    for i in 0..mib {
        f.write_all_at(&chunk, (64 << 20) + (i << 20) as u64).unwrap();
    }
}

fn snapshot_once(vm: &Vm, dir: &Path) {
    vm.snapshot(dir).unwrap();
}

fn bench_size(mib: u64, runs: usize, base: &Path) {
    println!("\n--- {mib} MiB guest ---");
    // A guest that used 10 MiB: snapshot, add the data, restore paused.
    let (vm, _) = counter_vm(mib, 1);
    let used = base.join(format!("used-{mib}"));
    snapshot_once(&vm, &used);
    drop(vm);
    add_used_memory(&used, 10);
    let vm = Vm::restore(&used, &RestoreOptions::new().paused(true)).unwrap();
    let mut create = Vec::new();
    let mut written = 0;
    let dir = base.join(format!("snap-{mib}"));
    for i in 0..runs {
        let d = base.join(format!("snap-{mib}-{i}"));
        let t = Instant::now();
        let info = vm.snapshot(&d).unwrap();
        create.push(t.elapsed().as_secs_f64() * 1e3);
        written = info.memory_written;
        if i == 0 {
            std::fs::rename(&d, &dir).unwrap();
        } else {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
    drop(vm);
    row("snapshot create, 10 MiB used (paused -> written)", "ms", create);
    println!("{:<52} {} KiB of {} MiB", "  memory written", written / 1024, mib);

    // New process: restore call -> vCPUs running, and spawn -> first output.
    let (mut call, mut first) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["restore", dir.to_str().unwrap(), "--serial", "stdout", "--timing"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        first.push(t.elapsed().as_secs_f64() * 1e3);
        child.kill().unwrap();
        child.wait().unwrap();
        let mut err = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut err)
            .unwrap();
        let us: f64 = err
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.parse().ok())
            .unwrap();
        call.push(us / 1e3);
    }
    row("restore, new process: call -> vCPUs running", "ms", call);
    row("restore, new process: spawn -> first guest output", "ms", first);

    // In process: clone latency, and time to the first output.
    let snap = Arc::new(Snapshot::open(&dir).unwrap());
    let (mut lat, mut resp) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let console = SerialBuffer::new();
        let t = Instant::now();
        let vm = snap.restore(&restore_options(&console)).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(console.wait_for("COUNT", Duration::from_secs(10)));
        resp.push(t.elapsed().as_secs_f64() * 1e3);
        drop(vm);
    }
    row("clone in process: restore call -> vCPUs running", "ms", lat);
    row("clone in process: restore call -> first guest output", "ms", resp);

    // Clones per second on 2 threads, and the memory of 50 clones, from
    // an idle guest (its timer fires once a second) so that running
    // clones do not load the 2 cores the restores need.
    let (vm, _) = counter_vm(mib, 1000);
    let idle = base.join(format!("idle-{mib}"));
    snapshot_once(&vm, &idle);
    drop(vm);
    let snap = Arc::new(Snapshot::open(&idle).unwrap());
    let pss0 = pss_kib();
    let t = Instant::now();
    let clones: Vec<Vm> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let snap = snap.clone();
                s.spawn(move || {
                    (0..25)
                        .map(|_| snap.restore(&restore_options(&SerialBuffer::new())).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let pss = pss_kib().saturating_sub(pss0);
    println!(
        "{:<52} {:>9.1} clones/s (50 in {:.1} ms)",
        "clones per second, 2 threads",
        50.0 / secs,
        secs * 1e3
    );
    println!(
        "{:<52} {:>9.1} MiB ({:.0} KiB per clone; naive {} MiB)",
        "Pss of 50 running clones",
        pss as f64 / 1024.0,
        pss as f64 / 50.0,
        50 * mib
    );
    let t = Instant::now();
    drop(clones);
    println!(
        "{:<52} {:>9.1} ms",
        "  drop of 50 clones",
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let base = std::env::temp_dir().join(format!("hearth-snapbench-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    println!("hearth snapshot benchmark: test guest `counter`, 1 vCPU, {runs} runs each");
    for mib in [128, 512] {
        bench_size(mib, runs, &base);
    }
    let _ = std::fs::remove_dir_all(&base);
}
