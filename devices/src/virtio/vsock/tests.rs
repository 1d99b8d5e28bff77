//! The vsock device driven through real virtqueues in guest memory and
//! real Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use super::connection::CONN_TIMEOUT;
use super::defs::*;
use super::device::Vsock;
use super::muxer::{VsockLimits, RESET_ACK_TIMEOUT};
use crate::interrupt::test_utils::CountingIrq;
use crate::virtio::device::{ActivateContext, VirtioDevice};
use crate::virtio::VirtioInterrupt;
use crate::GuestMemoryMmap;

const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
const CID: u64 = 3;
const QSIZE: u16 = 256;

struct Rig {
    mem: GuestMemoryMmap,
    dev: Vsock,
    path: PathBuf,
    rx: MockSplitQueue<'static, GuestMemoryMmap>,
    tx: MockSplitQueue<'static, GuestMemoryMmap>,
    ev: MockSplitQueue<'static, GuestMemoryMmap>,
    ev_next: u16,
    rx_next: u16,
    tx_next: u16,
    rx_used_seen: u16,
    buf_next: u64,
}

fn tmp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

impl Rig {
    fn new(name: &str) -> Self {
        Self::with_limits(name, VsockLimits::default())
    }

    fn with_limits(name: &str, limits: VsockLimits) -> Self {
        // Leaked so the mock queues can borrow it for 'static.
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
        ));
        let path = tmp_path(name);
        let mut dev = Vsock::new(CID, &path, limits).unwrap();
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
        let ev = MockSplitQueue::create(mem, GuestAddress(0x3_0000), QSIZE);
        let queues: Vec<Queue> = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            ev.create_queue().unwrap(),
        ];
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues,
            interrupt: Arc::new(VirtioInterrupt::new(Arc::new(CountingIrq::default()))),
            acked_features: 1 << 32,
        })
        .unwrap();
        Self {
            mem: mem.clone(),
            dev,
            path,
            rx,
            tx,
            ev,
            ev_next: 0,
            rx_next: 0,
            tx_next: 0,
            rx_used_seen: 0,
            buf_next: 0x10_0000,
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.buf_next;
        self.buf_next += (len + 0xfff) & !0xfff;
        a
    }

    fn header_bytes(h: &Header) -> Vec<u8> {
        let mut b = Vec::with_capacity(44);
        b.extend_from_slice(&h.src_cid.to_le_bytes());
        b.extend_from_slice(&h.dst_cid.to_le_bytes());
        b.extend_from_slice(&h.src_port.to_le_bytes());
        b.extend_from_slice(&h.dst_port.to_le_bytes());
        b.extend_from_slice(&h.len.to_le_bytes());
        b.extend_from_slice(&h.type_.to_le_bytes());
        b.extend_from_slice(&h.op.to_le_bytes());
        b.extend_from_slice(&h.flags.to_le_bytes());
        b.extend_from_slice(&h.buf_alloc.to_le_bytes());
        b.extend_from_slice(&h.fwd_cnt.to_le_bytes());
        b
    }

    /// The guest sends a packet (header and data in separate descriptors,
    /// as Linux 6.1 does); `desc_len` overrides the data descriptor length.
    fn send_raw(&mut self, h: &Header, data: &[u8], desc_len: Option<u32>) {
        let ha = self.alloc(44);
        self.mem
            .write_slice(&Self::header_bytes(h), GuestAddress(ha))
            .unwrap();
        let i = self.tx_next;
        let descs = if data.is_empty() && desc_len.is_none() {
            vec![raw(ha, 44, 0, 0)]
        } else {
            let da = self.alloc(data.len().max(1) as u64);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            vec![
                raw(ha, 44, NEXT, i + 1),
                raw(da, desc_len.unwrap_or(data.len() as u32), 0, 0),
            ]
        };
        self.tx.add_desc_chains(&descs, i).unwrap();
        self.tx_next += descs.len() as u16;
        self.dev.process_tx();
        self.dev.process_rx();
    }

    fn send(&mut self, op: u16, src_port: u32, dst_port: u32, data: &[u8], fwd_cnt: u32) {
        let h = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 16,
            fwd_cnt,
        };
        self.send_raw(&h, data, None);
    }

    fn shutdown(&mut self, src_port: u32, dst_port: u32, flags: u32) {
        let h = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op: op::SHUTDOWN,
            flags,
            buf_alloc: 1 << 16,
            ..Header::default()
        };
        self.send_raw(&h, &[], None);
    }

    /// Posts rx buffers (header + 4 KiB data), as Linux 6.1 does.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let ha = self.alloc(44);
            let da = self.alloc(4096);
            let i = self.rx_next;
            self.rx
                .add_desc_chains(&[raw(ha, 44, WRITE | NEXT, i + 1), raw(da, 4096, WRITE, 0)], i)
                .unwrap();
            self.rx_next += 2;
        }
        self.dev.process_rx();
    }

    /// Posts one 8-byte event buffer.
    fn post_event(&mut self) {
        let a = self.alloc(8);
        let i = self.ev_next;
        self.ev.add_desc_chains(&[raw(a, 8, WRITE, 0)], i).unwrap();
        self.ev_next += 1;
    }

    /// Drives every watched fd, then fills rx buffers.
    fn pump(&mut self) {
        for _ in 0..3 {
            for fd in self.dev.muxer.watched_fds() {
                self.dev.muxer.on_fd_event(fd, EventSet::IN | EventSet::OUT);
            }
            self.dev.process_rx();
            self.dev.muxer.take_watch_changes();
            self.dev.muxer.release_closed();
        }
    }

    /// Packets the device put in the rx ring since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rx.used();
        let idx = used.idx().load();
        let mut out = Vec::new();
        while self.rx_used_seen != idx {
            let e = used
                .ring()
                .ref_at(usize::from(self.rx_used_seen % QSIZE))
                .unwrap()
                .load();
            self.rx_used_seen = self.rx_used_seen.wrapping_add(1);
            let head = self.rx.desc_table().load(e.id() as u16).unwrap();
            let head = Descriptor::from(head);
            let mut hb = [0u8; 44];
            self.mem.read_slice(&mut hb, head.addr()).unwrap();
            let u32_at = |o: usize| u32::from_le_bytes(hb[o..o + 4].try_into().unwrap());
            let h = Header {
                src_cid: u64::from_le_bytes(hb[0..8].try_into().unwrap()),
                dst_cid: u64::from_le_bytes(hb[8..16].try_into().unwrap()),
                src_port: u32_at(16),
                dst_port: u32_at(20),
                len: u32_at(24),
                type_: u16::from_le_bytes([hb[28], hb[29]]),
                op: u16::from_le_bytes([hb[30], hb[31]]),
                flags: u32_at(32),
                buf_alloc: u32_at(36),
                fwd_cnt: u32_at(40),
            };
            let data_desc = Descriptor::from(self.rx.desc_table().load(head.next()).unwrap());
            let mut data = vec![0u8; h.len as usize];
            self.mem.read_slice(&mut data, data_desc.addr()).unwrap();
            assert_eq!(e.len(), 44 + h.len, "used length covers header and data");
            out.push((h, data));
        }
        out
    }

    fn ops(&mut self) -> Vec<u16> {
        self.received().iter().map(|(h, _)| h.op).collect()
    }

    fn connect_host(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(&self.path).unwrap();
        writeln!(c, "CONNECT {port}").unwrap();
        self.pump();
        let pkts = self.received();
        let req = pkts
            .iter()
            .find(|(h, _)| h.op == op::REQUEST)
            .expect("REQUEST to the guest");
        assert_eq!(
            (req.0.dst_port, req.0.dst_cid, req.0.src_cid),
            (port, CID, HOST_CID)
        );
        let local = req.0.src_port;
        self.send(op::RESPONSE, port, local, &[], 0);
        self.pump();
        let mut line = [0u8; 64];
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = c.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());
        (c, local)
    }
}

