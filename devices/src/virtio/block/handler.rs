//! Executing requests against the backend, and the queue loop.
//!
//! A request runs in steps of at most [`MAX_CHUNK`] bytes moved (or
//! [`ZERO_STEP`] bytes zeroed or discarded), and a turn of the queue loop
//! stops after [`TURN_BYTES`] worth of steps. A request larger than that
//! (up to 128 MiB of data, or 16 ranges of 2 GiB to zero) is finished in
//! later turns, so no guest request holds the event loop, the device's
//! lock or a pause for longer than one turn. A snapshot taken meanwhile
//! saves the queue as if the request had not been taken yet: the restored
//! device runs it again from the start (every request type is idempotent).

use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::backend::DiskBackend;
use super::metrics::BlockMetrics;
use super::request::{self, Limits, Request, RequestType, Segment, ID_BYTES};
use crate::guest_log::GuestLog;
use crate::rate_limiter::RateLimiter;
use crate::virtio::{drain, Handled, QueueError, QueueOutcome};
use crate::GuestMemoryMmap;

/// Largest piece moved between the disk and guest memory at once; this
/// bounds the device's buffer whatever the guest asks for.
pub const MAX_CHUNK: usize = 1 << 20;
/// Largest piece of a discard or write-zeroes range handed to the backend
/// at once.
pub const ZERO_STEP: u64 = 8 << 20;
/// What one turn of the queue loop may do, in bytes moved or zeroed.
pub const TURN_BYTES: u64 = 8 << 20;
/// What a flush counts for in a turn's budget (it may wait for the disk).
pub const FLUSH_COST: u64 = 1 << 20;

/// Walks guest segments while copying a byte stream in or out of them.
struct SegmentCursor<'a> {
    segs: &'a [Segment],
    index: usize,
    offset: u32,
}

impl<'a> SegmentCursor<'a> {
    /// A cursor `skip` bytes into `segs`.
    fn at(segs: &'a [Segment], mut skip: u64) -> Self {
        let mut index = 0;
        while let Some(seg) = segs.get(index) {
            if skip < u64::from(seg.len) {
                break;
            }
            skip -= u64::from(seg.len);
            index += 1;
        }
        Self {
            segs,
            index,
            offset: skip as u32,
        }
    }

    /// Calls `f(guest address, range of buf)` for consecutive pieces until
    /// `len` bytes are covered.
    fn walk(&mut self, len: usize, mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool) -> bool {
        let mut done = 0;
        while done < len {
            let Some(seg) = self.segs.get(self.index) else {
                return false;
            };
            let left_in_seg = (seg.len - self.offset) as usize;
            let n = left_in_seg.min(len - done);
            let addr = GuestAddress(seg.addr.0 + u64::from(self.offset));
            if !f(addr, done..done + n) {
                return false;
            }
            done += n;
            self.offset += n as u32;
            if self.offset == seg.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        true
    }
}

/// A request taken from the ring and not finished yet.
#[derive(Debug)]
struct InFlight {
    head: u16,
    req: Request,
    /// Data requests: bytes done. Range requests: bytes done of
    /// `ranges[range]`.
    done: u64,
    range: usize,
}

/// How far a request got in this turn.
enum Step {
    /// Finished; the used length.
    Done(u32),
    /// The turn's budget ran out.
    Pending,
}

/// Executes requests for one device.
pub struct RequestHandler {
    backend: Box<dyn DiskBackend>,
    limits: Limits,
    id: [u8; ID_BYTES as usize],
    buf: Vec<u8>,
    metrics: Arc<BlockMetrics>,
    log: Arc<GuestLog>,
    in_flight: Option<InFlight>,
    budget: u64,
}

impl std::fmt::Debug for RequestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHandler")
            .field("limits", &self.limits)
            .field("in_flight", &self.in_flight.as_ref().map(|r| r.head))
            .finish()
    }
}

