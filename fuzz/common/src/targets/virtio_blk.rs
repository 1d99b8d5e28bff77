//! virtio-blk requests built from the input, run through
//! `hearth_devices::virtio::block::handler::process_queue` (exactly what
//! the device runs on a notify) with a `RequestHandler` over a
//! `MemoryDisk`.
//!
//! Invariants: no panic; the device writes only into device-writable
//! buffers and the used ring; the used-ring invariants of [`Ring`]; every
//! available chain is answered by a pass that was neither throttled nor
//! failed; a pass that used chains without EVENT_IDX asks to notify.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::guest_log::GuestLog;
use hearth_devices::virtio::block::handler::{process_queue, RequestHandler};
use hearth_devices::virtio::block::request::Limits;
use hearth_devices::virtio::block::{device, BlockMetrics, MemoryDisk};
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;

use crate::guest::{AddrSpec, Guest};
use crate::limiter::{FakeClock, LimitSpec};
use crate::ring::{queue_size, Desc, Ring, MAX_INDIRECT};

/// A request type: one the device knows (decoded as a derived enum of
/// these six plus `Other` would be), or rarely any code.
#[derive(Debug)]
struct Kind(u32);

const KNOWN_TYPES: [u32; 6] = [
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_WRITE_ZEROES,
];

impl<'a> Arbitrary<'a> for Kind {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let choices = KNOWN_TYPES.len() as u64 + 1;
        let pick = (u64::from(u32::arbitrary(u)?) * choices) >> 32;
        match KNOWN_TYPES.get(pick as usize) {
            Some(&code) => Ok(Self(code)),
            None => Ok(Self(u32::arbitrary(u)?)),
        }
    }
}

impl Kind {
    fn code(&self) -> u32 {
        self.0
    }

    /// Whether the device writes the data buffers.
    fn device_writes(&self) -> bool {
        matches!(self.0, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID)
    }

    /// Whether the data is a list of sector ranges.
    fn takes_ranges(&self) -> bool {
        matches!(self.0, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES)
    }
}

/// A sector: mostly near the disk, sometimes anything.
#[derive(Debug)]
struct Sector(u64);

impl<'a> Arbitrary<'a> for Sector {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(if u.ratio(7, 8)? {
            u64::from(u8::arbitrary(u)? % 72)
        } else {
            u.arbitrary()?
        }))
    }
}

/// A data length: mostly whole sectors, sometimes any.
#[derive(Debug)]
struct SegLen(u32);

impl<'a> Arbitrary<'a> for SegLen {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(match u8::arbitrary(u)? {
            0..=199 => 512 * (1 + u32::from(u8::arbitrary(u)? % 8)),
            200..=239 => u32::from(u16::arbitrary(u)? % 4096),
            _ => u.arbitrary()?,
        }))
    }
}

#[derive(Arbitrary, Debug)]
struct Seg {
    addr: AddrSpec,
    len: SegLen,
    /// Rarely, the wrong direction.
    flip: Rare,
}

/// True one time in 16.
#[derive(Debug)]
struct Rare(bool);

impl<'a> Arbitrary<'a> for Rare {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Self(u8::arbitrary(u)? % 16 == 0))
    }
}

#[derive(Arbitrary, Debug)]
struct RangeSpec {
    sector: Sector,
    sectors: u16,
    unmap: bool,
    bad_flags: Rare,
}

#[derive(Arbitrary, Debug)]
enum Header {
    Normal,
    Len(u8),
    Writable,
    At(AddrSpec),
}

