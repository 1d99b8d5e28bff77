//! Frames of any length pushed into a `MemoryNet` backend and delivered
//! by `RxHandler::process` (devices/src/virtio/net/handler.rs) into
//! receive chains the input posts, with and without mergeable buffers.
//!
//! Invariants: no panic; the device writes only into device-writable
//! buffers and the used ring; the used-ring invariants of [`Ring`]
//! (chains may stay held by the device between passes); without
//! mergeable buffers, a chain used with a frame carries num_buffers = 1;
//! the backlog stays within its bounds.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::guest_log::GuestLog;
use hearth_devices::virtio::net::handler::{RxHandler, RX_BACKLOG_FRAMES};
use hearth_devices::virtio::net::rxtx::{MAX_PACKET_LEN, VNET_HDR_LEN};
use hearth_devices::virtio::net::{MemoryNet, NetMetrics};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{AddrSpec, Guest};
use crate::limiter::{FakeClock, LimitSpec};
use crate::ring::{chain, queue_size, Desc, Ring};

/// A length: mostly small, sometimes up to (and past) the largest packet.
#[derive(Debug)]
struct Len(u32);

impl<'a> Arbitrary<'a> for Len {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? {
            0..=229 => u32::from(u16::arbitrary(u)? % 2048),
            230..=250 => u32::from(u16::arbitrary(u)?) % (MAX_PACKET_LEN as u32 + 64),
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Arbitrary, Debug)]
struct Buf {
    addr: AddrSpec,
    len: Len,
    /// Rarely device-readable (refused on rx).
    read_only: u8,
}

#[derive(Arbitrary, Debug)]
struct Chain {
    bufs: Vec<Buf>,
    indirect: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Post(Chain),
    PostMany(u8, u16),
    Push(Len, u8),
    Process,
    Advance(u16),
    UsedEvent(u16),
    Reset(bool),
    SetAvailIdx(u16),
    RawDescriptor(u8, u64, u32, u16, u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_size: u8,
    event_idx: bool,
    mergeable: bool,
    limit: LimitSpec,
    ops: Vec<Op>,
}

fn post(g: &mut Guest, rx: &mut Rx, c: &Chain) {
    let (descs, indirect) = chain(&c.bufs, c.indirect, |b| Desc {
        addr: g.addr(b.addr, u64::from(b.len.0)),
        len: b.len.0,
        write: b.read_only != 0xff,
    });
    post_descs(g, rx, &descs, indirect);
}

/// Posts a chain and records where its header will land.
fn post_descs(g: &mut Guest, rx: &mut Rx, descs: &[Desc], indirect: bool) {
    if let Some(head) = rx.ring.post(g, descs, indirect) {
        rx.first.retain(|f| f.0 != head);
        let disjoint = descs.iter().enumerate().all(|(i, a)| {
            descs[i + 1..].iter().all(|b| {
                let (a0, a1) = (a.addr, a.addr.saturating_add(u64::from(a.len)));
                let (b0, b1) = (b.addr, b.addr.saturating_add(u64::from(b.len)));
                a1 <= b0 || b1 <= a0
            })
        });
        if let Some(first) = descs.iter().find(|d| d.len > 0) {
            if disjoint {
                rx.first.push((head, first.addr, first.len));
            }
        }
    }
}

struct Rx {
    ring: Ring,
    queue: virtio_queue::Queue,
    /// First buffer of each posted head whose buffers do not overlap, to
    /// read num_buffers back.
    first: Vec<(u16, u64, u32)>,
}

/// The `virtio_net_rx` target.
pub fn virtio_net_rx(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Ok(backend) = MemoryNet::new() else { return };
    let mut dev_backend = backend.clone();
    let mut g = Guest::new();
    let ring = Ring::new(&mut g, 0, queue_size(input.queue_size));
    let queue = ring.queue(input.event_idx);
    let mut rx = Rx {
        ring,
        queue,
        first: Vec::new(),
    };
    let mut mergeable = input.mergeable;
    let mut handler = RxHandler::new(Arc::new(NetMetrics::default()), Arc::new(GuestLog::new("fuzz")));
    handler.activate(mergeable);
    let clock = FakeClock::new();
    let mut limiter = input.limit.limiter(&clock);
    let mut pushed = 0u32;
    for op in input.ops.iter().take(64) {
        match op {
            Op::Post(c) => post(&mut g, &mut rx, c),
            Op::PostMany(n, len) => {
                for _ in 0..(n % 16) {
                    let len = u32::from(*len % 4096);
                    let addr = g.alloc(u64::from(len));
                    let d = Desc {
                        addr,
                        len,
                        write: true,
                    };
                    post_descs(&mut g, &mut rx, &[d], false);
                }
            }
            Op::Push(len, fill) => {
                // Bounded work per input: at most 1 MiB of frames.
                if pushed < 1 << 20 {
                    pushed += len.0.min(1 << 17);
                    backend.push_rx(vec![*fill; (len.0 as usize).min(MAX_PACKET_LEN + 64)]);
                }
            }
            Op::Process => {
                rx.ring.before_device(&g);
                g.before_device();
                let result = handler.process(&mut rx.queue, &g.mem, &mut dev_backend, &mut limiter);
                g.after_device("virtio_net_rx");
                let used = rx.ring.after_device(&g, "virtio_net_rx");
                let checked = !rx.ring.misbehaved() && !g.tainted();
                assert!(
                    handler.backlog().len() <= RX_BACKLOG_FRAMES,
                    "rx backlog overflow"
                );
                // Only a lone chain in a pass: other chains' buffers may
                // overlap it and overwrite its header.
                if checked && !mergeable && used.len() == 1 {
                    for &(head, len) in &used {
                        check_num_buffers(&rx, &g, head, len);
                    }
                }
                if checked {
                    if let Ok(outcome) = &result {
                        if !input.event_idx {
                            assert_eq!(outcome.notify, !used.is_empty(), "notify without EVENT_IDX");
                        }
                    }
                }
                if result.is_err() {
                    return;
                }
            }
            Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(*ms))),
            Op::UsedEvent(v) => rx.ring.set_used_event(&g, *v),
            Op::Reset(m) => {
                // A device reset: held chains and the backlog are dropped,
                // and the driver sets the queue up again.
                handler.reset();
                mergeable = *m;
                handler.activate(mergeable);
                rx.ring = Ring::new(&mut g, 0, rx.ring.size());
                rx.queue = rx.ring.queue(input.event_idx);
                rx.first.clear();
            }
            Op::SetAvailIdx(i) => rx.ring.set_avail_idx(*i),
            Op::RawDescriptor(index, addr, len, flags, next) => rx.ring.raw_descriptor(
                &mut g,
                u16::from(*index),
                Descriptor::new(*addr, *len, *flags, *next),
            ),
        }
    }
}

/// Without mergeable buffers a frame fills one chain, whose header says
/// num_buffers = 1. The header is in the chain's first buffers; when the
/// first buffer holds all of it, read it back.
fn check_num_buffers(rx: &Rx, g: &Guest, head: u16, len: u32) {
    if (len as usize) < VNET_HDR_LEN {
        return;
    }
    if let Some(&(_, addr, buf_len)) = rx.first.iter().find(|f| f.0 == head) {
        if buf_len as usize >= VNET_HDR_LEN {
            let n: u16 = g.mem.read_obj(GuestAddress(addr + 10)).unwrap_or(1);
            assert_eq!(n, 1, "num_buffers without mergeable buffers");
        }
    }
}