#[test]
fn host_initiated_connection_moves_data_both_ways() {
    let mut r = Rig::new("host-init");
    r.post_rx(16);
    let (mut c, local) = r.connect_host(1234);
    assert!(local >= LOCAL_PORT_BASE);
    // Guest to host.
    r.send(op::RW, 1234, local, b"hello host", 0);
    let mut buf = [0u8; 32];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello host");
    // Host to guest.
    c.write_all(b"hello guest").unwrap();
    r.pump();
    let pkts = r.received();
    let rw: Vec<_> = pkts.iter().filter(|(h, _)| h.op == op::RW).collect();
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0].1, b"hello guest");
    assert_eq!((rw[0].0.src_port, rw[0].0.dst_port), (local, 1234));
    assert_eq!(rw[0].0.fwd_cnt, 10, "fwd_cnt counts what reached the host");
    assert_eq!(rw[0].0.buf_alloc, DEFAULT_CONN_BUFFER);
    // Host closes: the guest gets SHUTDOWN, answers RST, the connection goes.
    drop(c);
    r.pump();
    let sh = r.received();
    assert!(
        sh.iter()
            .any(|(h, _)| h.op == op::SHUTDOWN && h.flags == SHUTDOWN_RCV | SHUTDOWN_SEND),
        "{sh:?}"
    );
    r.send(op::RST, 1234, local, &[], 11);
    assert_eq!(r.dev.muxer.connection_count(), 0);
}

