//! virtio-blk device-model throughput with no guest: 4 KiB random reads
//! and writes driven through the device's own queue handling
//! (`process_queue`), with the in-memory and the file backend. Prints
//! requests/s, MB/s and VMM CPU time per request, medians of 20 runs.
//!
//! `cargo bench -p hearth-devices --bench blk`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_devices::legacy::boot_timer::process_cpu_time;
use hearth_devices::rate_limiter::RateLimiter;
use hearth_devices::testing::QueueDriver;
use hearth_devices::virtio::block::handler::{process_queue, RequestHandler};
use hearth_devices::virtio::block::request::Limits;
use hearth_devices::virtio::block::{BlockMetrics, DiskBackend, FileDisk, MemoryDisk};
use hearth_devices::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;
const SLOTS: u16 = QSIZE / 3;
const DISK_BYTES: u64 = 256 << 20;
const REQS_PER_RUN: usize = 20_000;
const RUNS: usize = 20;

fn limits() -> Limits {
    Limits {
        capacity_sectors: DISK_BYTES / 512,
        read_only: false,
        max_segments: 128,
        max_segment_len: 1 << 20,
        max_discard_segments: 16,
        max_discard_sectors: 1 << 22,
    }
}

/// Runs `REQS_PER_RUN` random 4 KiB requests; returns (wall, cpu).
fn run(
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler,
    write: bool,
    seed: &mut u64,
) -> (Duration, Duration) {
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    let mut d = QueueDriver::new(mem, 0x1000, QSIZE);
    let mut q = d.queue();
    q.set_event_idx(true);
    let kind = if write { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
    let data_flags = if write { 0 } else { WRITE };
    let hdr = |slot: u16| 0x10_0000 + u64::from(slot) * 64;
    let data = |slot: u16| 0x20_0000 + u64::from(slot) * 4096;
    // Chain `slot` is descriptors 3*slot .. 3*slot+2: header, data, status.
    for slot in 0..SLOTS {
        let i = slot * 3;
        d.write_descriptor(i, Descriptor::new(hdr(slot), 16, NEXT, i + 1));
        d.write_descriptor(i + 1, Descriptor::new(data(slot), 4096, data_flags | NEXT, i + 2));
        d.write_descriptor(i + 2, Descriptor::new(hdr(slot) + 32, 1, WRITE, 0));
    }
    let mut pending: Vec<u16> = (0..SLOTS).map(|s| s * 3).collect();
    let sectors = DISK_BYTES / 4096;
    let (t, c) = (Instant::now(), process_cpu_time());
    let mut done = 0;
    while done < REQS_PER_RUN {
        for head in pending.drain(..) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let sector = (*seed % sectors) * 8;
            let slot = head / 3;
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(hdr(slot))).unwrap();
            d.make_available(head);
        }
        process_queue(&mut q, mem, handler, &mut RateLimiter::default()).unwrap();
        for (head, _) in d.used() {
            pending.push(head);
            done += 1;
        }
    }
    (t.elapsed(), process_cpu_time().saturating_sub(c))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench(name: &str, backend: Box<dyn DiskBackend>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x400_0000)]).unwrap();
    let mut handler = RequestHandler::new(
        backend,
        limits(),
        "bench",
        Arc::new(BlockMetrics::default()),
        Arc::new(hearth_devices::guest_log::GuestLog::new("bench")),
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for write in [false, true] {
        let (mut rate, mut cpu) = (Vec::new(), Vec::new());
        run(&mem, &mut handler, write, &mut seed);
        for _ in 0..RUNS {
            let (wall, c) = run(&mem, &mut handler, write, &mut seed);
            rate.push(REQS_PER_RUN as f64 / wall.as_secs_f64());
            cpu.push(c.as_secs_f64() * 1e6 / REQS_PER_RUN as f64);
        }
        let r = median(rate);
        println!(
            "{name:<8} {:<6} {:>10.0} req/s {:>9.1} MB/s {:>8.2} us CPU/req",
            if write { "write" } else { "read" },
            r,
            r * 4096.0 / 1e6,
            median(cpu)
        );
    }
}

fn main() {
    println!("virtio-blk device model, no guest: 4 KiB random requests, {SLOTS} in flight, median of {RUNS} runs of {REQS_PER_RUN}");
    bench("memory", Box::new(MemoryDisk::new(DISK_BYTES / 512)));
    let path = std::env::temp_dir().join(format!("hearth-blk-bench-{}.img", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    // Populate the page cache: the file backend's cost is then syscalls.
    std::fs::write(&path, vec![1u8; DISK_BYTES as usize]).unwrap();
    bench("file", Box::new(FileDisk::open(&path, false).unwrap()));
    let _ = std::fs::remove_file(&path);
}
