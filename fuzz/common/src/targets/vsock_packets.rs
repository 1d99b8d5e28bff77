//! Guest vsock packets with arbitrary headers and lengths through the
//! vsock device's queue handling (`Vsock::process_tx`, `process_rx`,
//! `process_event_queue`), with the muxer's real Unix sockets: a host
//! listener on port 1234 accepts guest connections, other ports refuse.
//!
//! Invariants: no panic; the device writes only into device-writable
//! buffers and the used rings; the used-ring invariants of [`Ring`] on
//! all three queues; every tx chain is used by `process_tx`; an rx or
//! event entry with a packet is at least a header long.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::virtio::vsock::defs::{HOST_CID, TYPE_STREAM};
use hearth_devices::virtio::vsock::device::{EVQ, RXQ, TXQ};
use hearth_devices::virtio::vsock::Vsock;
use hearth_devices::virtio::{ActivateContext, VirtioDevice, VirtioInterrupt};
use virtio_queue::desc::split::Descriptor;

use crate::guest::{AddrSpec, Guest};
use crate::ring::{queue_size, Desc, Ring};
use crate::NoIrq;

const GUEST_CID: u64 = 3;
/// The host port with a listener.
const OPEN_PORT: u32 = 1234;
const HDR: usize = 44;

struct Host {
    uds: PathBuf,
    listener: Option<UnixListener>,
}