#[test]
fn guest_initiated_connection_and_refusal() {
    let mut r = Rig::new("guest-init");
    let listener = UnixListener::bind(format!("{}_5000", r.path.display())).unwrap();
    r.post_rx(8);
    r.send(op::REQUEST, 777, 5000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    let (mut s, _) = listener.accept().unwrap();
    r.send(op::RW, 777, 5000, b"ping", 0);
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    // Nobody listens on 5001: RST.
    r.send(op::REQUEST, 778, 5001, &[], 0);
    let pkts = r.received();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.dst_port, pkts[0].0.src_port),
        (op::RST, 778, 5001)
    );
    // Guest closes fully: the device answers RST and drops the connection.
    r.shutdown(777, 5000, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(r.ops(), vec![op::RST]);
    assert_eq!(r.dev.muxer.connection_count(), 0);
    assert_eq!(s.read(&mut b).unwrap(), 0, "the host side sees the close");
}

#[test]
fn malicious_packets_are_refused_and_harmless() {
    let mut r = Rig::new("evil");
    let _l = UnixListener::bind(format!("{}_6000", r.path.display())).unwrap();
    r.post_rx(32);
    // Wrong source or destination CID: dropped without an answer.
    let mut h = Header {
        src_cid: 99,
        dst_cid: HOST_CID,
        src_port: 1,
        dst_port: 6000,
        type_: TYPE_STREAM,
        op: op::REQUEST,
        ..Header::default()
    };
    r.send_raw(&h, &[], None);
    h.src_cid = CID;
    h.dst_cid = 7;
    r.send_raw(&h, &[], None);
    assert!(r.received().is_empty());
    assert_eq!(r.dev.muxer.connection_count(), 0);
    // Unknown type: RST.
    h.dst_cid = HOST_CID;
    h.type_ = 9;
    r.send_raw(&h, &[], None);
    assert_eq!(r.ops(), vec![op::RST]);
    // A len larger than its descriptor: dropped, nothing breaks.
    let big = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1,
        dst_port: 6000,
        len: 5000,
        type_: TYPE_STREAM,
        op: op::RW,
        ..Header::default()
    };
    r.send_raw(&big, b"tiny", Some(4));
    assert!(r.received().is_empty());
    // Unknown op on a live connection: RST.
    r.send(op::REQUEST, 10, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    r.send(0x42, 10, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RST]);
    assert_eq!(r.dev.muxer.connection_count(), 0);
    // A credit that goes backwards: RST.
    r.send(op::REQUEST, 11, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    r.send(op::CREDIT_UPDATE, 11, 6000, &[], 5);
    assert_eq!(r.ops(), vec![op::RST], "fwd_cnt beyond what was sent");
    r.send(op::REQUEST, 12, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    r.send(op::CREDIT_UPDATE, 12, 6000, &[], u32::MAX);
    assert_eq!(r.ops(), vec![op::RST], "fwd_cnt going backwards");
    // Data after the guest's SHUTDOWN(SEND): RST.
    r.send(op::REQUEST, 13, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    r.shutdown(13, 6000, SHUTDOWN_SEND);
    r.send(op::RW, 13, 6000, b"late", 0);
    assert_eq!(r.ops(), vec![op::RST]);
    // RW and RESPONSE for connections that do not exist: RST.
    r.send(op::RW, 14, 6000, b"x", 0);
    r.send(op::RESPONSE, 15, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RST, op::RST]);
    assert_eq!(r.dev.muxer.connection_count(), 0);
}

#[test]
fn guest_exceeding_its_credit_is_reset_and_vmm_buffer_is_bounded() {
    let mut r = Rig::new("credit");
    let listener = UnixListener::bind(format!("{}_7000", r.path.display())).unwrap();
    r.post_rx(8);
    r.send(op::REQUEST, 20, 7000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    let (_host, _) = listener.accept().unwrap(); // never reads
    let chunk = vec![0xabu8; MAX_PKT_DATA as usize];
    let mut sent = 0usize;
    let mut reset = false;
    // The host never reads; the socket buffer fills, then our buffer.
    for _ in 0..64 {
        r.send(op::RW, 20, 7000, &chunk, 0);
        sent += chunk.len();
        if r.ops().contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest ignoring its credit must be reset (sent {sent})");
    assert_eq!(r.dev.muxer.connection_count(), 0);
}

#[test]
fn host_reads_only_what_the_guest_can_take() {
    let mut r = Rig::new("guest-credit");
    let listener = UnixListener::bind(format!("{}_7100", r.path.display())).unwrap();
    r.post_rx(16);
    // The guest advertises 8 KiB of buffer.
    let h = Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 30,
        dst_port: 7100,
        type_: TYPE_STREAM,
        op: op::REQUEST,
        buf_alloc: 8192,
        ..Header::default()
    };
    r.send_raw(&h, &[], None);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&vec![7u8; 64 << 10]).unwrap();
    r.pump();
    let got: usize = r
        .received()
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(got, 8192, "no more than the guest's credit");
    // The guest consumed 4 KiB: 4 KiB more flows.
    let upd = Header {
        op: op::CREDIT_UPDATE,
        fwd_cnt: 4096,
        ..h
    };
    r.send_raw(&upd, &[], None);
    r.pump();
    let more: usize = r
        .received()
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(more, 4096);
}

#[test]
fn bad_handshakes_close_only_that_client() {
    let mut r = Rig::new("handshakes");
    r.post_rx(32);
    let (mut good, local) = r.connect_host(4000);
    let mut bad: Vec<UnixStream> = Vec::new();
    for line in [&b"CONNECT abc\n"[..], b"CONNECT 99999999999\n", &[b'x'; 80][..]] {
        let mut c = UnixStream::connect(&r.path).unwrap();
        c.write_all(line).unwrap();
        bad.push(c);
    }
    let silent = UnixStream::connect(&r.path).unwrap();
    r.pump();
    for mut c in bad {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "a bad client is closed");
    }
    // The silent client times out.
    assert_eq!(r.dev.muxer.pending_client_count(), 1);
    r.dev.muxer.on_timer(Instant::now() + Duration::from_secs(3));
    r.dev.muxer.take_watch_changes();
    r.dev.muxer.release_closed();
    assert_eq!(r.dev.muxer.pending_client_count(), 0);
    let mut silent = silent;
    silent.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(silent.read(&mut [0u8; 4]).unwrap_or(0), 0);
    // The good connection still works.
    r.send(op::RW, 4000, local, b"still here", 0);
    let mut b = [0u8; 10];
    good.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
}

