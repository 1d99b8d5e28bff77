//! Host-side throughput and connect latency of the virtio-vsock device
//! model, with no VM. The device runs as it does in the VMM: subscribed
//! to an event-manager loop (queue eventfds, its Unix socket, every
//! connection's stream, its timer). On the loop's thread, after every
//! wake-up, a simulated guest driver does what Linux 6.1's
//! virtio-vsock driver does: it keeps the rx queue full of buffers
//! (a 44-byte header descriptor plus a 4 or 64 KiB data descriptor),
//! consumes the used ones, answers REQUESTs, sends data packets
//! (header plus data, at most 64 KiB, within the device's credit),
//! returns credit (a CREDIT_UPDATE once the free space the device knows
//! of drops under 64 KiB of its 256 KiB), and kicks the queue eventfds
//! as the ioeventfds would. A host client on a second thread talks to the
//! device's Unix socket with the `CONNECT <port>\n` handshake.
//!
//! - host→guest: the client writes 64 MiB; clock from its first write to
//!   the guest consuming the last byte.
//! - guest→host: the guest sends 64 MiB in 4 or 64 KiB writes; clock from
//!   its first packet to the client reading the last byte.
//! - connect: `connect()` + `CONNECT` → REQUEST on rx → RESPONSE on tx →
//!   `OK <port>\n` read by the client, then close.
//!
//! Throughput is the median of the runs (with the interquartile range,
//! as the machine may be shared); CPU is the whole process's (device,
//! simulated guest and client) per MiB moved; wake-ups are event-loop
//! iterations that dispatched events, irqs the device's used-buffer
//! notifications.
//!
//! `cargo bench -p hearth-devices --bench vsock [-- RUNS]` (default 15 runs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use hearth_devices::interrupt::IrqLine;
use hearth_devices::legacy::boot_timer::process_cpu_time;
use hearth_devices::testing::QueueDriver;
use hearth_devices::virtio::vsock::defs::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use hearth_devices::virtio::vsock::device::{QUEUE_SIZE, RXQ, TXQ};
use hearth_devices::virtio::vsock::Vsock;
use hearth_devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use hearth_devices::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const CID: u64 = 3;
const GUEST_PORT: u32 = 5000;
const HDR: usize = 44;
/// Two descriptors per buffer or packet: 128 of each in flight.
const SLOTS: u16 = QUEUE_SIZE / 2;
/// Linux's per-socket receive buffer (VIRTIO_VSOCK_DEFAULT_BUF_SIZE).
const GUEST_BUF_ALLOC: u32 = 256 << 10;
/// Linux's largest packet (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
const MAX_PKT: u32 = 64 << 10;
/// Byte `o` of every stream is `o % PATTERN`.
const PATTERN: usize = 251;
const STREAM_BYTES: u64 = 64 << 20;
const MIB: f64 = (1 << 20) as f64;
const CONNECTS: usize = 1000;
const WARMUP_CONNECTS: usize = 50;
/// No event for this long: the device stalled.
const STALL: Duration = Duration::from_secs(5);
const MEM_SIZE: usize = 0x200_0000;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

fn rx_hdr(k: u16) -> u64 {
    0x10_0000 + u64::from(k) * 64
}
fn tx_hdr(k: u16) -> u64 {
    0x11_0000 + u64::from(k) * 64
}
fn rx_data(k: u16) -> u64 {
    0x20_0000 + u64::from(k) * u64::from(MAX_PKT)
}
/// Each tx buffer holds the pattern for 64 KiB plus one period, so any
/// stream offset starts somewhere in its first `PATTERN` bytes.
fn tx_data(k: u16) -> u64 {
    0x100_0000 + u64::from(k) * 0x1_1000
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % PATTERN) as u8).collect()
}

