//! Guest frames on the virtio-net transmit queue, run through
//! `TxHandler::process` (devices/src/virtio/net/handler.rs) into a
//! `MemoryNet` backend.
//!
//! Invariants: no panic; the device writes only into device-writable
//! buffers and the used ring (tx never writes guest buffers, so in
//! practice only the used ring); the used-ring invariants of [`Ring`],
//! every used length is 0; every chain is used by a pass that was not
//! throttled; the backend receives at most one frame per used chain.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::guest_log::GuestLog;
use hearth_devices::virtio::net::handler::TxHandler;
use hearth_devices::virtio::net::{MemoryNet, NetMetrics};
use virtio_queue::desc::split::Descriptor;

use crate::guest::{AddrSpec, Guest};
use crate::limiter::{FakeClock, LimitSpec};
use crate::ring::{chain, queue_size, Desc, Ring};

/// A buffer length: mostly frame-sized pieces, sometimes anything.
#[derive(Debug)]
struct Len(u32);

impl<'a> Arbitrary<'a> for Len {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? {
            0..=219 => u32::from(u16::arbitrary(u)? % 1600),
            220..=247 => u32::from(u16::arbitrary(u)?) + 1,
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Arbitrary, Debug)]
struct Buf {
    addr: AddrSpec,
    len: Len,
    /// Rarely device-writable (refused on tx).
    write: u8,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Frame {
    bufs: Vec<Buf>,
    indirect: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Send(Frame),
    Process,
    Advance(u16),
    UsedEvent(u16),
    BackendError(Option<u8>),
    SetAvailIdx(u16),
    RawDescriptor(u8, u64, u32, u16, u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_size: u8,
    event_idx: bool,
    limit: LimitSpec,
    ops: Vec<Op>,
}

fn post(g: &mut Guest, ring: &mut Ring, f: &Frame) {
    let (descs, indirect) = chain(&f.bufs, f.indirect, |b| {
        let addr = g.addr(b.addr, u64::from(b.len.0));
        if b.len.0 <= 4096 {
            g.write_data(addr, &vec![b.fill; b.len.0 as usize]);
        }
        Desc {
            addr,
            len: b.len.0,
            write: b.write == 0xff,
        }
    });
    ring.post(g, &descs, indirect);
}

/// The `virtio_net_tx` target.
pub fn virtio_net_tx(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Ok(backend) = MemoryNet::new() else { return };
    // Frames are counted, not kept (collecting them costs more than the
    // device does).
    backend.set_capture_tx(false);
    let mut dev_backend = backend.clone();
    let mut g = Guest::new();
    let mut ring = Ring::new(&mut g, 1, queue_size(input.queue_size));
    let mut queue = ring.queue(input.event_idx);
    let mut handler = TxHandler::new(Arc::new(NetMetrics::default()), Arc::new(GuestLog::new("fuzz")));
    let clock = FakeClock::new();
    let mut limiter = input.limit.limiter(&clock);
    for op in input.ops.iter().take(64) {
        match op {
            Op::Send(f) => post(&mut g, &mut ring, f),
            Op::Process => {
                ring.before_device(&g);
                g.before_device();
                let sent_before = backend.tx_frames();
                let result = handler.process(&mut queue, &g.mem, &mut dev_backend, &mut limiter);
                g.after_device("virtio_net_tx");
                let used = ring.after_device(&g, "virtio_net_tx");
                let checked = !ring.misbehaved() && !g.tainted();
                let sent = backend.tx_frames() - sent_before;
                assert!(
                    sent <= used.len() as u64 || !checked,
                    "{sent} frames sent for {} chains used",
                    used.len()
                );
                if checked {
                    assert!(used.iter().all(|&(_, len)| len == 0), "tx used length is not 0");
                }
                match result {
                    Ok(outcome) => {
                        if checked && outcome.throttled.is_none() {
                            assert_eq!(ring.outstanding(), 0, "a tx chain was not used");
                        }
                        if checked && !input.event_idx {
                            assert_eq!(outcome.notify, !used.is_empty(), "notify without EVENT_IDX");
                        }
                    }
                    Err(_) => return,
                }
            }
            Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(*ms))),
            Op::UsedEvent(v) => ring.set_used_event(&g, *v),
            Op::BackendError(e) => backend.set_tx_error(e.map(|k| match k % 3 {
                0 => std::io::ErrorKind::WouldBlock,
                1 => std::io::ErrorKind::Interrupted,
                _ => std::io::ErrorKind::BrokenPipe,
            })),
            Op::SetAvailIdx(i) => ring.set_avail_idx(*i),
            Op::RawDescriptor(index, addr, len, flags, next) => ring.raw_descriptor(
                &mut g,
                u16::from(*index),
                Descriptor::new(*addr, *len, *flags, *next),
            ),
        }
    }
}
