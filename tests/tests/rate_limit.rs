//! Rate limiters on a real VM: the test guest reads from its disk as fast
//! as it can, and the host measures the rate from the disk counters over a
//! window that starts after the initial (full-bucket) burst.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth::{BlockCounters, BucketConfig, DiskConfig, RateLimit};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

fn image() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("disk.img");
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    p
}

fn counters(t: &TestVm) -> BlockCounters {
    t.vm.disk_counters()[0]
}

/// Bytes and reads per second over `window`, from the disk counters.
fn measure(t: &TestVm, window: Duration) -> (f64, f64) {
    let (c0, t0) = (counters(t), Instant::now());
    std::thread::sleep(window);
    let (c1, secs) = (counters(t), t0.elapsed().as_secs_f64());
    (
        (c1.read_bytes - c0.read_bytes) as f64 / secs,
        (c1.reads - c0.reads) as f64 / secs,
    )
}

fn within_10_percent(got: f64, want: f64) -> bool {
    (got / want - 1.0).abs() <= 0.10
}

/// Starts the guest's read loop under `limit`, waits out the burst.
fn start(limit: RateLimit, reads: u64) -> TestVm {
    let t = TestVm::scenario("blk")
        .arg(&format!("tg.blk.bench={reads}"))
        .disk(DiskConfig::file(image()).rate_limit(limit))
        .start();
    t.expect("BLK-BENCH-START\n", GUEST_TIMEOUT);
    // The bucket starts full: let the guest drain it first.
    std::thread::sleep(Duration::from_millis(700));
    t
}

#[test]
fn disk_bandwidth_is_capped_and_can_be_lifted() {
    const RATE: u64 = 2 << 20; // 512 reads of 4 KiB per second
    let limit = RateLimit {
        bandwidth: Some(BucketConfig::per_second(RATE)),
        ops: None,
    };
    let t = start(limit, 100_000);
    let (bytes, _) = measure(&t, Duration::from_secs(2));
    eprintln!("capped: {:.0} B/s for a {RATE} B/s limit", bytes);
    assert!(
        within_10_percent(bytes, RATE as f64),
        "{bytes:.0} B/s, limit {RATE}"
    );
    assert!(counters(&t).throttled > 0);

    // Lifting the limit on the running VM frees the guest at once.
    t.vm.set_disk_rate_limit(0, RateLimit::default()).unwrap();
    let (free, _) = measure(&t, Duration::from_millis(500));
    eprintln!("lifted: {:.0} B/s", free);
    assert!(free > 2.0 * RATE as f64, "{free:.0} B/s after lifting the limit");

    let e = t.vm.set_disk_rate_limit(1, RateLimit::default()).unwrap_err();
    assert_eq!(e.to_string(), "there is no disk 1: the VM has 1");
    let zero = RateLimit {
        bandwidth: None,
        ops: Some(BucketConfig::per_second(0)),
    };
    let e = t.vm.set_disk_rate_limit(0, zero).unwrap_err();
    assert!(e.to_string().contains("rate_limit: ops"), "{e}");
    t.vm.stop();
}

#[test]
fn disk_request_rate_is_capped() {
    const IOPS: u64 = 400;
    let limit = RateLimit {
        bandwidth: None,
        ops: Some(BucketConfig::per_second(IOPS)),
    };
    let t = start(limit, 100_000);
    let (_, ops) = measure(&t, Duration::from_secs(2));
    eprintln!("capped: {ops:.0} reads/s for a {IOPS}/s limit");
    assert!(
        within_10_percent(ops, IOPS as f64),
        "{ops:.0} reads/s, limit {IOPS}"
    );
    t.vm.stop();
}
