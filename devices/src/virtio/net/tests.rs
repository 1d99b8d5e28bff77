//! The network device driven through real virtqueues in guest memory
//! (virtio-queue's MockSplitQueue, used the way a driver would) and the
//! in-memory backend; one test runs the real event loop.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::backend::{tests::readable, GuestOffloads, MemoryNet};
use super::device::{MacAddr, Net, NetError, NetOptions, RXQ, TXQ};
use super::handler::{RX_BACKLOG_BYTES, RX_BACKLOG_FRAMES};
use super::rxtx::{MAX_PACKET_LEN, VNET_HDR_LEN};
use crate::interrupt::test_utils::CountingIrq;
use crate::testing::QueueDriver;
use crate::virtio::device::{ActivateContext, VirtioDevice};
use crate::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::GuestMemoryMmap;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const QSIZE: u16 = 256;
const V1: u64 = 1 << VIRTIO_F_VERSION_1;
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const MEM_SIZE: u64 = 0x400_0000;

/// The driver's side of one queue, remembering each chain's buffers.
struct Driver {
    q: QueueDriver,
    /// Buffers of each posted chain, by head.
    chains: HashMap<u16, Vec<(u64, u32)>>,
}

impl Driver {
    fn new(mem: &'static GuestMemoryMmap, base: u64) -> Self {
        Self {
            q: QueueDriver::new(mem, base, QSIZE),
            chains: HashMap::new(),
        }
    }

    /// The queue as the device gets it.
    fn queue(&self) -> Queue {
        self.q.queue()
    }

    /// Stores `descs` verbatim at the next free indices and makes the
    /// first one available.
    fn post_raw(&mut self, descs: &[Descriptor]) -> u16 {
        self.q.post_raw(descs)
    }

    /// Posts a chain of (addr, len) buffers, linked with NEXT.
    fn post(&mut self, bufs: &[(u64, u32)], flags: u16) -> u16 {
        let with_flags: Vec<(u64, u32, u16)> = bufs.iter().map(|&(a, l)| (a, l, flags)).collect();
        let head = self.q.post(&with_flags);
        self.chains.insert(head, bufs.to_vec());
        head
    }

    /// Used entries since the last call: (head, len).
    fn used(&mut self) -> Vec<(u16, u32)> {
        self.q.used()
    }
}

/// The guest: memory, both queues, the interrupt, and the host's end of
/// the in-memory backend.
struct Guest {
    mem: &'static GuestMemoryMmap,
    backend: MemoryNet,
    rx: Driver,
    tx: Driver,
    irq: Arc<CountingIrq>,
    interrupt: Arc<VirtioInterrupt>,
    buf_next: u64,
}

fn setup(acked: u64) -> (Net, Guest) {
    setup_with(acked, NetOptions::default())
}

fn setup_with(acked: u64, options: NetOptions) -> (Net, Guest) {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
    ));
    let backend = MemoryNet::new().unwrap();
    let options = NetOptions {
        mac: Some("52:54:00:12:34:56".parse().unwrap()),
        ..options
    };
    let mut dev = Net::new(Box::new(backend.clone()), &options).unwrap();
    let rx = Driver::new(mem, 0x1_0000);
    let tx = Driver::new(mem, 0x2_0000);
    let mut queues: Vec<Queue> = vec![rx.queue(), tx.queue()];
    for q in &mut queues {
        q.set_event_idx(acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
    }
    let irq = Arc::new(CountingIrq::default());
    let interrupt = Arc::new(VirtioInterrupt::new(irq.clone()));
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues,
        interrupt: interrupt.clone(),
        acked_features: acked,
    })
    .unwrap();
    let guest = Guest {
        mem,
        backend,
        rx,
        tx,
        irq,
        interrupt,
        buf_next: 0x10_0000,
    };
    (dev, guest)
}

/// A packet: a virtio-net header (with a `num_buffers` the device must
/// overwrite on rx) and `len` Ethernet bytes derived from `seed`.
fn packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p = vec![1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0xee, 0xee];
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    p
}

