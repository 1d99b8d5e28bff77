//! Host-side throughput of the virtio-net device model: the in-memory
//! backend and no guest. Both queues are real virtqueues in guest memory,
//! driven through virtio-queue's MockSplitQueue: a "driver" posts every
//! free descriptor, the device runs its real queue handling
//! (`process_tx` / `process_rx`), and the driver reclaims the used entries
//! and posts them again. Only the device's calls are timed.
//!
//! Medians over the runs of frames/s and Gbit/s (Ethernet bytes; the
//! 12-byte virtio-net header is not counted), for 64- and 1500-byte frames,
//! with EVENT_IDX and (rx) mergeable 2 KiB buffers as Linux uses them.
//!
//! `cargo bench -p hearth-devices --bench net [-- RUNS]` (default 25 runs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_devices::interrupt::IrqLine;
use hearth_devices::testing::QueueDriver;
use hearth_devices::virtio::net::{MemoryNet, Net, NetOptions};
use hearth_devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use hearth_devices::GuestMemoryMmap;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 256;
const ROUNDS: usize = 200;
const FRAMES_PER_RUN: usize = QSIZE as usize * ROUNDS;
const HDR: usize = 12;
const BUF_STRIDE: u64 = 4096;
const RX_BUF_LEN: u32 = 2048;
const FEATURES: u64 = 1 << 32 | 1 << 29; // VERSION_1 | EVENT_IDX

#[derive(Debug)]
struct NoIrq;

impl IrqLine for NoIrq {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The driver's side of a queue whose descriptor i always points at
/// buffer i; heads are posted again once used.
struct Driver {
    q: QueueDriver,
}

impl Driver {
    fn new(mem: &GuestMemoryMmap, ring: u64, bufs: u64, len: u32, flags: u16) -> Self {
        let q = QueueDriver::new(mem, ring, QSIZE);
        for i in 0..QSIZE {
            q.write_descriptor(
                i,
                Descriptor::new(bufs + u64::from(i) * BUF_STRIDE, len, flags, 0),
            );
        }
        Self { q }
    }

    fn queue(&self) -> Queue {
        let mut q = self.q.queue();
        q.set_event_idx(true);
        q
    }

    fn post(&mut self, head: u16) {
        self.q.make_available(head);
    }

    /// Reclaims every used entry and posts its head again; returns how many.
    fn recycle(&mut self) -> usize {
        let used = self.q.used();
        for &(head, _) in &used {
            self.q.make_available(head);
        }
        used.len()
    }
}

struct Rig {
    dev: Net,
    backend: MemoryNet,
    rx: Driver,
    tx: Driver,
}

fn rig(mem: &GuestMemoryMmap, tx_len: u32) -> Rig {
    let backend = MemoryNet::new().unwrap();
    backend.set_capture_tx(false);
    let mut dev = Net::new(Box::new(backend.clone()), &NetOptions::default()).unwrap();
    let rx = Driver::new(mem, 0x1_0000, 0x10_0000, RX_BUF_LEN, VRING_DESC_F_WRITE as u16);
    let tx = Driver::new(mem, 0x2_0000, 0x20_0000, tx_len, 0);
    let queues: Vec<Queue> = vec![rx.queue(), tx.queue()];
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues,
        interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoIrq))),
        acked_features: FEATURES | 1 << VIRTIO_NET_F_MRG_RXBUF,
    })
    .unwrap();
    Rig { dev, backend, rx, tx }
}

fn packet(frame_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; HDR];
    p.extend((0..frame_len).map(|i| i as u8));
    p
}

/// One run of guest → backend: the time spent in `process_tx`.
fn run_tx(mem: &GuestMemoryMmap, frame_len: usize) -> Duration {
    let p = packet(frame_len);
    for i in 0..u64::from(QSIZE) {
        mem.write_slice(&p, GuestAddress(0x20_0000 + i * BUF_STRIDE))
            .unwrap();
    }
    let mut r = rig(mem, p.len() as u32);
    for head in 0..QSIZE {
        r.tx.post(head);
    }
    let mut spent = Duration::ZERO;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        r.dev.process_tx();
        spent += t.elapsed();
        assert_eq!(r.tx.recycle(), usize::from(QSIZE));
    }
    assert_eq!(r.backend.tx_frames(), FRAMES_PER_RUN as u64);
    assert_eq!(r.dev.metrics().snapshot().tx_dropped_malformed, 0);
    spent
}

/// One run of backend → guest: the time spent in `process_rx`.
fn run_rx(mem: &GuestMemoryMmap, frame_len: usize) -> Duration {
    let p = packet(frame_len);
    let mut r = rig(mem, 64);
    for head in 0..QSIZE {
        r.rx.post(head);
    }
    let mut spent = Duration::ZERO;
    for _ in 0..ROUNDS {
        for _ in 0..QSIZE {
            r.backend.push_rx(p.clone());
        }
        let t = Instant::now();
        r.dev.process_rx();
        spent += t.elapsed();
        assert_eq!(r.rx.recycle(), usize::from(QSIZE));
    }
    let c = r.dev.metrics().snapshot();
    assert_eq!(c.rx_frames, FRAMES_PER_RUN as u64);
    assert_eq!(c.rx_dropped_no_buffer, 0);
    spent
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

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(25)
        .max(1);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    println!(
        "virtio-net device model, in-memory backend, no guest: median of {runs} runs \
         of {FRAMES_PER_RUN} frames ({QSIZE}-entry queues, EVENT_IDX, mergeable 2 KiB rx buffers)"
    );
    println!(
        "{:<5} {:>6} {:>12} {:>10} {:>9}",
        "dir", "frame", "Mframes/s", "Gbit/s", "ns/frame"
    );
    type Run = fn(&GuestMemoryMmap, usize) -> Duration;
    let cases: [(&str, Run); 2] = [("tx", run_tx), ("rx", run_rx)];
    for (name, run) in cases {
        for frame_len in [64usize, 1500] {
            // One warm-up run, then the measured ones.
            run(&mem, frame_len);
            let rates: Vec<f64> = (0..runs)
                .map(|_| FRAMES_PER_RUN as f64 / run(&mem, frame_len).as_secs_f64())
                .collect();
            let fps = median(rates);
            println!(
                "{name:<5} {:>4} B {:>12.2} {:>10.2} {:>9.0}",
                frame_len,
                fps / 1e6,
                fps * frame_len as f64 * 8.0 / 1e9,
                1e9 / fps
            );
        }
    }
}