#[test]
fn unanswered_host_connect_times_out() {
    let mut r = Rig::new("timeout");
    r.post_rx(4);
    let mut c = UnixStream::connect(&r.path).unwrap();
    c.write_all(b"CONNECT 9\n").unwrap();
    r.pump();
    assert_eq!(r.ops(), vec![op::REQUEST]);
    r.dev.muxer.on_timer(Instant::now() + Duration::from_secs(3));
    r.dev.process_rx();
    assert_eq!(r.ops(), vec![op::RST]);
    r.dev.muxer.take_watch_changes();
    r.dev.muxer.release_closed();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(c.read(&mut [0u8; 4]).unwrap_or(0), 0);
}

#[test]
fn device_reset_drops_everything() {
    let mut r = Rig::new("reset");
    r.post_rx(8);
    let (mut c, _) = r.connect_host(1);
    r.dev.reset();
    r.dev.muxer.take_watch_changes();
    r.dev.muxer.release_closed();
    assert_eq!(r.dev.muxer.connection_count(), 0);
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(c.read(&mut [0u8; 4]).unwrap_or(0), 0);
}

#[test]
fn host_connections_wait_until_the_guest_handled_a_transport_reset() {
    let mut r = Rig::new("restore-hold");
    r.post_rx(8);
    r.post_event();
    r.dev.restored();
    assert_eq!(r.ev.used().idx().load(), 1, "TRANSPORT_RESET delivered");
    let mut c = UnixStream::connect(&r.path).unwrap();
    c.write_all(b"CONNECT 52\nearly").unwrap();
    r.pump();
    assert!(
        r.ops().is_empty(),
        "no REQUEST before the guest handled the reset"
    );
    assert!(r.dev.muxer.is_holding());

    // Linux hands the event buffer back once it has handled the event.
    r.post_event();
    r.dev.on_event_queue_notify();
    r.dev.process_rx();
    let pkts = r.received();
    let req = pkts
        .iter()
        .find(|(h, _)| h.op == op::REQUEST)
        .expect("REQUEST after the ack");
    let local = req.0.src_port;
    r.send(op::RESPONSE, 52, local, &[], 0);
    r.pump();
    let mut line = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = c.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());
    // What the client sent right after its CONNECT line was kept for the
    // guest.
    r.pump();
    let data: Vec<u8> = r
        .received()
        .into_iter()
        .filter(|(h, _)| h.op == op::RW)
        .flat_map(|(_, d)| d)
        .collect();
    assert_eq!(data, b"early");
    assert!(!r.dev.muxer.is_holding());
}

