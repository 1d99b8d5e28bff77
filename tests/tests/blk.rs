//! virtio-blk through the test guest's own driver: read, GET_ID, write +
//! flush + read-back, out-of-range read, and a read-only disk; then the
//! host checks the image file.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use hearth::{DiskConfig, DiskFactory, ExitReason, MemoryDisk};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

fn image(name: &str, size: u64, sector0: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(sector0, 0).unwrap();
    p
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) & 0xff) as u8).collect()
}

#[test]
fn blk_scenario_reads_writes_and_refuses() {
    let rw = image("rw.img", 64 << 20, b"HEARTH-SECTOR-0!");
    let ro = image("ro.img", 1 << 20, b"");
    let t = TestVm::scenario("blk")
        .arg("tg.blk.sector=40 tg.blk.count=16")
        .disk(DiskConfig::file(&rw).id("tg-disk"))
        .disk(DiskConfig::file(&ro).read_only(true))
        .start();
    assert_eq!(
        t.expect_exit(GUEST_TIMEOUT),
        ExitReason::Reset,
        "{}",
        t.console.text()
    );
    for line in [
        "BLK-CAPACITY 131072\n",
        "BLK-SECTOR0 4845415254482d534543544f522d3021\n",
        "BLK-ID tg-disk\n",
        "BLK-WRITE-OK sector=40 count=16\n",
        "BLK-OOR-IOERR\n",
        "BLK-RO-REFUSED\n",
        "BLK-OK\n",
    ] {
        t.expect(line, Duration::ZERO);
    }
    // The host sees exactly the guest's write, and nothing around it.
    let f = std::fs::File::open(&rw).unwrap();
    let mut buf = vec![0u8; 18 * 512];
    f.read_exact_at(&mut buf, 39 * 512).unwrap();
    assert_eq!(buf[..512], [0; 512]);
    assert_eq!(buf[512..17 * 512], pattern(16 * 512)[..]);
    assert_eq!(buf[17 * 512..], [0; 512]);
    let c = t.vm.disk_counters();
    assert!(c[0].writes >= 1 && c[0].flushes >= 1 && c[0].reads >= 2, "{c:?}");
    assert!(c[0].invalid_requests >= 1, "the out-of-range read is counted");
    assert_eq!(c[1].writes, 0, "the read-only disk took no write");
    // The read-only image is unchanged.
    assert!(std::fs::read(&ro).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn blk_scenario_on_a_custom_memory_backend() {
    let mut sector0 = b"HEARTH-SECTOR-0!".to_vec();
    sector0.resize(4 << 20, 0);
    let factory = DiskFactory::new(move || Ok(Box::new(MemoryDisk::from_bytes(sector0.clone())) as _));
    let t = TestVm::scenario("blk")
        .disk(DiskConfig::custom("memory", factory).id("mem"))
        .start();
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    t.expect("BLK-CAPACITY 8192\n", Duration::ZERO);
    t.expect("BLK-ID mem\n", Duration::ZERO);
    t.expect("BLK-OK\n", Duration::ZERO);
}

#[test]
fn guest_without_disk_reports_it() {
    let t = TestVm::scenario("blk").start();
    assert_eq!(t.expect_exit(GUEST_TIMEOUT), ExitReason::Reset);
    t.expect("BLK-FAIL no virtio-blk device", Duration::ZERO);
}