impl RequestHandler {
    /// A handler over `backend`; `id` is the GET_ID string (truncated to 20 bytes).
    pub fn new(
        backend: Box<dyn DiskBackend>,
        limits: Limits,
        id: &str,
        metrics: Arc<BlockMetrics>,
        log: Arc<GuestLog>,
    ) -> Self {
        let mut id_bytes = [0u8; ID_BYTES as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            backend,
            limits,
            id: id_bytes,
            buf: Vec::new(),
            metrics,
            log,
            in_flight: None,
            budget: TURN_BYTES,
        }
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The backend.
    pub fn backend_mut(&mut self) -> &mut dyn DiskBackend {
        self.backend.as_mut()
    }

    /// Whether a request was taken from the ring and is not finished.
    pub fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Forgets an unfinished request (device reset: the driver gave up on
    /// it).
    pub fn abandon(&mut self) {
        self.in_flight = None;
    }

    /// Parses and starts the chain `descs` with head `head`, within this
    /// turn's budget.
    fn handle(
        &mut self,
        head: u16,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
        limiter: &mut RateLimiter,
    ) -> Handled {
        if self.budget == 0 {
            return Handled::Yield;
        }
        let req = match request::parse(descs, mem, &self.limits) {
            Ok(r) => r,
            Err(e) => {
                BlockMetrics::add(&self.metrics.invalid_requests, 1);
                self.log.warn(format_args!("refused a request: {e}"));
                return Handled::Done(match (e.status(), request::status_address(descs, mem)) {
                    (Some(status), Some(addr)) if mem.write_obj(status, addr).is_ok() => 1,
                    _ => 0,
                });
            }
        };
        let bytes = match req.kind {
            RequestType::In | RequestType::Out => req.data_len,
            _ => 0,
        };
        if !limiter.consume(bytes) {
            return Handled::Throttled(bytes);
        }
        self.in_flight = Some(InFlight {
            head,
            req,
            done: 0,
            range: 0,
        });
        match self.run(mem) {
            Step::Done(len) => Handled::Done(len),
            Step::Pending => Handled::Started,
        }
    }

    /// Runs the request in flight until it finishes or the budget runs out.
    fn run(&mut self, mem: &GuestMemoryMmap) -> Step {
        loop {
            let Some(f) = self.in_flight.as_ref() else {
                return Step::Done(0);
            };
            if self.budget == 0 {
                return Step::Pending;
            }
            let kind = f.req.kind;
            match self.step(mem) {
                Ok(false) => continue,
                Ok(true) => return Step::Done(self.complete(mem, VIRTIO_BLK_S_OK as u8)),
                Err(e) => {
                    BlockMetrics::add(&self.metrics.io_errors, 1);
                    if let Some(f) = &self.in_flight {
                        self.log
                            .warn(format_args!("{kind:?} at offset {} failed: {e}", f.req.offset));
                    }
                    return Step::Done(self.complete(mem, VIRTIO_BLK_S_IOERR as u8));
                }
            }
        }
    }

    /// Writes the status byte, counts the request, and returns its used
    /// length.
    fn complete(&mut self, mem: &GuestMemoryMmap, status: u8) -> u32 {
        let Some(f) = self.in_flight.take() else { return 0 };
        let req = &f.req;
        let ok = status == VIRTIO_BLK_S_OK as u8;
        let data_written = match req.kind {
            RequestType::In if ok => {
                BlockMetrics::add(&self.metrics.reads, 1);
                BlockMetrics::add(&self.metrics.read_bytes, req.data_len);
                req.data_len as u32
            }
            RequestType::Out if ok => {
                BlockMetrics::add(&self.metrics.writes, 1);
                BlockMetrics::add(&self.metrics.write_bytes, req.data_len);
                0
            }
            RequestType::Flush if ok => {
                BlockMetrics::add(&self.metrics.flushes, 1);
                0
            }
            RequestType::GetId if ok => req.data_len.min(u64::from(ID_BYTES)) as u32,
            RequestType::Discard | RequestType::WriteZeroes if ok => {
                BlockMetrics::add(&self.metrics.discards, 1);
                0
            }
            _ => 0,
        };
        match mem.write_obj(status, req.status) {
            Ok(()) => data_written + 1,
            Err(_) => 0,
        }
    }

    /// Does one step of the request in flight; true when it is complete.
    fn step(&mut self, mem: &GuestMemoryMmap) -> std::io::Result<bool> {
        let guest_err = || std::io::Error::other("guest memory access failed");
        let Some(f) = self.in_flight.as_mut() else {
            return Ok(true);
        };
        let req = &f.req;
        match req.kind {
            RequestType::In | RequestType::Out => {
                if f.done >= req.data_len {
                    return Ok(true);
                }
                let n = (req.data_len - f.done).min(MAX_CHUNK as u64) as usize;
                let mut cursor = SegmentCursor::at(&req.data, f.done);
                self.buf.resize(n, 0);
                let at = req.offset + f.done;
                if req.kind == RequestType::In {
                    self.backend.read_at(&mut self.buf[..n], at)?;
                    let buf = &self.buf;
                    if !cursor.walk(n, |addr, r| mem.write_slice(&buf[r], addr).is_ok()) {
                        return Err(guest_err());
                    }
                } else {
                    let buf = &mut self.buf;
                    if !cursor.walk(n, |addr, r| mem.read_slice(&mut buf[r], addr).is_ok()) {
                        return Err(guest_err());
                    }
                    self.backend.write_at(&self.buf[..n], at)?;
                }
                f.done += n as u64;
                self.budget = self.budget.saturating_sub(n as u64);
                Ok(f.done >= req.data_len)
            }
            RequestType::Flush => {
                self.budget = self.budget.saturating_sub(FLUSH_COST);
                self.backend.flush()?;
                Ok(true)
            }
            RequestType::GetId => {
                let n = req.data_len.min(u64::from(ID_BYTES)) as usize;
                let id = self.id;
                let mut cursor = SegmentCursor::at(&req.data, 0);
                if !cursor.walk(n, |addr, r| mem.write_slice(&id[r], addr).is_ok()) {
                    return Err(guest_err());
                }
                Ok(true)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                let Some(r) = req.ranges.get(f.range).copied() else {
                    return Ok(true);
                };
                let n = (r.len - f.done.min(r.len)).min(ZERO_STEP);
                if n > 0 {
                    if req.kind == RequestType::Discard {
                        self.backend.discard(r.offset + f.done, n)?;
                    } else {
                        self.backend.write_zeroes(r.offset + f.done, n, r.unmap)?;
                    }
                }
                f.done += n;
                self.budget = self.budget.saturating_sub(n.max(1));
                if f.done >= r.len {
                    f.range += 1;
                    f.done = 0;
                }
                Ok(f.range >= req.ranges.len())
            }
        }
    }
}

/// One turn over the request queue: first the request left in flight by
/// the last turn, then new chains (see [`drain`]), until the queue is
/// empty, the rate limiter holds, or the turn's budget is spent.
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler,
    limiter: &mut RateLimiter,
) -> Result<QueueOutcome, QueueError> {
    handler.budget = TURN_BYTES;
    let mut used_any = false;
    if let Some(head) = handler.in_flight.as_ref().map(|f| f.head) {
        match handler.run(mem) {
            Step::Done(len) => {
                queue.add_used(mem, head, len)?;
                used_any = true;
            }
            Step::Pending => {
                return Ok(QueueOutcome {
                    notify: false,
                    throttled: None,
                    more: true,
                })
            }
        }
    }
    // Bounds the descriptors read per chain, whatever an indirect table says.
    let max_descs = handler.limits().max_segments + 3;
    let log = handler.log.clone();
    let mut outcome = drain(queue, mem, limiter, max_descs, &log, |head, descs, limiter| {
        handler.handle(head, descs, mem, limiter)
    })?;
    outcome.notify = outcome.notify || (used_any && queue.needs_notification(mem)?);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::backend::MemoryDisk;
    use crate::virtio::block::request::SECTOR_SIZE;
    use virtio_bindings::virtio_blk::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::ByteValued;

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Hdr {
        kind: u32,
        reserved: u32,
        sector: u64,
    }
    // SAFETY: plain integers without padding.
    unsafe impl ByteValued for Hdr {}

    struct Rig {
        mem: GuestMemoryMmap,
    }

    fn limits(sectors: u64) -> Limits {
        Limits {
            capacity_sectors: sectors,
            read_only: false,
            max_segments: 8,
            max_segment_len: 1 << 20,
            max_discard_segments: 4,
            max_discard_sectors: 1 << 16,
        }
    }

    impl Rig {
        fn new() -> Self {
            Self {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
            }
        }

        /// Runs `chains` (each a list of (addr, len, write)) through a fresh
        /// queue; returns the used ring entries (id, len).
        fn run(&self, handler: &mut RequestHandler, chains: &[Vec<(u64, u32, bool)>]) -> Vec<(u32, u32)> {
            let mq = MockSplitQueue::new(&self.mem, 16);
            let mut raw = Vec::new();
            for chain in chains {
                let base = raw.len() as u16;
                for (i, &(addr, len, write)) in chain.iter().enumerate() {
                    let last = i + 1 == chain.len();
                    let flags = if write { WRITE } else { 0 } | if last { 0 } else { NEXT };
                    raw.push(RawDescriptor::from(Descriptor::new(
                        addr,
                        len,
                        flags,
                        base + i as u16 + 1,
                    )));
                }
            }
            mq.add_desc_chains(&raw, 0).unwrap();
            let mut q: Queue = mq.create_queue().unwrap();
            let mut notified = false;
            loop {
                let outcome = process_queue(&mut q, &self.mem, handler, &mut RateLimiter::default()).unwrap();
                notified |= outcome.notify;
                if !outcome.more {
                    break;
                }
            }
            assert!(notified || chains.is_empty());
            let n = mq.used().idx().load();
            (0..n)
                .map(|i| {
                    let e = mq.used().ring().ref_at(i as usize).unwrap().load();
                    (e.id(), e.len())
                })
                .collect()
        }

        fn hdr(&self, at: u64, kind: u32, sector: u64) {
            self.mem
                .write_obj(
                    Hdr {
                        kind,
                        reserved: 0,
                        sector,
                    },
                    GuestAddress(at),
                )
                .unwrap();
        }

        fn status(&self, at: u64) -> u8 {
            self.mem.read_obj(GuestAddress(at)).unwrap()
        }
    }

    fn handler(disk: MemoryDisk) -> (RequestHandler, Arc<BlockMetrics>) {
        let m = Arc::new(BlockMetrics::default());
        let sectors = disk.capacity() / SECTOR_SIZE;
        (
            RequestHandler::new(
                Box::new(disk),
                limits(sectors),
                "disk-one",
                m.clone(),
                Arc::new(GuestLog::new("test")),
            ),
            m,
        )
    }

    #[test]
    fn rate_limiter_holds_requests_on_the_ring() {
        use crate::rate_limiter::tests::FakeClock;
        use crate::rate_limiter::{BucketConfig, RateLimit};
        use crate::testing::QueueDriver;
        use std::time::Duration;

        let rig = Rig::new();
        let (mut h, metrics) = handler(MemoryDisk::new(64));
        let clock = FakeClock::new();
        // 2 KiB per second, so two 1 KiB reads pass at once.
        let limit = RateLimit {
            bandwidth: Some(BucketConfig::per_second(2048)),
            ops: None,
        };
        let mut limiter = RateLimiter::with_clock(limit, Box::new(clock.clone()));
        let mut d = QueueDriver::new(&rig.mem, 0x1000, 16);
        let mut q = d.queue();
        let heads: Vec<u16> = (0..4u64)
            .map(|i| {
                rig.hdr(0x10_0000 + i * 0x100, VIRTIO_BLK_T_IN, i);
                d.post(&[
                    (0x10_0000 + i * 0x100, 16, 0),
                    (0x40_0000 + i * 0x1000, 1024, WRITE),
                    (0x30_0000 + i, 1, WRITE),
                ])
            })
            .collect();
        let outcome = process_queue(&mut q, &rig.mem, &mut h, &mut limiter).unwrap();
        assert!(outcome.notify);
        assert_eq!(
            outcome.throttled,
            Some(Duration::from_millis(500) + Duration::from_nanos(1))
        );
        assert_eq!(d.used(), vec![(heads[0], 1025), (heads[1], 1025)]);
        // Nothing moves until the tokens are back.
        let outcome = process_queue(&mut q, &rig.mem, &mut h, &mut limiter).unwrap();
        assert!(!outcome.notify && outcome.throttled.is_some());
        assert!(d.used().is_empty());
        clock.advance(Duration::from_secs(1));
        let outcome = process_queue(&mut q, &rig.mem, &mut h, &mut limiter).unwrap();
        assert_eq!(outcome.throttled, None);
        assert_eq!(d.used(), vec![(heads[2], 1025), (heads[3], 1025)]);
        assert_eq!(metrics.snapshot().reads, 4);
    }

    #[test]
    fn write_then_read_back_through_the_queue() {
        let rig = Rig::new();
        let (mut h, metrics) = handler(MemoryDisk::new(64));
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        rig.mem.write_slice(&pattern, GuestAddress(0x20_0000)).unwrap();
        rig.hdr(0x10_0000, VIRTIO_BLK_T_OUT, 3);
        rig.hdr(0x10_0100, VIRTIO_BLK_T_IN, 3);
        let used = rig.run(
            &mut h,
            &[
                vec![
                    (0x10_0000, 16, false),
                    (0x20_0000, 512, false),
                    (0x20_0200, 512, false),
                    (0x30_0000, 1, true),
                ],
                vec![
                    (0x10_0100, 16, false),
                    (0x40_0000, 1024, true),
                    (0x30_0001, 1, true),
                ],
            ],
        );
        assert_eq!(used, vec![(0, 1), (4, 1025)]);
        assert_eq!(rig.status(0x30_0000), VIRTIO_BLK_S_OK as u8);
        assert_eq!(rig.status(0x30_0001), VIRTIO_BLK_S_OK as u8);
        let mut back = vec![0u8; 1024];
        rig.mem.read_slice(&mut back, GuestAddress(0x40_0000)).unwrap();
        assert_eq!(back, pattern);
        let c = metrics.snapshot();
        assert_eq!(
            (c.reads, c.writes, c.read_bytes, c.write_bytes),
            (1, 1, 1024, 1024)
        );
    }

    #[test]
    fn flush_get_id_discard_write_zeroes() {
        let rig = Rig::new();
        let mut disk = MemoryDisk::new(64);
        disk.write_at(&[0xff; 4096], 0).unwrap();
        let (mut h, metrics) = handler(disk);
        rig.hdr(0x10_0000, VIRTIO_BLK_T_FLUSH, 0);
        rig.hdr(0x10_0100, VIRTIO_BLK_T_GET_ID, 0);
        rig.hdr(0x10_0200, VIRTIO_BLK_T_DISCARD, 0);
        rig.hdr(0x10_0300, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        // Discard sectors 0..2, zero sectors 4..6.
        rig.mem.write_obj([0u64, 2], GuestAddress(0x50_0000)).unwrap();
        rig.mem
            .write_obj([4u64, 2 | (1 << 32)], GuestAddress(0x50_0100))
            .unwrap();
        rig.hdr(0x10_0400, VIRTIO_BLK_T_IN, 0);
        let used = rig.run(
            &mut h,
            &[
                vec![(0x10_0000, 16, false), (0x30_0000, 1, true)],
                vec![
                    (0x10_0100, 16, false),
                    (0x60_0000, 20, true),
                    (0x30_0001, 1, true),
                ],
                vec![
                    (0x10_0200, 16, false),
                    (0x50_0000, 16, false),
                    (0x30_0002, 1, true),
                ],
                vec![
                    (0x10_0300, 16, false),
                    (0x50_0100, 16, false),
                    (0x30_0003, 1, true),
                ],
                vec![
                    (0x10_0400, 16, false),
                    (0x70_0000, 4096, true),
                    (0x30_0004, 1, true),
                ],
            ],
        );
        assert_eq!(
            used.iter().map(|u| u.1).collect::<Vec<_>>(),
            vec![1, 21, 1, 1, 4097]
        );
        for i in 0..5 {
            assert_eq!(rig.status(0x30_0000 + i), VIRTIO_BLK_S_OK as u8, "request {i}");
        }
        let mut id = [0u8; 20];
        rig.mem.read_slice(&mut id, GuestAddress(0x60_0000)).unwrap();
        assert_eq!(&id[..8], b"disk-one");
        assert_eq!(id[8..], [0; 12]);
        let mut data = vec![0u8; 4096];
        rig.mem.read_slice(&mut data, GuestAddress(0x70_0000)).unwrap();
        assert_eq!(data[..1024], [0; 1024], "discarded");
        assert_eq!(data[1024..2048], [0xff; 1024], "untouched");
        assert_eq!(data[2048..3072], [0; 1024], "zeroed");
        let c = metrics.snapshot();
        assert_eq!((c.flushes, c.discards), (1, 2));
    }

    #[test]
    fn malformed_requests_get_error_status_and_a_used_entry() {
        let rig = Rig::new();
        let (mut h, metrics) = handler(MemoryDisk::new(8));
        rig.hdr(0x10_0000, VIRTIO_BLK_T_IN, 8); // past the end
        rig.hdr(0x10_0100, 99, 0); // unknown type
        rig.hdr(0x10_0200, VIRTIO_BLK_T_IN, 0);
        let used = rig.run(
            &mut h,
            &[
                vec![
                    (0x10_0000, 16, false),
                    (0x40_0000, 512, true),
                    (0x30_0000, 1, true),
                ],
                vec![(0x10_0100, 16, false), (0x30_0001, 1, true)],
                // Status descriptor read-only: nothing can be reported.
                vec![
                    (0x10_0200, 16, false),
                    (0x40_0000, 512, true),
                    (0x30_0002, 1, false),
                ],
                // Data in the wrong direction.
                vec![
                    (0x10_0200, 16, false),
                    (0x40_0000, 512, false),
                    (0x30_0003, 1, true),
                ],
            ],
        );
        assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![1, 1, 0, 1]);
        assert_eq!(rig.status(0x30_0000), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(rig.status(0x30_0001), VIRTIO_BLK_S_UNSUPP as u8);
        assert_eq!(rig.status(0x30_0003), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(metrics.snapshot().invalid_requests, 4);
    }

    #[test]
    fn backend_failure_is_ioerr() {
        struct Broken;
        impl DiskBackend for Broken {
            fn capacity(&self) -> u64 {
                4096
            }
            fn read_at(&mut self, _: &mut [u8], _: u64) -> std::io::Result<()> {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
            fn write_at(&mut self, _: &[u8], _: u64) -> std::io::Result<()> {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
            fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> {
                Ok(())
            }
            fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
                Ok(())
            }
        }
        let rig = Rig::new();
        let m = Arc::new(BlockMetrics::default());
        let mut h = RequestHandler::new(
            Box::new(Broken),
            limits(8),
            "",
            m.clone(),
            Arc::new(GuestLog::new("test")),
        );
        rig.hdr(0x10_0000, VIRTIO_BLK_T_OUT, 0);
        let used = rig.run(
            &mut h,
            &[vec![
                (0x10_0000, 16, false),
                (0x40_0000, 512, false),
                (0x30_0000, 1, true),
            ]],
        );
        assert_eq!(used, vec![(0, 1)]);
        assert_eq!(rig.status(0x30_0000), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(m.snapshot().io_errors, 1);
    }

    #[test]
    fn large_request_is_chunked() {
        let rig = Rig::new();
        let sectors = (3 * MAX_CHUNK as u64) / SECTOR_SIZE;
        let mut disk = MemoryDisk::new(sectors);
        let pattern: Vec<u8> = (0..3 * MAX_CHUNK).map(|i| (i % 251) as u8).collect();
        disk.write_at(&pattern, 0).unwrap();
        let (mut h, _) = handler(disk);
        rig.hdr(0x10_0000, VIRTIO_BLK_T_IN, 0);
        // Three segments totalling 2.5 MiB, so chunks straddle segments.
        let used = rig.run(
            &mut h,
            &[vec![
                (0x10_0000, 16, false),
                (0x20_0000, 768 * 1024, true),
                (0x40_0000, 1024 * 1024, true),
                (0x80_0000, 768 * 1024, true),
                (0x30_0000, 1, true),
            ]],
        );
        assert_eq!(used, vec![(0, 2_560 * 1024 + 1)]);
        let mut a = Vec::new();
        for (addr, len) in [
            (0x20_0000u64, 768 * 1024),
            (0x40_0000, 1024 * 1024),
            (0x80_0000, 768 * 1024),
        ] {
            let mut part = vec![0u8; len];
            rig.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            a.extend_from_slice(&part);
        }
        assert_eq!(a, pattern[..2_560 * 1024]);
    }

    /// A disk that stores nothing and counts what it is asked to do, as a
    /// file on tmpfs would be slow to zero: no fallocate, only writes.
    #[derive(Clone, Default)]
    struct Counting(Arc<std::sync::Mutex<(u64, u64)>>);

    impl DiskBackend for Counting {
        fn capacity(&self) -> u64 {
            4 << 30
        }
        fn read_at(&mut self, buf: &mut [u8], _: u64) -> std::io::Result<()> {
            buf.fill(0x5a);
            self.0.lock().unwrap().0 += buf.len() as u64;
            Ok(())
        }
        fn write_at(&mut self, buf: &[u8], _: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().1 += buf.len() as u64;
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn discard(&mut self, _: u64, len: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().1 += len;
            Ok(())
        }
        fn write_zeroes(&mut self, _: u64, len: u64, _: bool) -> std::io::Result<()> {
            self.0.lock().unwrap().1 += len;
            Ok(())
        }
    }

    fn counting_handler(disk: Counting) -> RequestHandler {
        let l = Limits {
            capacity_sectors: disk.capacity() / SECTOR_SIZE,
            read_only: false,
            max_segments: 128,
            max_segment_len: 1 << 20,
            max_discard_segments: 16,
            max_discard_sectors: 1 << 22,
        };
        RequestHandler::new(
            Box::new(disk),
            l,
            "",
            Arc::new(BlockMetrics::default()),
            Arc::new(GuestLog::new("test")),
        )
    }

    /// Finding: WRITE_ZEROES of 16 whole-disk ranges on a file without
    /// ZERO_RANGE (tmpfs) held the event loop for seconds per request, so
    /// pause timed out. Now each turn zeroes at most one step, the request
    /// finishes over many turns, and a snapshot between turns saves the
    /// request as not yet taken.
    #[test]
    fn a_huge_write_zeroes_request_runs_in_bounded_turns() {
        use crate::testing::QueueDriver;
        let rig = Rig::new();
        let disk = Counting::default();
        let mut h = counting_handler(disk.clone());
        let mut d = QueueDriver::new(&rig.mem, 0x1000, 16);
        let mut q = d.queue();
        rig.hdr(0x10_0000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        // 16 segments of 2 GiB (4M sectors) each, all at sector 0.
        let segs: Vec<[u64; 2]> = (0..16).map(|_| [0u64, 1 << 22]).collect();
        rig.mem
            .write_slice(&segs_bytes(&segs), GuestAddress(0x50_0000))
            .unwrap();
        d.post(&[(0x10_0000, 16, 0), (0x50_0000, 16 * 16, 0), (0x30_0000, 1, WRITE)]);
        let mut turns = 0u64;
        loop {
            let before = disk.0.lock().unwrap().1;
            let o = process_queue(&mut q, &rig.mem, &mut h, &mut RateLimiter::default()).unwrap();
            let done = disk.0.lock().unwrap().1 - before;
            assert!(done <= TURN_BYTES, "turn {turns} zeroed {done} bytes");
            turns += 1;
            if turns == 3 {
                // Paused mid-request: the queue is saved as not yet taken.
                assert!(h.has_in_flight());
                assert_eq!(q.next_avail().wrapping_sub(1), 0);
            }
            if !o.more {
                break;
            }
        }
        assert_eq!(disk.0.lock().unwrap().1, 32 << 30);
        assert_eq!(turns, (32 << 30) / ZERO_STEP);
        assert_eq!(d.used(), vec![(0, 1)]);
        assert_eq!(rig.status(0x30_0000), VIRTIO_BLK_S_OK as u8);
    }

    fn segs_bytes(segs: &[[u64; 2]]) -> [u8; 256] {
        let mut out = [0u8; 256];
        for (i, s) in segs.iter().enumerate() {
            out[i * 16..i * 16 + 8].copy_from_slice(&s[0].to_le_bytes());
            out[i * 16 + 8..i * 16 + 16].copy_from_slice(&s[1].to_le_bytes());
        }
        out
    }

    /// Finding: a guest keeping its queue full of huge reads held the one
    /// event-loop thread, starving other devices. Now a 128 MiB read
    /// moves at most a turn's budget at a time.
    #[test]
    fn a_128_mib_read_is_spread_over_turns() {
        use crate::testing::QueueDriver;
        let rig = Rig::new();
        let disk = Counting::default();
        let mut h = counting_handler(disk.clone());
        let mut d = QueueDriver::new(&rig.mem, 0x1000, 256);
        let mut q = d.queue();
        rig.hdr(0x10_0000, VIRTIO_BLK_T_IN, 0);
        let mut chain = vec![(0x10_0000u64, 16u32, 0u16)];
        // 128 data descriptors over one 1 MiB buffer.
        chain.extend((0..128).map(|_| (0x20_0000u64, 1u32 << 20, WRITE)));
        chain.push((0x30_0000, 1, WRITE));
        d.post(&chain);
        let mut turns = 0;
        loop {
            let before = disk.0.lock().unwrap().0;
            let o = process_queue(&mut q, &rig.mem, &mut h, &mut RateLimiter::default()).unwrap();
            assert!(disk.0.lock().unwrap().0 - before <= TURN_BYTES);
            turns += 1;
            if !o.more {
                break;
            }
        }
        assert_eq!(turns, (128 << 20) / TURN_BYTES);
        assert_eq!(d.used(), vec![(0, (128 << 20) + 1)]);
    }
}