thread_local! {
    static HOST: Host = {
        let dir = std::env::temp_dir().join(format!("hearth-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("v.sock");
        let port_path = PathBuf::from(format!("{}_{OPEN_PORT}", uds.display()));
        let _ = std::fs::remove_file(&port_path);
        let listener = UnixListener::bind(&port_path).ok();
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
        }
        Host { uds, listener }
    };
}

#[derive(Debug)]
struct Cid(u64);

impl<'a> Arbitrary<'a> for Cid {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? {
            0..=239 => 0,
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Debug)]
struct Port(u32);

impl<'a> Arbitrary<'a> for Port {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? % 8 {
            0..=3 => OPEN_PORT,
            4 => OPEN_PORT + 1,
            5 | 6 => 1000 + u32::from(u8::arbitrary(u)? % 4),
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Arbitrary, Debug)]
enum Layout {
    /// Header and data in two descriptors (Linux 6.1).
    Split,
    /// One descriptor for both (Linux 6.2+).
    Joined,
    /// A header descriptor of another length.
    HeaderLen(u8),
    /// The data descriptor is device-writable.
    WritableData,
    /// Data in several descriptors.
    Scattered(u8),
}

#[derive(Arbitrary, Debug)]
struct Packet {
    src_cid: Cid,
    dst_cid: Cid,
    src_port: Port,
    dst_port: Port,
    /// Added to the data length for the header's `len` (0 mostly).
    len_delta: i8,
    type_: u8,
    op: u8,
    flags: u8,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
    layout: Layout,
    addr: AddrSpec,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Send(Packet),
    PostRx {
        hdr_len: u8,
        data_len: u16,
        joined: bool,
        addr: AddrSpec,
    },
    PostEvent(u8),
    ProcessTx,
    ProcessRx,
    ProcessEvent,
    TransportReset,
    Reset,
    SetAvailIdx(u8, u16),
    RawDescriptor(u8, u8, u64, u32, u16, u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sizes: [u8; 3],
    ops: Vec<Op>,
}

struct Rig {
    g: Guest,
    dev: Vsock,
    rings: Vec<Ring>,
    sizes: [u16; 3],
}

impl Rig {
    fn activate(&mut self) -> bool {
        self.rings = (0..3).map(|i| Ring::new(&mut self.g, i, self.sizes[i])).collect();
        let queues = self.rings.iter().map(|r| r.queue(false)).collect();
        self.dev
            .activate(ActivateContext {
                mem: self.g.mem.clone(),
                queues,
                interrupt: Arc::new(VirtioInterrupt::new(Arc::new(NoIrq))),
                acked_features: 1 << 32,
            })
            .is_ok()
    }

    /// Runs `f` on the device with the memory and ring checks around it.
    fn run(&mut self, what: &str, f: impl FnOnce(&mut Vsock)) -> [Vec<(u16, u32)>; 3] {
        for r in &self.rings {
            r.before_device(&self.g);
        }
        self.g.before_device();
        f(&mut self.dev);
        self.g.after_device(what);
        let g = &self.g;
        let mut used = self.rings.iter_mut().map(|r| r.after_device(g, what));
        [
            used.next().unwrap_or_default(),
            used.next().unwrap_or_default(),
            used.next().unwrap_or_default(),
        ]
    }

    fn checked(&self, q: usize) -> bool {
        !self.g.tainted() && !self.rings[q].misbehaved() && self.dev.is_active()
    }
}

fn header(p: &Packet) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    let len = (p.data.len() as i64 + i64::from(p.len_delta)).clamp(0, i64::from(u32::MAX)) as u32;
    let cid = |c: &Cid, dflt: u64| if c.0 == 0 { dflt } else { c.0 };
    h[0..8].copy_from_slice(&cid(&p.src_cid, GUEST_CID).to_le_bytes());
    h[8..16].copy_from_slice(&cid(&p.dst_cid, HOST_CID).to_le_bytes());
    h[16..20].copy_from_slice(&p.src_port.0.to_le_bytes());
    h[20..24].copy_from_slice(&p.dst_port.0.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    let type_ = if p.type_ < 240 {
        TYPE_STREAM
    } else {
        u16::from(p.type_)
    };
    h[28..30].copy_from_slice(&type_.to_le_bytes());
    let op = if p.op < 240 {
        u16::from(p.op % 8)
    } else {
        u16::from(p.op)
    };
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[32..36].copy_from_slice(&u32::from(p.flags % 4).to_le_bytes());
    h[36..40].copy_from_slice(&p.buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&p.fwd_cnt.to_le_bytes());
    h
}

fn send(rig: &mut Rig, p: &Packet) {
    let g = &mut rig.g;
    let h = header(p);
    let data = &p.data[..p.data.len().min(8192)];
    let dlen = data.len() as u32;
    let descs = match p.layout {
        Layout::Joined => {
            let at = g.addr(p.addr, (HDR + data.len()) as u64);
            g.write_data(at, &h);
            g.write_data(at.saturating_add(HDR as u64), data);
            vec![Desc {
                addr: at,
                len: HDR as u32 + dlen,
                write: false,
            }]
        }
        Layout::Scattered(n) => {
            let ha = g.alloc(HDR as u64);
            g.write_data(ha, &h);
            let mut descs = vec![Desc {
                addr: ha,
                len: HDR as u32,
                write: false,
            }];
            let pieces = usize::from(n % 4) + 1;
            let step = data.len().div_ceil(pieces).max(1);
            for chunk in data.chunks(step) {
                let at = g.alloc(chunk.len() as u64);
                g.write_data(at, chunk);
                descs.push(Desc {
                    addr: at,
                    len: chunk.len() as u32,
                    write: false,
                });
            }
            descs
        }
        Layout::Split | Layout::HeaderLen(_) | Layout::WritableData => {
            let hlen = match p.layout {
                Layout::HeaderLen(n) => u32::from(n),
                _ => HDR as u32,
            };
            let ha = g.alloc(u64::from(hlen).max(HDR as u64));
            g.write_data(ha, &h);
            let mut descs = vec![Desc {
                addr: ha,
                len: hlen,
                write: false,
            }];
            if !data.is_empty() {
                let at = g.addr(p.addr, u64::from(dlen));
                g.write_data(at, data);
                descs.push(Desc {
                    addr: at,
                    len: dlen,
                    write: matches!(p.layout, Layout::WritableData),
                });
            }
            descs
        }
    };
    rig.rings[TXQ].post(&mut rig.g, &descs, false);
}

fn drain_listener() {
    HOST.with(|h| {
        if let Some(l) = &h.listener {
            while l.accept().is_ok() {}
        }
    });
}

/// The `vsock_packets` target.
pub fn vsock_packets(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let uds = HOST.with(|h| h.uds.clone());
    let Ok(dev) = Vsock::new(GUEST_CID, &uds, Default::default()) else {
        return;
    };
    let mut rig = Rig {
        g: Guest::new(),
        dev,
        rings: Vec::new(),
        sizes: input.sizes.map(queue_size),
    };
    if !rig.activate() {
        return;
    }
    for op in input.ops.iter().take(48) {
        match op {
            Op::Send(p) => send(&mut rig, p),
            Op::PostRx {
                hdr_len,
                data_len,
                joined,
                addr,
            } => {
                let data_len = u32::from(*data_len % 4097);
                let hdr_len = if *hdr_len < 200 {
                    HDR as u32
                } else {
                    u32::from(*hdr_len - 200)
                };
                let descs = if *joined {
                    let len = hdr_len + data_len;
                    vec![Desc {
                        addr: rig.g.addr(*addr, u64::from(len)),
                        len,
                        write: true,
                    }]
                } else {
                    vec![
                        Desc {
                            addr: rig.g.alloc(u64::from(hdr_len)),
                            len: hdr_len,
                            write: true,
                        },
                        Desc {
                            addr: rig.g.addr(*addr, u64::from(data_len)),
                            len: data_len,
                            write: true,
                        },
                    ]
                };
                rig.rings[RXQ].post(&mut rig.g, &descs, false);
            }
            Op::PostEvent(len) => {
                let len = u32::from(*len % 16);
                let d = Desc {
                    addr: rig.g.alloc(u64::from(len)),
                    len,
                    write: len % 8 != 7,
                };
                rig.rings[EVQ].post(&mut rig.g, &[d], false);
            }
            Op::ProcessTx => {
                let used = rig.run("vsock tx", Vsock::process_tx);
                if rig.checked(TXQ) {
                    assert_eq!(rig.rings[TXQ].outstanding(), 0, "a tx chain was not used");
                    assert!(used[TXQ].iter().all(|u| u.1 == 0), "tx used length is not 0");
                }
            }
            Op::ProcessRx => {
                let used = rig.run("vsock rx", Vsock::process_rx);
                if rig.checked(RXQ) {
                    for &(_, len) in &used[RXQ] {
                        assert!(len == 0 || len as usize >= HDR, "rx used length {len} < header");
                    }
                }
            }
            Op::ProcessEvent => {
                rig.run("vsock event", Vsock::process_event_queue);
            }
            Op::TransportReset => {
                rig.run("vsock event", Vsock::send_transport_reset);
            }
            Op::Reset => {
                rig.dev.reset();
                if !rig.activate() {
                    break;
                }
            }
            Op::SetAvailIdx(q, idx) => rig.rings[usize::from(*q % 3)].set_avail_idx(*idx),
            Op::RawDescriptor(q, index, addr, len, flags, next) => {
                let d = Descriptor::new(*addr, *len, *flags, *next);
                rig.rings[usize::from(*q % 3)].raw_descriptor(&mut rig.g, u16::from(*index), d);
            }
        }
    }
    drop(rig);
    drain_listener();
}
