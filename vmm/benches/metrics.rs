//! What reading metrics costs: 200 idle VMs in one process (the test
//! guest's `spin` scenario, halted), `Vm::metrics()` of every one of them
//! once a second, measured as the reading thread's CPU time.
//!
//! Prints, per round of 200 reads: CPU time (median, max), the share of
//! one core it takes at one round per second, and the cost per VM; then
//! the cost of a fresh guest-memory sample (`Vm::memory_usage`), which
//! `metrics()` takes at most every `MEMORY_SAMPLE_MAX_AGE`.
//!
//! `cargo bench -p hearth --bench metrics [-- VMS [ROUNDS]]` (default 200
//! VMs, 12 rounds: past one memory resample).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::time::{Duration, Instant};

use hearth::{SerialBuffer, SerialOutput, Vm, VmConfig};

const WAIT: Duration = Duration::from_secs(120);

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn idle_vm() -> Vm {
    let console = SerialBuffer::new();
    let vm = Vm::start(
        VmConfig::builder(hearth_testguest::elf())
            .memory_mib(16)
            .cmdline("tg.scenario=spin")
            .serial(SerialOutput::Buffer(console.clone()))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert!(console.wait_for("GUEST-READY", WAIT), "{}", console.text());
    vm.send_serial_input(b"x");
    assert!(console.wait_for("SPIN-HALT", WAIT), "{}", console.text());
    vm
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let count = args.first().copied().unwrap_or(200);
    let rounds = args.get(1).copied().unwrap_or(12);
    let t = Instant::now();
    let vms: Vec<Vm> = (0..count).map(|_| idle_vm()).collect();
    println!(
        "{count} idle VMs started in {:.1} s ({} threads in the process)",
        t.elapsed().as_secs_f64(),
        std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
    );
    let mut cpu_ms = Vec::new();
    let mut wall_ms = Vec::new();
    let start = Instant::now();
    for round in 0..rounds {
        let (c0, w0) = (thread_cpu(), Instant::now());
        let mut sink = 0u64;
        for vm in &vms {
            let m = vm.metrics();
            sink += m.uptime_ms + m.vcpus.len() as u64;
        }
        std::hint::black_box(sink);
        cpu_ms.push((thread_cpu() - c0).as_secs_f64() * 1e3);
        wall_ms.push(w0.elapsed().as_secs_f64() * 1e3);
        let next = start + Duration::from_secs(round as u64 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let total_cpu: f64 = cpu_ms.iter().sum();
    let max = cpu_ms.iter().cloned().fold(0.0, f64::max);
    let med = median(cpu_ms.clone());
    println!(
        "metrics of {count} VMs, {rounds} rounds at 1/s: CPU per round median {med:.2} ms, max {max:.2} ms \
         (the round that resamples guest memory); wall median {:.2} ms",
        median(wall_ms)
    );
    println!(
        "  = {:.3}% of one core on average ({:.3}% at the median round); {:.1} us per VM per read",
        total_cpu / (rounds as f64 * 1000.0) * 100.0,
        med / 1000.0 * 100.0,
        med * 1000.0 / count as f64
    );
    let c0 = thread_cpu();
    for vm in &vms {
        std::hint::black_box(vm.memory_usage());
    }
    let fresh = (thread_cpu() - c0).as_secs_f64() * 1e6 / count as f64;
    let m = vms[0].metrics();
    let mem = m.memory.unwrap_or_default();
    println!(
        "  a fresh guest-memory sample: {fresh:.1} us per VM ({} KiB resident of {} MiB)",
        mem.resident_bytes >> 10,
        mem.guest_bytes >> 20
    );
    drop(vms);
}
