//! Rate limiters on a real VM. Disk: the test guest reads from its disk as
//! fast as it can, and the host measures the rate from the disk counters
//! over a window that starts after the initial (full-bucket) burst. Net:
//! the host sends datagrams through the guest's UDP echo server, a window
//! at a time, and measures how fast the echoes come back once the bucket
//! is empty.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth::{BlockCounters, BucketConfig, DiskConfig, RateLimit};
use hearth_tests::netns::NetNs;
use hearth_tests::udp_echo::{boot_echo, echo_addr, echo_many};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

/// An 8 MiB disk image of the test's own (the tests run in parallel).
fn image(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{test}.img"));
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
fn start(test: &str, limit: RateLimit, reads: u64) -> TestVm {
    let t = TestVm::scenario("blk")
        .arg(&format!("tg.blk.bench={reads}"))
        .disk(DiskConfig::file(image(test)).rate_limit(limit))
        .start();
    t.expect("BLK-BENCH-START\n", GUEST_TIMEOUT);
    // The bucket starts full: let the guest drain it first (it has once
    // the limiter held it back).
    let t0 = Instant::now();
    while counters(&t).throttled == 0 {
        assert!(t0.elapsed() < GUEST_TIMEOUT, "the guest never drained the bucket");
        std::thread::sleep(Duration::from_millis(10));
    }
    t
}

#[test]
fn disk_bandwidth_is_capped_and_can_be_lifted() {
    const RATE: u64 = 2 << 20; // 512 reads of 4 KiB per second
    let limit = RateLimit {
        bandwidth: Some(BucketConfig::per_second(RATE)),
        ops: None,
    };
    let t = start("bandwidth", limit, 100_000);
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
    let t = start("iops", limit, 100_000);
    let (_, ops) = measure(&t, Duration::from_secs(2));
    eprintln!("capped: {ops:.0} reads/s for a {IOPS}/s limit");
    assert!(
        within_10_percent(ops, IOPS as f64),
        "{ops:.0} reads/s, limit {IOPS}"
    );
    t.vm.stop();
}

/// The Ethernet frame of a UDP datagram of `payload` bytes over IPv4: what
/// the net limiters charge for it.
const fn udp_frame_len(payload: usize) -> usize {
    14 + 20 + 8 + payload
}

#[test]
fn net_rx_and_tx_are_capped_independently_and_can_be_changed() {
    const RATE: u64 = 1_000_000; // 660 frames of 1514 B per second
    const LEN: usize = 1472;
    let capped = RateLimit {
        bandwidth: Some(BucketConfig::per_second(RATE)),
        ops: None,
    };
    let free = RateLimit::default();
    let ns = NetNs::new();
    let (t, host) = boot_echo(&ns, |n| n.rate_limits(free, capped));
    let guest = echo_addr(&ns);
    // Bytes per second through the echo server, after a first batch has
    // emptied the bucket (it starts full: 660 frames).
    let rate = |what: &str| {
        echo_many(&host, guest, 800, LEN, 32);
        let took = echo_many(&host, guest, 1000, LEN, 32);
        let rate = 1000.0 * udp_frame_len(LEN) as f64 / took.as_secs_f64();
        eprintln!("{what}: {rate:.0} B/s");
        rate
    };

    let tx = rate("tx capped");
    assert!(within_10_percent(tx, RATE as f64), "tx {tx:.0} B/s, limit {RATE}");
    let c = t.vm.net_counters()[0];
    assert!(c.tx_throttled > 0 && c.rx_throttled == 0, "{c:?}");

    // The other way round, on the running VM.
    t.vm.set_net_rate_limits(0, capped, free).unwrap();
    let rx = rate("rx capped");
    assert!(within_10_percent(rx, RATE as f64), "rx {rx:.0} B/s, limit {RATE}");
    let d = t.vm.net_counters()[0];
    assert!(d.rx_throttled > 0 && d.tx_throttled == c.tx_throttled, "{d:?}");

    // Both lifted.
    t.vm.set_net_rate_limits(0, free, free).unwrap();
    let took = echo_many(&host, guest, 1000, LEN, 32);
    let unlimited = 1000.0 * udp_frame_len(LEN) as f64 / took.as_secs_f64();
    eprintln!("lifted: {unlimited:.0} B/s");
    assert!(
        unlimited > 2.0 * RATE as f64,
        "{unlimited:.0} B/s after lifting the limits"
    );
    assert_eq!(t.vm.net_counters()[0].rx_dropped_no_buffer, 0);

    let e = t.vm.set_net_rate_limits(1, free, free).unwrap_err();
    assert!(e.to_string().contains("no net"), "{e}");
    t.vm.stop();
}
