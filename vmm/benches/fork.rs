//! Fork and diff-snapshot benchmarks with the test guest's `memory`
//! scenario (it touches a given amount of RAM, then rewrites a given
//! amount per byte of serial input):
//!
//! - `fork(N)` of a running 128 MiB VM (16 MiB touched): time until the N
//!   children run, and Pss per child;
//! - diff snapshots of a 512 MiB guest with 256 MiB touched: create time
//!   and bytes written for 1 MiB and 32 MiB changed since the restore,
//!   against a full snapshot of the same VM;
//! - restore of a depth-4 diff chain against a depth-1 (full) snapshot.
//!
//! `cargo bench -p hearth --bench fork [-- RUNS]` (default 5), medians.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearth::{
    ForkOptions, RestoreOptions, SerialBuffer, SerialOutput, Snapshot, SnapshotOptions, Vm, VmConfig,
};

const WAIT: Duration = Duration::from_secs(120);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir()
        .join(format!("hearth-forkbench-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn boot(memory_mib: u64, touch_mib: u64, change_kib: u64, poll_ms: u64) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let vm = Vm::start(
        VmConfig::builder(hearth_testguest::elf())
            .memory_mib(memory_mib)
            .cmdline(format!(
                "tg.scenario=memory tg.mem.base_mib=32 tg.mem.touch_mib={touch_mib} \
                 tg.mem.change_kib={change_kib} tg.mem.poll_ms={poll_ms}"
            ))
            .serial(SerialOutput::Buffer(console.clone()))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(console.wait_for("MEM-READY", WAIT), "{}", console.text());
    (vm, console)
}

fn restore(dir: &Path) -> (Vm, SerialBuffer) {
    let console = SerialBuffer::new();
    let vm = Vm::restore(
        dir,
        &RestoreOptions::new().serial(SerialOutput::Buffer(console.clone())),
    )
    .unwrap();
    (vm, console)
}

/// Makes the guest rewrite its change window once more.
fn change(vm: &Vm, console: &SerialBuffer) {
    let before = console.text().matches("MEM-CHANGED").count();
    vm.send_serial_input(b"x");
    let t = Instant::now();
    while console.text().matches("MEM-CHANGED").count() == before {
        assert!(t.elapsed() < WAIT, "{}", console.text());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn fork_bench(runs: usize) {
    // Idle children: the guest polls its UART every second.
    let (parent, _console) = boot(128, 16, 1024, 1000);
    for n in [0usize, 1, 10, 100] {
        let (mut times, mut pss) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let before = pss_kib();
            let t = Instant::now();
            let kids = parent
                .fork(n, &ForkOptions::new(tmp(&format!("fork-{n}-{r}"))))
                .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(100));
            pss.push((pss_kib().saturating_sub(before)) as f64 / n.max(1) as f64);
            drop(kids);
        }
        println!(
            "fork({n:>3}) of a running 128 MiB VM (16 MiB touched): {:>8.2} ms to {n} running children, Pss {:>7.1} KiB per child",
            median(times),
            median(pss)
        );
    }
}

fn diff_bench(runs: usize) {
    for change_mib in [1u64, 32] {
        let (vm, _c) = boot(512, 256, change_mib << 10, 10);
        vm.pause().unwrap();
        let s = tmp(&format!("s-{change_mib}"));
        let t = Instant::now();
        let full0 = vm.snapshot(&s).unwrap();
        let first_full_ms = t.elapsed().as_secs_f64() * 1e3;
        drop(vm);
        let (mut diff_ms, mut diff_bytes, mut full_ms, mut full_bytes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..runs {
            let (vm, console) = restore(&s);
            change(&vm, &console);
            vm.pause().unwrap();
            let d = tmp(&format!("d-{change_mib}-{r}"));
            let t = Instant::now();
            let info = vm.snapshot(&d).unwrap();
            diff_ms.push(t.elapsed().as_secs_f64() * 1e3);
            diff_bytes.push(info.memory_written as f64);
            let f = tmp(&format!("f-{change_mib}-{r}"));
            let t = Instant::now();
            let info = vm.snapshot_with(&f, &SnapshotOptions::new().full(true)).unwrap();
            full_ms.push(t.elapsed().as_secs_f64() * 1e3);
            full_bytes.push(info.memory_written as f64);
        }
        println!(
            "512 MiB guest, 256 MiB touched, {change_mib:>2} MiB changed: diff {:>7.2} ms / {:>6.1} MiB written; full {:>7.2} ms / {:>6.1} MiB (first full snapshot after boot {:.2} ms / {:.1} MiB)",
            median(diff_ms),
            median(diff_bytes) / 1048576.0,
            median(full_ms),
            median(full_bytes) / 1048576.0,
            first_full_ms,
            full0.memory_written as f64 / 1048576.0
        );
    }
}

fn chain_bench(runs: usize) {
    let (vm, _c) = boot(128, 16, 1024, 10);
    vm.pause().unwrap();
    let s = tmp("chain-s");
    vm.snapshot(&s).unwrap();
    drop(vm);
    let mut parent = s.clone();
    for depth in 1..=4 {
        let (vm, console) = restore(&parent);
        change(&vm, &console);
        vm.pause().unwrap();
        let d = tmp(&format!("chain-d{depth}"));
        vm.snapshot(&d).unwrap();
        parent = d;
    }
    for (name, dir) in [("depth 1 (full)", &s), ("depth 4 (full + 4 diffs)", &parent)] {
        let snap = Snapshot::open(dir).unwrap();
        let mut times = Vec::new();
        for _ in 0..runs.max(10) {
            let t = Instant::now();
            let vm = snap
                .restore(&RestoreOptions::new().serial(SerialOutput::None))
                .unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            drop(vm);
        }
        println!(
            "restore of a 128 MiB snapshot, {name:<26}: {:>6.2} ms (restore call -> vCPUs running)",
            median(times)
        );
    }
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    println!("fork and diff-snapshot benchmarks, test guest `memory`, 1 vCPU, medians of {runs} runs");
    fork_bench(runs);
    diff_bench(runs);
    chain_bench(runs);
    let _ = std::fs::remove_dir_all(tmp(""));
}