fn with_num_buffers(mut p: Vec<u8>, n: u16) -> Vec<u8> {
    p[10..12].copy_from_slice(&n.to_le_bytes());
    p
}

impl Guest {
    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.buf_next;
        self.buf_next += (len + 0xfff) & !0xfff;
        assert!(self.buf_next < MEM_SIZE, "test guest memory exhausted");
        a
    }

    /// Queues a tx chain with one read-only descriptor per piece.
    fn send(&mut self, pieces: &[&[u8]]) -> u16 {
        let bufs: Vec<(u64, u32)> = pieces
            .iter()
            .map(|p| {
                let a = self.alloc(p.len() as u64);
                self.mem.write_slice(p, GuestAddress(a)).unwrap();
                (a, p.len() as u32)
            })
            .collect();
        self.tx.post(&bufs, 0)
    }

    /// Posts an rx chain of write-only buffers of the given lengths.
    fn post_rx(&mut self, lens: &[u32]) -> u16 {
        let bufs: Vec<(u64, u32)> = lens.iter().map(|&l| (self.alloc(u64::from(l)), l)).collect();
        self.rx.post(&bufs, WRITE)
    }

    /// The bytes the device wrote into one used rx chain.
    fn chain_data(&self, head: u16, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for &(addr, l) in &self.rx.chains[&head] {
            let n = left.min(l as usize);
            let mut b = vec![0u8; n];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            out.extend(b);
            left -= n;
        }
        assert_eq!(left, 0, "used length within the chain");
        out
    }

    /// Packets received since the last call, reassembled as a driver does
    /// (`num_buffers` chains per packet), with the chains they used.
    fn received(&mut self) -> Vec<(Vec<u8>, usize)> {
        let used = self.rx.used();
        let mut out = Vec::new();
        let mut i = 0;
        while i < used.len() {
            let first = self.chain_data(used[i].0, used[i].1);
            let n = usize::from(u16::from_le_bytes([first[10], first[11]]));
            assert!(n >= 1 && i + n <= used.len(), "num_buffers {n}");
            let mut p = first;
            for &(head, len) in &used[i + 1..i + n] {
                p.extend(self.chain_data(head, len));
            }
            out.push((p, n));
            i += n;
        }
        out
    }
}

#[test]
fn config_space_and_features() {
    let (dev, _g) = setup(V1);
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    let f = dev.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_TSO4,
    ] {
        assert!(f & (1 << bit) != 0, "feature {bit}");
    }
    let mut cfg = [0u8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 0x05]);
    let mut mtu = [0u8; 2];
    dev.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    // Past the end reads as zeros.
    let mut tail = [0xffu8; 4];
    dev.read_config(12, &mut tail);
    assert_eq!(tail, [0; 4]);

    // No MAC: the feature is not offered.
    let dev = Net::new(Box::new(MemoryNet::new().unwrap()), &NetOptions::default()).unwrap();
    assert_eq!(dev.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
}

#[test]
fn options_are_checked() {
    let backend = || Box::new(MemoryNet::new().unwrap());
    let e = Net::new(
        backend(),
        &NetOptions {
            mtu: 67,
            ..NetOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, NetError::BadMtu(67)), "{e}");
    let mac: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
    let e = Net::new(
        backend(),
        &NetOptions {
            mac: Some(mac),
            ..NetOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("multicast"), "{e}");
    assert_eq!(mac.to_string(), "01:00:5e:00:00:01");
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5g",
        "525:4:00:12:34:56",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
    }
    assert_eq!(
        "AA:bb:00:00:00:01".parse::<MacAddr>().unwrap(),
        MacAddr([0xaa, 0xbb, 0, 0, 0, 1])
    );
}