#[test]
fn held_host_connections_go_ahead_when_the_guest_never_acknowledges() {
    let mut r = Rig::new("restore-noack");
    r.post_rx(8);
    r.dev.restored(); // no event buffer: the reset cannot even be delivered
    let _c = {
        let mut c = UnixStream::connect(&r.path).unwrap();
        writeln!(c, "CONNECT 7").unwrap();
        c
    };
    r.pump();
    assert!(r.ops().is_empty());
    // Held at most RESET_ACK_TIMEOUT, which leaves the guest the rest of
    // CONN_TIMEOUT to answer.
    r.dev
        .muxer
        .on_timer(Instant::now() + RESET_ACK_TIMEOUT + Duration::from_millis(100));
    r.dev.process_rx();
    assert_eq!(r.ops(), vec![op::REQUEST]);
}

/// Finding: a host CONNECT to a guest that posts no rx buffers (so the
/// REQUEST never reaches it) got neither OK nor a close. Now the host
/// socket is closed at the deadline, the RST waits in the bounded control
/// queue, and no deadline is left in the past (which re-armed the timer at
/// its 1 ms floor, ~1000 wake-ups a second).
#[test]
fn a_host_connect_to_a_guest_without_rx_buffers_is_closed_at_the_deadline() {
    let mut r = Rig::new("norx");
    let mut clients = Vec::new();
    for port in 0..20 {
        let mut c = UnixStream::connect(&r.path).unwrap();
        writeln!(c, "CONNECT {}", 52 + port).unwrap();
        clients.push(c);
        r.pump();
    }
    assert_eq!(r.dev.muxer.connection_count(), 20);
    assert!(r.ops().is_empty(), "no rx buffer, nothing delivered");
    // Each connection's deadline runs from its own CONNECT, so fire past the
    // latest one (a slow machine spreads the 20 connects over milliseconds).
    let latest = Instant::now() + CONN_TIMEOUT;
    let earliest = r.dev.muxer.next_deadline().unwrap();
    assert!(earliest <= latest, "a deadline is armed within CONN_TIMEOUT");
    r.dev.muxer.on_timer(latest + Duration::from_millis(1));
    r.dev.muxer.take_watch_changes();
    r.dev.muxer.release_closed();
    assert_eq!(r.dev.muxer.connection_count(), 0, "closed host-side at once");
    assert_eq!(r.dev.muxer.next_deadline(), None, "no expired deadline remains");
    assert_eq!(r.dev.muxer.control_backlog(), 20, "the RSTs wait for the guest");
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0, "the client sees the close");
    }
    // Once the guest posts buffers, it gets its RSTs.
    r.post_rx(32);
    assert_eq!(r.ops(), vec![op::RST; 20]);
}