fn encode(h: &Header) -> [u8; HDR] {
    let mut b = [0u8; HDR];
    b[0..8].copy_from_slice(&h.src_cid.to_le_bytes());
    b[8..16].copy_from_slice(&h.dst_cid.to_le_bytes());
    b[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    b[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    b[24..28].copy_from_slice(&h.len.to_le_bytes());
    b[28..30].copy_from_slice(&h.type_.to_le_bytes());
    b[30..32].copy_from_slice(&h.op.to_le_bytes());
    b[32..36].copy_from_slice(&h.flags.to_le_bytes());
    b[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
    b[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
    b
}

fn decode(b: &[u8; HDR]) -> Header {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    Header {
        src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16::from_le_bytes([b[28], b[29]]),
        op: u16::from_le_bytes([b[30], b[31]]),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

fn guest_header(host_port: u32, op: u16, flags: u32, len: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: GUEST_PORT,
        dst_port: host_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt,
    }
}

#[derive(Debug, Default)]
struct CountingIrq(AtomicU64);

impl IrqLine for CountingIrq {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The guest's side of one stream, keyed by the host port.
#[derive(Debug, Default)]
struct GuestConn {
    /// Data received (the stream offset of the next byte).
    received: u64,
    /// Data the guest's application consumed (all of it, at once).
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    /// Data sent (the stream offset of the next byte).
    sent: u64,
    to_send: u64,
    write_size: u32,
    close_when_sent: bool,
}

/// The simulated guest driver and its application.
struct Guest {
    mem: GuestMemoryMmap,
    rx: QueueDriver,
    tx: QueueDriver,
    rx_kick: EventFd,
    tx_kick: EventFd,
    rx_buf_len: u32,
    tx_free: Vec<u16>,
    /// Control packets waiting for a tx slot.
    backlog: VecDeque<Header>,
    conns: HashMap<u32, GuestConn>,
    /// Data bytes received, all streams.
    rx_data: u64,
}

/// Puts one packet (header, optional data) in tx slot `k`.
fn post_tx(mem: &GuestMemoryMmap, tx: &mut QueueDriver, k: u16, h: &Header, data: Option<(u64, u32)>) {
    mem.write_slice(&encode(h), GuestAddress(tx_hdr(k))).unwrap();
    let (d0, d1) = (2 * k, 2 * k + 1);
    match data {
        Some((addr, len)) => {
            tx.write_descriptor(d0, Descriptor::new(tx_hdr(k), HDR as u32, NEXT, d1));
            tx.write_descriptor(d1, Descriptor::new(addr, len, 0, 0));
        }
        None => tx.write_descriptor(d0, Descriptor::new(tx_hdr(k), HDR as u32, 0, 0)),
    }
    tx.make_available(d0);
}

impl Guest {
    fn new(mem: &GuestMemoryMmap, rx_buf_len: u32, rx_kick: EventFd, tx_kick: EventFd) -> Self {
        let mut rx = QueueDriver::new(mem, 0x1_0000, QUEUE_SIZE);
        let tx = QueueDriver::new(mem, 0x2_0000, QUEUE_SIZE);
        let fill = pattern(MAX_PKT as usize + PATTERN);
        for k in 0..SLOTS {
            rx.write_descriptor(
                2 * k,
                Descriptor::new(rx_hdr(k), HDR as u32, WRITE | NEXT, 2 * k + 1),
            );
            rx.write_descriptor(2 * k + 1, Descriptor::new(rx_data(k), rx_buf_len, WRITE, 0));
            rx.make_available(2 * k);
            mem.write_slice(&fill, GuestAddress(tx_data(k))).unwrap();
        }
        Self {
            mem: mem.clone(),
            rx,
            tx,
            rx_kick,
            tx_kick,
            rx_buf_len,
            tx_free: (0..SLOTS).rev().collect(),
            backlog: VecDeque::new(),
            conns: HashMap::new(),
            rx_data: 0,
        }
    }

    /// One pass of the driver: reclaim tx, consume rx and refill it,
    /// send, kick.
    fn poll(&mut self) {
        for (head, _) in self.tx.used() {
            self.tx_free.push(head / 2);
        }
        let used = self.rx.used();
        for &(head, len) in &used {
            let k = head / 2;
            let mut b = [0u8; HDR];
            self.mem.read_slice(&mut b, GuestAddress(rx_hdr(k))).unwrap();
            let h = decode(&b);
            assert_eq!(len, HDR as u32 + h.len, "used length is header plus data: {h:?}");
            self.on_packet(&h, k);
            self.rx.make_available(head);
        }
        let mut kick_tx = self.flush_backlog();
        kick_tx |= self.send_data();
        kick_tx |= self.flush_backlog();
        if !used.is_empty() {
            self.rx_kick.write(1).unwrap();
        }
        if kick_tx {
            self.tx_kick.write(1).unwrap();
        }
    }

    fn on_packet(&mut self, h: &Header, k: u16) {
        assert_eq!(
            (h.src_cid, h.dst_cid, h.dst_port, h.type_),
            (HOST_CID, CID, GUEST_PORT, TYPE_STREAM),
            "{h:?}"
        );
        let port = h.src_port;
        if h.op == op::REQUEST {
            let c = GuestConn {
                peer_buf_alloc: h.buf_alloc,
                peer_fwd_cnt: Wrapping(h.fwd_cnt),
                ..GuestConn::default()
            };
            assert!(
                self.conns.insert(port, c).is_none(),
                "REQUEST for a live port {port}"
            );
            self.backlog.push_back(guest_header(port, op::RESPONSE, 0, 0, 0));
            return;
        }
        let Some(c) = self.conns.get_mut(&port) else {
            panic!("packet for an unknown connection: {h:?}");
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match h.op {
            op::RW => {
                assert!(h.len > 0 && h.len <= self.rx_buf_len, "{h:?}");
                let at = |o: u64| self.mem.read_obj::<u8>(GuestAddress(rx_data(k) + o)).unwrap();
                let (first, last) = (c.received, c.received + u64::from(h.len) - 1);
                assert_eq!(at(0), (first % PATTERN as u64) as u8, "data at offset {first}");
                assert_eq!(
                    at(u64::from(h.len) - 1),
                    (last % PATTERN as u64) as u8,
                    "data at offset {last}"
                );
                c.received += u64::from(h.len);
                c.fwd_cnt += Wrapping(h.len);
                self.rx_data += u64::from(h.len);
                let unannounced = (c.fwd_cnt - c.last_fwd_cnt_sent).0;
                assert!(
                    unannounced <= GUEST_BUF_ALLOC,
                    "the device overran the guest's credit"
                );
                // virtio_transport_stream_do_dequeue's rule.
                if GUEST_BUF_ALLOC - unannounced < MAX_PKT {
                    c.last_fwd_cnt_sent = c.fwd_cnt;
                    self.backlog
                        .push_back(guest_header(port, op::CREDIT_UPDATE, 0, 0, c.fwd_cnt.0));
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                c.last_fwd_cnt_sent = c.fwd_cnt;
                self.backlog
                    .push_back(guest_header(port, op::CREDIT_UPDATE, 0, 0, c.fwd_cnt.0));
            }
            op::SHUTDOWN => {
                // The application closes at once: RST ends it.
                self.backlog
                    .push_back(guest_header(port, op::RST, 0, 0, c.fwd_cnt.0));
                self.conns.remove(&port);
            }
            op::RST => {
                self.conns.remove(&port);
            }
            other => panic!("unexpected op {other}: {h:?}"),
        }
    }

    fn flush_backlog(&mut self) -> bool {
        let mut posted = false;
        while !self.backlog.is_empty() {
            let Some(k) = self.tx_free.pop() else { break };
            let h = self.backlog.pop_front().unwrap();
            post_tx(&self.mem, &mut self.tx, k, &h, None);
            posted = true;
        }
        posted
    }

    /// Sends what the applications want to, within the device's credit.
    fn send_data(&mut self) -> bool {
        if !self.backlog.is_empty() {
            return false;
        }
        let mut posted = false;
        for (&port, c) in self.conns.iter_mut() {
            while c.to_send > 0 {
                let credit = c.peer_buf_alloc.saturating_sub((c.tx_cnt - c.peer_fwd_cnt).0);
                let n = u64::from(credit.min(c.write_size)).min(c.to_send) as u32;
                if n == 0 {
                    break;
                }
                let Some(k) = self.tx_free.pop() else { break };
                let h = guest_header(port, op::RW, 0, n, c.fwd_cnt.0);
                c.last_fwd_cnt_sent = c.fwd_cnt;
                let addr = tx_data(k) + c.sent % PATTERN as u64;
                post_tx(&self.mem, &mut self.tx, k, &h, Some((addr, n)));
                c.tx_cnt += Wrapping(n);
                c.sent += u64::from(n);
                c.to_send -= u64::from(n);
                posted = true;
                if c.to_send == 0 && c.close_when_sent {
                    let flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
                    self.backlog
                        .push_back(guest_header(port, op::SHUTDOWN, flags, 0, c.fwd_cnt.0));
                }
            }
        }
        posted
    }
}

/// The device on its event loop, the guest, and counters.
struct Rig {
    em: EventManager<Arc<Mutex<Vsock>>>,
    dev: Arc<Mutex<Vsock>>,
    guest: Guest,
    path: PathBuf,
    irqs: Arc<CountingIrq>,
    wakeups: u64,
}

impl Rig {
    fn new(name: &str, rx_buf_len: u32) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let path =
            std::env::temp_dir().join(format!("hearth-vsock-bench-{}-{name}.sock", std::process::id()));
        let mut dev = Vsock::new(CID, &path, Default::default()).unwrap();
        let rx_kick = dev.queue_events()[RXQ].try_clone().unwrap();
        let tx_kick = dev.queue_events()[TXQ].try_clone().unwrap();
        let guest = Guest::new(&mem, rx_buf_len, rx_kick, tx_kick);
        let ev = QueueDriver::new(&mem, 0x3_0000, QUEUE_SIZE);
        let irqs = Arc::new(CountingIrq::default());
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![guest.rx.queue(), guest.tx.queue(), ev.queue()],
            interrupt: Arc::new(VirtioInterrupt::new(irqs.clone())),
            acked_features: 1 << 32, // VERSION_1
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut rig = Self {
            em,
            dev,
            guest,
            path,
            irqs,
            wakeups: 0,
        };
        rig.em.run_with_timeout(0).unwrap(); // activation
        rig
    }

    /// Runs the loop and the guest until `done`.
    fn drive(&mut self, mut done: impl FnMut(&Guest, &Vsock) -> bool) {
        let mut last_event = Instant::now();
        while !done(&self.guest, &self.dev.lock().unwrap()) {
            if self.em.run_with_timeout(20).unwrap() > 0 {
                self.wakeups += 1;
                last_event = Instant::now();
            } else if last_event.elapsed() > STALL {
                let d = self.dev.lock().unwrap();
                panic!(
                    "stalled: device {:?}, pending clients {}, guest conns {:?}, {} tx slots free, backlog {:?}",
                    *d,
                    d.muxer().pending_client_count(),
                    self.guest.conns,
                    self.guest.tx_free.len(),
                    self.guest.backlog
                );
            }
            self.guest.poll();
        }
    }

    /// Runs until every connection is gone on both sides.
    fn settle(&mut self) {
        self.drive(|g, d| {
            g.conns.is_empty() && d.muxer().connection_count() == 0 && d.muxer().pending_client_count() == 0
        });
    }

    fn counters(&self) -> (u64, u64) {
        (self.wakeups, self.irqs.0.load(Ordering::Relaxed))
    }
}

/// `CONNECT <port>\n`, then the `OK <host port>\n` line, read a byte at a
/// time so nothing after it is consumed.
fn handshake(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(STALL)).unwrap();
    s.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the handshake");
        line.push(b[0]);
    }
    assert!(line.starts_with(b"OK "), "{:?}", String::from_utf8_lossy(&line));
    s
}

type Stamp = (Instant, Duration);

fn stamp() -> Stamp {
    (Instant::now(), process_cpu_time())
}

/// One run's rate, CPU and counters per MiB.
#[derive(Clone, Copy, Debug)]
struct Sample {
    mb_s: f64,
    cpu_us_mib: f64,
    wakeups_mib: f64,
    irqs_mib: f64,
}

fn sample(start: Stamp, end: Stamp, before: (u64, u64), after: (u64, u64)) -> Sample {
    let secs = end.0.duration_since(start.0).as_secs_f64();
    let mib = STREAM_BYTES as f64 / MIB;
    Sample {
        mb_s: STREAM_BYTES as f64 / secs / 1e6,
        cpu_us_mib: end.1.saturating_sub(start.1).as_secs_f64() * 1e6 / mib,
        wakeups_mib: (after.0 - before.0) as f64 / mib,
        irqs_mib: (after.1 - before.1) as f64 / mib,
    }
}

/// The host client writes the stream and closes; the guest consumes it.
fn host_to_guest(rig: &mut Rig) -> Sample {
    let (tx, rx) = mpsc::channel();
    let path = rig.path.clone();
    let client = thread::spawn(move || {
        let mut s = handshake(&path);
        // A whole number of pattern periods, about 64 KiB.
        let chunk = pattern(PATTERN * (MAX_PKT as usize / PATTERN));
        let mut left = STREAM_BYTES as usize;
        tx.send(stamp()).unwrap();
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    });
    rig.guest.rx_data = 0;
    let before = rig.counters();
    rig.drive(|g, _| g.rx_data >= STREAM_BYTES);
    let end = stamp();
    let after = rig.counters();
    assert_eq!(rig.guest.rx_data, STREAM_BYTES);
    client.join().unwrap();
    rig.settle();
    sample(rx.recv().unwrap(), end, before, after)
}

/// The guest sends the stream in `write_size` writes and shuts down; the
/// host client reads it to EOF.
fn guest_to_host(rig: &mut Rig, write_size: u32) -> Sample {
    let (tx, rx) = mpsc::channel();
    let path = rig.path.clone();
    let client = thread::spawn(move || {
        let mut s = handshake(&path);
        let mut buf = vec![0u8; MAX_PKT as usize];
        let mut got = 0u64;
        while got < STREAM_BYTES {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "EOF after {got} bytes");
            assert_eq!(buf[0], (got % PATTERN as u64) as u8, "data at offset {got}");
            let last = got + n as u64 - 1;
            assert_eq!(buf[n - 1], (last % PATTERN as u64) as u8, "data at offset {last}");
            got += n as u64;
        }
        tx.send(stamp()).unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF after the stream");
    });
    // The REQUEST was answered and the device took the RESPONSE.
    rig.drive(|g, _| !g.conns.is_empty() && g.tx_free.len() == usize::from(SLOTS));
    let c = rig.guest.conns.values_mut().next().unwrap();
    c.to_send = STREAM_BYTES;
    c.write_size = write_size;
    c.close_when_sent = true;
    let before = rig.counters();
    let start = stamp();
    // The application writes: the driver posts and kicks at once.
    rig.guest.poll();
    let mut end = None;
    rig.drive(|_, _| {
        end = end.or_else(|| rx.try_recv().ok());
        end.is_some()
    });
    let after = rig.counters();
    client.join().unwrap();
    rig.settle();
    sample(start, end.unwrap(), before, after)
}

/// Connect latencies of `n` host connections made one after the other.
fn connects(rig: &mut Rig, n: usize) -> Vec<Duration> {
    let (tx, rx) = mpsc::channel();
    let path = rig.path.clone();
    let client = thread::spawn(move || {
        let lat: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                let s = handshake(&path);
                let d = t.elapsed();
                drop(s);
                d
            })
            .collect();
        tx.send(lat).unwrap();
    });
    let mut lat = None;
    rig.drive(|_, _| {
        lat = lat.take().or_else(|| rx.try_recv().ok());
        lat.is_some()
    });
    client.join().unwrap();
    rig.settle();
    lat.unwrap()
}

/// The `q`-quantile (0 to 1) of `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn report(name: &str, buf: &str, samples: &[Sample]) {
    let m = |f: fn(&Sample) -> f64| quantile(&samples.iter().map(f).collect::<Vec<_>>(), 0.5);
    let rates: Vec<f64> = samples.iter().map(|s| s.mb_s).collect();
    println!(
        "{name:<12} {buf:<11} {:>8.0} {:>13} {:>11.0} {:>12.1} {:>9.1}",
        m(|s| s.mb_s),
        format!("{:.0}-{:.0}", quantile(&rates, 0.25), quantile(&rates, 0.75)),
        m(|s| s.cpu_us_mib),
        m(|s| s.wakeups_mib),
        m(|s| s.irqs_mib)
    );
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15)
        .max(1);
    println!(
        "virtio-vsock device model, no VM: event-manager loop + simulated Linux-like driver on one \
         thread, host Unix-socket client on another; median of {runs} runs of {} MiB",
        STREAM_BYTES >> 20
    );
    println!(
        "{:<12} {:<11} {:>8} {:>13} {:>11} {:>12} {:>9}",
        "direction", "buffers", "MB/s", "(p25-p75)", "CPU us/MiB", "wakeups/MiB", "irqs/MiB"
    );
    for (rx_len, label) in [(4u32 << 10, "4 KiB rx"), (64 << 10, "64 KiB rx")] {
        let mut rig = Rig::new("h2g", rx_len);
        host_to_guest(&mut rig); // warm-up
        let s: Vec<Sample> = (0..runs).map(|_| host_to_guest(&mut rig)).collect();
        report("host->guest", label, &s);
    }
    for (write, label) in [(4u32 << 10, "4 KiB pkts"), (64 << 10, "64 KiB pkts")] {
        let mut rig = Rig::new("g2h", 4 << 10);
        guest_to_host(&mut rig, write); // warm-up
        let s: Vec<Sample> = (0..runs).map(|_| guest_to_host(&mut rig, write)).collect();
        report("guest->host", label, &s);
    }
    let mut rig = Rig::new("connect", 4 << 10);
    connects(&mut rig, WARMUP_CONNECTS);
    let mut lat = connects(&mut rig, CONNECTS);
    lat.sort();
    let us = |i: usize| lat[i.min(lat.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "connect      CONNECT->OK over {CONNECTS} connections (closed after each): \
         median {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        us(CONNECTS / 2),
        us(CONNECTS * 9 / 10),
        us(CONNECTS * 99 / 100),
        us(CONNECTS - 1)
    );
    let d = rig.dev.lock().unwrap();
    assert_eq!(d.muxer().connection_count(), 0);
}