#[test]
fn activation_sets_offloads_and_needs_both_queues() {
    let acked = V1 | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let (_dev, g) = setup(acked);
    assert_eq!(
        g.backend.offloads(),
        Some(GuestOffloads {
            csum: true,
            tso4: true,
            tso6: false
        })
    );
    let mut dev = Net::new(Box::new(MemoryNet::new().unwrap()), &NetOptions::default()).unwrap();
    let e = dev
        .activate(ActivateContext {
            mem: g.mem.clone(),
            queues: vec![g.rx.queue()],
            interrupt: g.interrupt.clone(),
            acked_features: V1,
        })
        .unwrap_err();
    assert_eq!(e, crate::virtio::ActivateError::QueueNotReady(1));
    assert!(!dev.is_active());
}

#[test]
fn tx_frames_reach_the_backend_byte_exact() {
    let (mut dev, mut g) = setup(V1);
    let one = packet(1500, 1);
    let two = packet(60, 2);
    let h1 = g.send(&[&one]);
    // Header, Ethernet header and payload in separate descriptors.
    let h2 = g.send(&[&two[..12], &two[12..26], &two[26..]]);
    dev.process_tx();
    assert_eq!(g.backend.take_tx(), vec![one, two]);
    assert_eq!(g.tx.used(), vec![(h1, 0), (h2, 0)]);
    let c = dev.metrics().snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes), (2, 1560));
    assert_eq!(g.irq.count(), 1);
    // Nothing new: no used entries, no interrupt.
    dev.process_tx();
    assert!(g.tx.used().is_empty());
    assert_eq!(g.irq.count(), 1);
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted() {
    let (mut dev, mut g) = setup(V1);
    let mut heads = Vec::new();
    // Too short: 12 + 13 bytes.
    heads.push(g.send(&[&packet(13, 0)]));
    // Too long: 12 + 65551 bytes over two descriptors.
    let big = packet(65551, 0);
    heads.push(g.send(&[&big[..40000], &big[40000..]]));
    // A device-writable descriptor.
    let a = g.alloc(1500);
    heads.push(g.tx.post(&[(a, 12), (a + 12, 100)], 0));
    g.tx.q
        .write_descriptor((heads[2] + 1) % QSIZE, Descriptor::new(a + 12, 100, WRITE, 0));
    // Wholly outside guest memory.
    heads.push(g.tx.post(&[(MEM_SIZE + 0x1000, 100)], 0));
    // Lies about its length: starts in memory, runs past its end.
    heads.push(g.tx.post(&[(MEM_SIZE - 64, 1500)], 0));
    // Lies about its length: says NEXT, but the next index is past the table.
    heads.push(g.tx.post_raw(&[Descriptor::new(a, 100, NEXT, QSIZE + 5)]));
    // An indirect table whose entries loop: 0 -> 1 -> 2 -> 3 -> 0.
    let table = g.alloc(64);
    for i in 0..4u16 {
        let d = Descriptor::new(a, 100, NEXT, (i + 1) % 4);
        g.mem
            .write_obj(RawDescriptor::from(d), GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }
    heads.push(g.tx.post_raw(&[Descriptor::new(table, 64, VRING_DESC_F_INDIRECT as u16, 0)]));
    // Then a good frame: it still goes through.
    let good = packet(100, 9);
    heads.push(g.send(&[&good]));

    dev.process_tx();
    assert_eq!(g.backend.take_tx(), vec![good]);
    let used = g.tx.used();
    assert_eq!(used, heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>());
    let c = dev.metrics().snapshot();
    assert_eq!((c.tx_dropped_malformed, c.tx_frames), (7, 1));
    assert!(dev.is_active(), "bad frames are not queue errors");
    assert!(!g.interrupt.needs_reset());
}

#[test]
fn tx_backend_errors_drop_the_frame() {
    let (mut dev, mut g) = setup(V1);
    g.backend.set_tx_error(Some(io::ErrorKind::WouldBlock));
    let h = g.send(&[&packet(100, 0)]);
    dev.process_tx();
    assert_eq!(g.tx.used(), vec![(h, 0)]);
    assert_eq!(dev.metrics().snapshot().tx_dropped_backend, 1);
    g.backend.set_tx_error(None);
    g.send(&[&packet(100, 1)]);
    dev.process_tx();
    assert_eq!(g.backend.take_tx().len(), 1);
}

#[test]
fn rx_without_mergeable_buffers() {
    let (mut dev, mut g) = setup(V1);
    // Header and data in separate descriptors.
    g.post_rx(&[12, 1514]);
    g.post_rx(&[1526]);
    let small = packet(60, 3);
    let full = packet(1514, 4);
    let too_big = packet(1515, 5);
    g.backend.push_rx(small.clone());
    g.backend.push_rx(too_big);
    g.backend.push_rx(full.clone());
    dev.process_rx();
    let got = g.received();
    assert_eq!(
        got,
        vec![(with_num_buffers(small, 1), 1), (with_num_buffers(full, 1), 1)]
    );
    let c = dev.metrics().snapshot();
    assert_eq!(
        (c.rx_frames, c.rx_bytes, c.rx_dropped_no_buffer),
        (2, 60 + 1514, 1)
    );
    assert_eq!(g.irq.count(), 1);
}

#[test]
fn rx_with_mergeable_buffers_spans_chains() {
    let (mut dev, mut g) = setup(V1 | MRG);
    for _ in 0..4 {
        g.post_rx(&[1024]);
    }
    let big = packet(3000 - VNET_HDR_LEN, 6);
    let small = packet(488, 7);
    g.backend.push_rx(big.clone());
    g.backend.push_rx(small.clone());
    dev.process_rx();
    let got = g.received();
    assert_eq!(
        got,
        vec![(with_num_buffers(big, 3), 3), (with_num_buffers(small, 1), 1)]
    );
}

#[test]
fn rx_mergeable_frame_waits_for_enough_buffers() {
    let (mut dev, mut g) = setup(V1 | MRG);
    g.post_rx(&[1024]);
    let big = packet(3000, 8);
    g.backend.push_rx(big.clone());
    dev.process_rx();
    assert!(g.rx.used().is_empty(), "not enough room yet");
    assert_eq!(dev.rx_backlog_len(), 1);
    g.post_rx(&[1024]);
    g.post_rx(&[1024]);
    dev.process_rx();
    assert_eq!(g.received(), vec![(with_num_buffers(big, 3), 3)]);
    assert_eq!(dev.rx_backlog_len(), 0);
}

#[test]
fn backlog_holds_frames_until_buffers_come_in_order() {
    let (mut dev, mut g) = setup(V1);
    let frames: Vec<Vec<u8>> = (0..100).map(|i| packet(60 + i, i as u8)).collect();
    for f in &frames {
        g.backend.push_rx(f.clone());
    }
    dev.process_rx();
    // The backlog is full: the device stops reading (and polling), and
    // the rest waits in the backend.
    assert_eq!(dev.rx_backlog_len(), RX_BACKLOG_FRAMES);
    assert_eq!(g.backend.rx_pending(), 100 - RX_BACKLOG_FRAMES);
    assert!(!dev.wants_backend_events());
    assert!(g.rx.used().is_empty());
    assert_eq!(g.irq.count(), 0);
    // Calling again does not read more.
    dev.process_rx();
    assert_eq!(g.backend.rx_pending(), 100 - RX_BACKLOG_FRAMES);

    for _ in 0..30 {
        g.post_rx(&[1526]);
    }
    dev.process_rx();
    // 30 delivered from the backlog, which refilled from the backend.
    let first: Vec<Vec<u8>> = g.received().into_iter().map(|(p, _)| p).collect();
    assert_eq!(first.len(), 30);
    assert_eq!(dev.rx_backlog_len(), RX_BACKLOG_FRAMES);
    assert_eq!(g.backend.rx_pending(), 100 - RX_BACKLOG_FRAMES - 30);
    for _ in 0..70 {
        g.post_rx(&[1526]);
    }
    dev.process_rx();
    let rest: Vec<Vec<u8>> = g.received().into_iter().map(|(p, _)| p).collect();
    let all: Vec<Vec<u8>> = first.into_iter().chain(rest).collect();
    let expected: Vec<Vec<u8>> = frames.into_iter().map(|f| with_num_buffers(f, 1)).collect();
    assert_eq!(all, expected, "every frame, in order");
    assert_eq!(dev.rx_backlog_len(), 0);
    assert!(dev.wants_backend_events());
    let c = dev.metrics().snapshot();
    assert_eq!((c.rx_frames, c.rx_dropped_no_buffer), (100, 0));
}

#[test]
fn backlog_is_bounded_in_bytes_and_dropped_on_reset() {
    let (mut dev, g) = setup(V1 | MRG);
    for i in 0..20 {
        g.backend.push_rx(packet(MAX_PACKET_LEN - VNET_HDR_LEN, i));
    }
    dev.process_rx();
    let held = RX_BACKLOG_BYTES.div_ceil(MAX_PACKET_LEN);
    assert_eq!(dev.rx_backlog_len(), held);
    assert_eq!(g.backend.rx_pending(), 20 - held);
    assert!(!dev.wants_backend_events());
    // A driver reset drops (and counts) what waited.
    dev.reset();
    assert_eq!(dev.rx_backlog_len(), 0);
    assert_eq!(dev.metrics().snapshot().rx_dropped_no_buffer, held as u64);
    assert!(!dev.wants_backend_events());
}

#[test]
fn unusable_rx_buffers_are_returned_and_counted() {
    let (mut dev, mut g) = setup(V1 | MRG);
    let a = g.alloc(4096);
    let bad_ro = g.rx.post(&[(a, 1526)], 0);
    let bad_short = g.post_rx(&[8]);
    let bad_outside = g.rx.post(&[(MEM_SIZE - 100, 1526)], WRITE);
    let good = g.post_rx(&[1526]);
    let p = packet(100, 1);
    g.backend.push_rx(p.clone());
    dev.process_rx();
    let used = g.rx.used();
    assert_eq!(&used[..3], &[(bad_ro, 0), (bad_short, 0), (bad_outside, 0)]);
    assert_eq!(used[3], (good, 112));
    assert_eq!(g.chain_data(good, 112), with_num_buffers(p, 1));
    assert_eq!(dev.metrics().snapshot().rx_invalid_buffers, 3);
}

#[test]
fn queue_errors_set_needs_reset() {
    let (mut dev, mut g) = setup(V1);
    // The driver claims more new buffers than the queue holds.
    g.tx.q.set_avail_idx(QSIZE + 1);
    dev.process_tx();
    assert!(g.interrupt.needs_reset());
    assert!(!dev.is_active());
    // Nothing runs (or panics) afterwards.
    dev.process_tx();
    dev.process_rx();
    assert!(!dev.wants_backend_events());
}

#[test]
fn event_loop_stops_polling_a_full_backlog() {
    let (dev, mut g) = setup(V1 | 1 << VIRTIO_RING_F_EVENT_IDX);
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    // The activation event.
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);

    // Transmit through the queue notification.
    let p = packet(200, 1);
    g.send(&[&p]);
    dev.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(g.backend.take_tx(), vec![p]);

    // No rx buffers: the backend's fd wakes the loop until the backlog is
    // full, then it is no longer watched although it stays readable.
    for i in 0..100 {
        g.backend.push_rx(packet(60, i));
    }
    em.run_with_timeout(100).unwrap();
    assert_eq!(dev.lock().unwrap().rx_backlog_len(), RX_BACKLOG_FRAMES);
    let fd = dev.lock().unwrap().backend_fd().unwrap();
    assert!(readable(fd));
    assert_eq!(em.run_with_timeout(50).unwrap(), 0, "no busy loop");

    // The guest posts buffers and notifies: everything arrives, in order.
    for _ in 0..100 {
        g.post_rx(&[1526]);
    }
    dev.lock().unwrap().queue_events()[RXQ].write(1).unwrap();
    for _ in 0..4 {
        em.run_with_timeout(20).unwrap();
    }
    let got: Vec<Vec<u8>> = g.received().into_iter().map(|(p, _)| p).collect();
    let expected: Vec<Vec<u8>> = (0..100).map(|i| with_num_buffers(packet(60, i), 1)).collect();
    assert_eq!(got, expected);
    assert_eq!(g.backend.rx_pending(), 0);
    assert!(g.irq.count() >= 1);

    // More frames later: the backend is watched again.
    g.post_rx(&[1526]);
    g.backend.push_rx(packet(70, 200));
    em.run_with_timeout(100).unwrap();
    assert_eq!(g.received().len(), 1);

    // After a reset nothing is watched but the activation eventfd.
    dev.lock().unwrap().reset();
    em.run_with_timeout(100).unwrap();
    g.backend.push_rx(packet(70, 201));
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
}