/// Finding: with guest data buffered for a host socket that then closed,
/// and no rx buffer for the RST, the connection stayed and its fd stayed
/// watched for writing: the event loop spun at 99% CPU. Now a failed host
/// write aborts the connection at once and nothing is left watched.
#[test]
fn a_closed_host_socket_with_buffered_data_is_dropped_not_spun_on() {
    let mut r = Rig::with_limits(
        "spin",
        VsockLimits {
            conn_buffer: 1 << 20,
            ..VsockLimits::default()
        },
    );
    let listener = UnixListener::bind(format!("{}_6000", r.path.display())).unwrap();
    r.post_rx(1);
    r.send(op::REQUEST, 30, 6000, &[], 0);
    assert_eq!(r.ops(), vec![op::RESPONSE]);
    let (host, _) = listener.accept().unwrap();
    // More than the Unix socket takes: the rest stays in the device.
    let chunk = vec![7u8; MAX_PKT_DATA as usize];
    for _ in 0..8 {
        r.send(op::RW, 30, 6000, &chunk, 0);
    }
    assert!(r.dev.muxer.buffered_bytes() > 0, "data waits for the host");
    drop(host);
    // The fd polls writable (with an error): the device tries to write.
    r.pump();
    assert_eq!(r.dev.muxer.connection_count(), 0);
    assert_eq!(r.dev.muxer.buffered_bytes(), 0);
    assert!(
        r.dev.muxer.watched_fds() == vec![r.dev.muxer.listener_fd()],
        "nothing but the listener is watched"
    );
}

/// Finding: 1 100 guest connections to a host listener that never reads
/// grew the VMM by 270 MiB and 1 000 fds. Now connections stop at the
/// VM's limit (the rest get an RST), and each buffers at most its credit.
#[test]
fn guest_connections_and_their_buffers_stop_at_the_vm_limits() {
    let limits = VsockLimits {
        max_connections: 16,
        conn_buffer: 32 << 10,
    };
    let mut r = Rig::with_limits("flood", limits);
    let listener = UnixListener::bind(format!("{}_7100", r.path.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    r.post_rx(64);
    let mut accepted = Vec::new();
    for port in 0..30u32 {
        r.send(op::REQUEST, 3000 + port, 7100, &[], 0);
        while let Ok((s, _)) = listener.accept() {
            socket2::SockRef::from(&s).set_recv_buffer_size(4096).unwrap();
            accepted.push(s); // never read
        }
    }
    let ops = r.ops();
    assert_eq!(ops.iter().filter(|&&o| o == op::RESPONSE).count(), 16);
    assert_eq!(ops.iter().filter(|&&o| o == op::RST).count(), 14);
    assert_eq!(r.dev.muxer.connection_count(), 16);
    // Each connection is filled up to its credit; the guest gets no more.
    let chunk = vec![1u8; 32 << 10];
    for port in 0..16u32 {
        r.send(op::RW, 3000 + port, 7100, &chunk, 0);
    }
    assert!(r.dev.muxer.buffered_bytes() <= 16 * (32 << 10));
    assert_eq!(r.dev.muxer.connection_count(), 16);
}