#[derive(Arbitrary, Debug)]
enum Status {
    Normal,
    ReadOnly,
    Len(u32),
    At(AddrSpec),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct Request {
    kind: Kind,
    sector: Sector,
    header: Header,
    data: Vec<Seg>,
    ranges: Vec<RangeSpec>,
    status: Status,
    indirect: Rare,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Post(Request),
    Post2(Request, Request),
    Process,
    Advance(u16),
    UsedEvent(u16),
    WriteData(u16, Vec<u8>),
    SetAvailIdx(u16),
    RawDescriptor(u8, u64, u32, u16, u16),
}

#[derive(Arbitrary, Debug)]
struct LimitsSpec {
    max_segments: u8,
    max_segment_len: u8,
    max_discard_segments: u8,
    max_discard_sectors: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_size: u8,
    event_idx: bool,
    disk_sectors: u8,
    read_only: bool,
    id: u8,
    limits: LimitsSpec,
    limit: LimitSpec,
    ops: Vec<Op>,
}

/// Builds the chain of `req` in guest memory and posts it.
fn post(g: &mut Guest, ring: &mut Ring, req: &Request) {
    let mut descs = Vec::new();
    let (hdr_addr, hdr_len, hdr_write) = match &req.header {
        Header::Normal => (g.alloc(16), 16, false),
        Header::Len(n) => (g.alloc(u64::from(*n)), u32::from(*n), false),
        Header::Writable => (g.alloc(16), 16, true),
        Header::At(a) => (g.addr(*a, 16), 16, false),
    };
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&req.kind.code().to_le_bytes());
    hdr[8..].copy_from_slice(&req.sector.0.to_le_bytes());
    g.write_data(hdr_addr, &hdr[..(hdr_len as usize).min(16)]);
    descs.push(Desc {
        addr: hdr_addr,
        len: hdr_len,
        write: hdr_write,
    });
    let writes = req.kind.device_writes();
    if req.kind.takes_ranges() && !req.ranges.is_empty() {
        let n = req.ranges.len().min(20);
        let at = g.alloc(16 * n as u64);
        let mut bytes = Vec::with_capacity(16 * n);
        for r in req.ranges.iter().take(n) {
            let flags: u32 = if r.bad_flags.0 { 0x80 } else { u32::from(r.unmap) };
            bytes.extend_from_slice(&r.sector.0.to_le_bytes());
            bytes.extend_from_slice(&u32::from(r.sectors).to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
        }
        g.write_data(at, &bytes);
        descs.push(Desc {
            addr: at,
            len: bytes.len() as u32,
            write: false,
        });
    }
    for s in req.data.iter().take(6) {
        descs.push(Desc {
            addr: g.addr(s.addr, u64::from(s.len.0)),
            len: s.len.0,
            write: writes != s.flip.0,
        });
    }
    match &req.status {
        Status::Normal => descs.push(Desc {
            addr: g.alloc(1),
            len: 1,
            write: true,
        }),
        Status::ReadOnly => descs.push(Desc {
            addr: g.alloc(1),
            len: 1,
            write: false,
        }),
        Status::Len(n) => descs.push(Desc {
            addr: g.alloc(u64::from(*n).min(64)),
            len: *n,
            write: true,
        }),
        Status::At(a) => descs.push(Desc {
            addr: g.addr(*a, 1),
            len: 1,
            write: true,
        }),
        Status::Missing => {}
    }
    let indirect = req.indirect.0 && descs.len() <= MAX_INDIRECT;
    ring.post(g, &descs, indirect);
}

/// The `virtio_blk` target.
pub fn virtio_blk(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut g = Guest::new();
    let mut ring = Ring::new(&mut g, 0, queue_size(input.queue_size));
    let mut queue = ring.queue(input.event_idx);
    let l = &input.limits;
    let limits = Limits {
        capacity_sectors: u64::from(input.disk_sectors % 65),
        read_only: input.read_only,
        max_segments: match l.max_segments % 9 {
            0 => device::SEG_MAX as usize,
            n => usize::from(n),
        },
        max_segment_len: match l.max_segment_len % 3 {
            0 => device::SIZE_MAX,
            1 => 512,
            _ => 4096,
        },
        max_discard_segments: match l.max_discard_segments % 5 {
            0 => device::MAX_DISCARD_SEG,
            n => u32::from(n),
        },
        max_discard_sectors: match l.max_discard_sectors {
            0 => device::MAX_DISCARD_SECTORS,
            n => u32::from(n),
        },
    };
    let disk = MemoryDisk::new(limits.capacity_sectors);
    let id = "fuzz-disk-serial-number-0123"[..usize::from(input.id % 29)].to_string();
    let mut handler = RequestHandler::new(
        Box::new(disk),
        limits,
        &id,
        Arc::new(BlockMetrics::default()),
        Arc::new(GuestLog::new("fuzz")),
    );
    let clock = FakeClock::new();
    let mut limiter = input.limit.limiter(&clock);
    for op in input.ops.iter().take(64) {
        match op {
            Op::Post(r) => post(&mut g, &mut ring, r),
            Op::Post2(a, b) => {
                post(&mut g, &mut ring, a);
                post(&mut g, &mut ring, b);
            }
            Op::Process => {
                ring.before_device(&g);
                g.before_device();
                let result = process_queue(&mut queue, &g.mem, &mut handler, &mut limiter);
                g.after_device("virtio_blk");
                let used = ring.after_device(&g, "virtio_blk");
                let checked = !ring.misbehaved() && !g.tainted();
                match result {
                    Ok(outcome) => {
                        if checked && outcome.throttled.is_none() {
                            assert_eq!(ring.outstanding(), 0, "an available request was not answered");
                        }
                        if checked && !input.event_idx {
                            assert_eq!(outcome.notify, !used.is_empty(), "notify without EVENT_IDX");
                        }
                    }
                    // The device stops here and needs a reset.
                    Err(_) => return,
                }
            }
            Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(*ms))),
            Op::UsedEvent(v) => ring.set_used_event(&g, *v),
            Op::WriteData(off, bytes) => {
                let at = g.addr(AddrSpec::Data(*off), bytes.len() as u64);
                g.write_data(at, bytes);
            }
            Op::SetAvailIdx(i) => ring.set_avail_idx(*i),
            Op::RawDescriptor(index, addr, len, flags, next) => ring.raw_descriptor(
                &mut g,
                u16::from(*index),
                Descriptor::new(*addr, *len, *flags, *next),
            ),
        }
    }
}