/// Runs the loop until `done` holds or a second passes.
fn run_until(em: &mut EventManager<Arc<Mutex<Net>>>, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "timed out");
        em.run_with_timeout(10).unwrap();
    }
}

#[test]
fn rate_limiters_hold_frames_back_without_spinning() {
    use crate::rate_limiter::tests::FakeClock;
    use crate::rate_limiter::{BucketConfig, RateLimit, RateLimiter};
    use crate::throttle::Throttle;
    use std::time::Duration;
    let options = NetOptions {
        // Two frames per 40 ms out; 1000 bytes per 50 ms in.
        tx_rate_limit: RateLimit {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 2,
                one_time_burst: 0,
                refill_time_ms: 40,
            }),
        },
        rx_rate_limit: RateLimit {
            bandwidth: Some(BucketConfig {
                size: 1000,
                one_time_burst: 0,
                refill_time_ms: 50,
            }),
            ops: None,
        },
        ..NetOptions::default()
    };
    let (mut dev, mut g) = setup_with(V1, options);
    // The buckets on a clock the test moves (the timers stay real): a slow
    // machine's pauses refill nothing behind the test's back.
    let clock = FakeClock::new();
    let (rx_limit, tx_limit) = dev.rate_limits();
    let throttle = |limit: RateLimit| {
        Throttle::with_limiter(RateLimiter::with_clock(limit, Box::new(clock.clone())), limit).unwrap()
    };
    dev.rx_throttle = throttle(rx_limit);
    dev.tx_throttle = throttle(tx_limit);
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);

    // Transmit: two frames pass, the rest wait on the ring.
    let frames: Vec<Vec<u8>> = (0..5).map(|i| packet(100, i)).collect();
    for f in &frames {
        g.send(&[f]);
    }
    dev.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    let mut sent = g.backend.take_tx();
    assert_eq!(sent.len(), 2);
    assert_eq!(dev.lock().unwrap().metrics().snapshot().tx_throttled, 1);
    // Kicks while throttled do nothing.
    dev.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    assert!(g.backend.take_tx().is_empty());
    // The timer lets the rest out, in order.
    run_until(&mut em, || {
        clock.advance(Duration::from_millis(10));
        sent.extend(g.backend.take_tx());
        sent.len() == 5
    });
    assert_eq!(sent, frames);
    assert_eq!(g.tx.used().len(), 5);

    // Receive: 600 + 600 bytes exceed the 1000-byte bucket.
    for _ in 0..4 {
        g.post_rx(&[1526]);
    }
    let incoming: Vec<Vec<u8>> = (0..4).map(|i| packet(600, 10 + i)).collect();
    for f in &incoming {
        g.backend.push_rx(f.clone());
    }
    em.run_with_timeout(0).unwrap();
    let mut got: Vec<Vec<u8>> = g.received().into_iter().map(|(p, _)| p).collect();
    assert_eq!(got.len(), 1);
    {
        let d = dev.lock().unwrap();
        assert_eq!(d.metrics().snapshot().rx_throttled, 1);
        assert!(
            !d.wants_backend_events(),
            "a throttled device does not poll the backend"
        );
    }
    run_until(&mut em, || {
        clock.advance(Duration::from_millis(10));
        got.extend(g.received().into_iter().map(|(p, _)| p));
        got.len() == 4
    });
    let expected: Vec<Vec<u8>> = incoming.into_iter().map(|f| with_num_buffers(f, 1)).collect();
    assert_eq!(got, expected);

    // Lifting the limits at run time takes effect at once.
    let (mut rx_limit, tx_limit) = dev.lock().unwrap().rate_limits();
    assert!(rx_limit.bandwidth.is_some() && tx_limit.ops.is_some());
    clock.advance(Duration::from_millis(40)); // the tx bucket is full again
    for i in 0..6 {
        g.send(&[&packet(100, 50 + i)]);
    }
    dev.lock().unwrap().queue_events()[TXQ].write(1).unwrap();
    em.run_with_timeout(0).unwrap();
    assert_eq!(g.backend.take_tx().len(), 2);
    rx_limit = RateLimit::default();
    dev.lock()
        .unwrap()
        .set_rate_limits(rx_limit, RateLimit::default());
    em.run_with_timeout(5).unwrap();
    assert_eq!(g.backend.take_tx().len(), 4, "the update retried the queue");
}

