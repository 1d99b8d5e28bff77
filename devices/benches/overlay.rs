//! Copy-on-write overlay throughput with no guest: 4 KiB random reads and
//! writes driven through the device's own queue handling
//! (`process_queue`), as in `blk.rs`, for the raw file backend and for an
//! overlay (`OverlayDisk`) on a base of the same size. Prints requests/s,
//! MB/s and VMM CPU time per request, medians of 20 runs; the cases run in
//! turn, round after round, so a change in the machine's load hits them
//! alike.
//!
//! `cargo bench -p hearth-devices --bench overlay`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_devices::legacy::boot_timer::process_cpu_time;
use hearth_devices::rate_limiter::RateLimiter;
use hearth_devices::testing::QueueDriver;
use hearth_devices::virtio::block::handler::{process_queue, RequestHandler};
use hearth_devices::virtio::block::request::Limits;
use hearth_devices::virtio::block::{BlockMetrics, DiskBackend, FileDisk, MemoryDisk, OverlayDisk, Parent};
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

fn handler(backend: Box<dyn DiskBackend>) -> RequestHandler {
    RequestHandler::new(
        backend,
        limits(),
        "bench",
        Arc::new(BlockMetrics::default()),
        Arc::new(hearth_devices::guest_log::GuestLog::new("bench")),
    )
}

/// One measured configuration.
struct Case {
    name: &'static str,
    write: bool,
    handler: RequestHandler,
    /// Makes a fresh backend before every run (first writes of blocks).
    fresh: Option<Box<dyn Fn() -> Box<dyn DiskBackend>>>,
    seed: u64,
    rate: Vec<f64>,
    cpu: Vec<f64>,
}

impl Case {
    fn new(name: &'static str, write: bool, backend: Box<dyn DiskBackend>) -> Self {
        Self {
            name,
            write,
            handler: handler(backend),
            fresh: None,
            seed: 0x9e37_79b9_7f4a_7c15,
            rate: Vec::new(),
            cpu: Vec::new(),
        }
    }

    fn run(&mut self, mem: &GuestMemoryMmap, record: bool) {
        if let Some(make) = &self.fresh {
            // Drop (and so flush) the last overlay before making the next.
            self.handler = handler(Box::new(MemoryDisk::new(1)));
            self.handler = handler(make());
        }
        let (wall, c) = run(mem, &mut self.handler, self.write, &mut self.seed);
        if record {
            self.rate.push(REQS_PER_RUN as f64 / wall.as_secs_f64());
            self.cpu.push(c.as_secs_f64() * 1e6 / REQS_PER_RUN as f64);
        }
    }

    /// Prints the medians; returns the median rate.
    fn report(&self) -> f64 {
        let r = median(self.rate.clone());
        println!(
            "{:<16} {:<6} {:>10.0} req/s {:>9.1} MB/s {:>8.2} us CPU/req",
            self.name,
            if self.write { "write" } else { "read" },
            r,
            r * 4096.0 / 1e6,
            median(self.cpu.clone())
        );
        r
    }
}

/// A file of `DISK_BYTES` ones, in the page cache and synced (so that no
/// writeback of the setup runs under the measurements), written in 1 MiB
/// pieces as the overlays' data is. The page cache keeps such a file in
/// large folios, and a 4 KiB write into one costs the kernel a walk of
/// all its buffers: the file's writes measure slower than the overlay's,
/// whose data region is not 1 MiB-aligned (see `docs/DISK.md`). One
/// 256 MiB write gave still larger folios and halved the file's write rate.
fn image(path: &Path) {
    let mut f = FileDisk::open(path, false).unwrap();
    let chunk = vec![1u8; 1 << 20];
    for i in 0..DISK_BYTES >> 20 {
        f.write_at(&chunk, i << 20).unwrap();
    }
    f.flush().unwrap();
}

fn overlay(path: &Path, base: &Path) -> OverlayDisk {
    let _ = std::fs::remove_file(path);
    OverlayDisk::create(path, Parent::Raw(base.into())).unwrap()
}

fn main() {
    println!(
        "virtio-blk overlay, no guest: 4 KiB random requests, {SLOTS} in flight, median of {RUNS} runs of {REQS_PER_RUN}, {} MiB disk",
        DISK_BYTES >> 20
    );
    let dir = std::env::temp_dir().join(format!("hearth-ovl-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let at = |name: &str| -> PathBuf { dir.join(name) };
    let (plain, base, plain2) = (at("plain.img"), at("base.img"), at("plain2.img"));
    for p in [&plain, &base, &plain2] {
        std::fs::File::create(p).unwrap().set_len(DISK_BYTES).unwrap();
    }
    // Reads and writes of the raw backend use separate files.
    image(&plain);
    image(&plain2);
    image(&base);
    // Two overlays with every block written: one to read, one to rewrite.
    let chunk = vec![2u8; 1 << 20];
    let written = |name: &str| {
        let mut d = overlay(&at(name), &base);
        for i in 0..DISK_BYTES >> 20 {
            d.write_at(&chunk, i << 20).unwrap();
        }
        d.flush().unwrap();
        d
    };
    let (full, full2) = (written("full.ovl"), written("full2.ovl"));

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x400_0000)]).unwrap();
    let fresh_path = at("fresh.ovl");
    let fresh_base = base.clone();
    let mut first = Case::new("overlay-first", true, Box::new(overlay(&fresh_path, &base)));
    first.fresh = Some(Box::new(move || Box::new(overlay(&fresh_path, &fresh_base))));
    let mut cases = [
        Case::new("file", false, Box::new(FileDisk::open(&plain, false).unwrap())),
        Case::new("overlay-empty", false, Box::new(overlay(&at("empty.ovl"), &base))),
        Case::new("overlay-full", false, Box::new(full)),
        Case::new("file", true, Box::new(FileDisk::open(&plain2, false).unwrap())),
        first,
        Case::new("overlay-full", true, Box::new(full2)),
    ];
    for case in &mut cases {
        case.run(&mem, false);
    }
    for _ in 0..RUNS {
        for case in &mut cases {
            case.run(&mem, true);
        }
    }
    let rates: Vec<f64> = cases.iter().map(Case::report).collect();
    println!(
        "overlay reads of unwritten blocks: {:.1}% of the file backend's rate (goal: at least 90%)",
        rates[1] / rates[0] * 100.0
    );
    drop(cases);
    let _ = std::fs::remove_dir_all(&dir);
}