#[test]
fn rings_wrap_around() {
    let (mut dev, mut g) = setup(V1 | MRG | 1 << VIRTIO_RING_F_EVENT_IDX);
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for round in 0..3u8 {
        for i in 0..200u8 {
            let p = packet(64 + usize::from(i), round.wrapping_mul(31).wrapping_add(i));
            g.send(&[&p]);
            sent.push(p.clone());
            g.post_rx(&[2048]);
            g.backend.push_rx(p);
        }
        dev.process_tx();
        dev.process_rx();
        assert_eq!(g.tx.used().len(), 200);
        received.extend(g.received().into_iter().map(|(p, _)| p));
    }
    assert_eq!(g.backend.take_tx(), sent);
    let expected: Vec<Vec<u8>> = sent.into_iter().map(|p| with_num_buffers(p, 1)).collect();
    assert_eq!(received, expected);
    let c = dev.metrics().snapshot();
    assert_eq!((c.tx_frames, c.rx_frames), (600, 600));
}

/// Finding: the guest posts one 100-byte rx buffer; a frame too big for
/// it is dropped and the device keeps holding the buffer. A snapshot then
/// saved the ring past that buffer and the restored device never used it:
/// small frames were never delivered. Now the saved state puts held
/// buffers back, and the restored device takes them again.
#[test]
fn a_held_rx_buffer_survives_a_snapshot() {
    let (mut dev, mut g) = setup(V1);
    let head = g.post_rx(&[100]);
    g.backend.push_rx(packet(1514, 1));
    dev.process_rx();
    assert!(g.received().is_empty());
    assert_eq!(dev.metrics().snapshot().rx_dropped_no_buffer, 1);

    // Snapshot: the held buffer is saved as not yet taken.
    let states = dev.queue_states().unwrap();
    assert_eq!(states[0].next_avail, 0, "the held chain is put back");
    let mut queues: Vec<Queue> = states.into_iter().map(|s| Queue::try_from(s).unwrap()).collect();
    for q in &mut queues {
        q.set_event_idx(false);
    }
    // Restore into a fresh device over the same guest memory.
    let mut restored = Net::new(Box::new(g.backend.clone()), &NetOptions::default()).unwrap();
    restored
        .activate(ActivateContext {
            mem: g.mem.clone(),
            queues,
            interrupt: g.interrupt.clone(),
            acked_features: V1,
        })
        .unwrap();
    let small = packet(60, 2);
    g.backend.push_rx(small.clone());
    restored.process_rx();
    let got = g.received();
    assert_eq!(got, vec![(with_num_buffers(small, 1), 1)]);
    assert!(g.rx.chains.contains_key(&head));
}
