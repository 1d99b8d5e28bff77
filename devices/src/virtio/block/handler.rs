//! Executing requests against the backend, and the queue loop.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::backend::DiskBackend;
use super::metrics::BlockMetrics;
use super::request::{self, Limits, Request, RequestType, Segment, ID_BYTES};
use crate::rate_limiter::RateLimiter;
use crate::virtio::{drain, QueueError, QueueOutcome};
use crate::GuestMemoryMmap;

/// Largest piece moved between the disk and guest memory at once; this
/// bounds the device's buffer whatever the guest asks for.
pub const MAX_CHUNK: usize = 1 << 20;

/// Walks guest segments while copying a byte stream in or out of them.
struct SegmentCursor<'a> {
    segs: &'a [Segment],
    index: usize,
    offset: u32,
}

impl<'a> SegmentCursor<'a> {
    fn new(segs: &'a [Segment]) -> Self {
        Self {
            segs,
            index: 0,
            offset: 0,
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

/// Executes requests for one device.
pub struct RequestHandler {
    backend: Box<dyn DiskBackend>,
    limits: Limits,
    id: [u8; ID_BYTES as usize],
    buf: Vec<u8>,
    metrics: Arc<BlockMetrics>,
    warned: bool,
}

impl std::fmt::Debug for RequestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHandler")
            .field("limits", &self.limits)
            .finish()
    }
}

impl RequestHandler {
    /// A handler over `backend`; `id` is the GET_ID string (truncated to 20 bytes).
    pub fn new(backend: Box<dyn DiskBackend>, limits: Limits, id: &str, metrics: Arc<BlockMetrics>) -> Self {
        let mut id_bytes = [0u8; ID_BYTES as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            backend,
            limits,
            id: id_bytes,
            buf: Vec::new(),
            metrics,
            warned: false,
        }
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn warn_once(&mut self, msg: std::fmt::Arguments) {
        if !self.warned {
            self.warned = true;
            log::warn!("virtio-blk: {msg} (further problems are only counted)");
        }
    }

    /// Parses, executes and answers one chain. Returns the used length,
    /// or `Err(bytes)` when the rate limiter holds the request back
    /// (nothing was done; the chain must be handed back to the ring).
    pub fn handle(
        &mut self,
        descs: &[Descriptor],
        mem: &GuestMemoryMmap,
        limiter: &mut RateLimiter,
    ) -> Result<u32, u64> {
        let req = match request::parse(descs, mem, &self.limits) {
            Ok(r) => r,
            Err(e) => {
                BlockMetrics::add(&self.metrics.invalid_requests, 1);
                self.warn_once(format_args!("refused a request: {e}"));
                return Ok(match (e.status(), request::status_address(descs, mem)) {
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
            return Err(bytes);
        }
        let (status, data_written) = match self.execute(&req, mem) {
            Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
            Err(e) => {
                BlockMetrics::add(&self.metrics.io_errors, 1);
                self.warn_once(format_args!(
                    "{:?} at offset {} failed: {e}",
                    req.kind, req.offset
                ));
                (VIRTIO_BLK_S_IOERR as u8, 0)
            }
        };
        Ok(match mem.write_obj(status, req.status) {
            Ok(()) => data_written + 1,
            Err(_) => 0,
        })
    }

    /// Runs a valid request; returns the bytes written to guest memory.
    fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap) -> std::io::Result<u32> {
        let guest_err = || std::io::Error::other("guest memory access failed");
        match req.kind {
            RequestType::In => {
                let mut cursor = SegmentCursor::new(&req.data);
                let mut done = 0u64;
                while done < req.data_len {
                    let n = (req.data_len - done).min(MAX_CHUNK as u64) as usize;
                    self.buf.resize(n, 0);
                    self.backend.read_at(&mut self.buf[..n], req.offset + done)?;
                    let buf = &self.buf;
                    if !cursor.walk(n, |addr, r| mem.write_slice(&buf[r], addr).is_ok()) {
                        return Err(guest_err());
                    }
                    done += n as u64;
                }
                BlockMetrics::add(&self.metrics.reads, 1);
                BlockMetrics::add(&self.metrics.read_bytes, req.data_len);
                Ok(req.data_len as u32)
            }
            RequestType::Out => {
                let mut cursor = SegmentCursor::new(&req.data);
                let mut done = 0u64;
                while done < req.data_len {
                    let n = (req.data_len - done).min(MAX_CHUNK as u64) as usize;
                    self.buf.resize(n, 0);
                    let buf = &mut self.buf;
                    if !cursor.walk(n, |addr, r| mem.read_slice(&mut buf[r], addr).is_ok()) {
                        return Err(guest_err());
                    }
                    self.backend.write_at(&self.buf[..n], req.offset + done)?;
                    done += n as u64;
                }
                BlockMetrics::add(&self.metrics.writes, 1);
                BlockMetrics::add(&self.metrics.write_bytes, req.data_len);
                Ok(0)
            }
            RequestType::Flush => {
                self.backend.flush()?;
                BlockMetrics::add(&self.metrics.flushes, 1);
                Ok(0)
            }
            RequestType::GetId => {
                let n = req.data_len.min(u64::from(ID_BYTES)) as usize;
                let id = self.id;
                let mut cursor = SegmentCursor::new(&req.data);
                if !cursor.walk(n, |addr, r| mem.write_slice(&id[r], addr).is_ok()) {
                    return Err(guest_err());
                }
                Ok(n as u32)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                for r in &req.ranges {
                    if req.kind == RequestType::Discard {
                        self.backend.discard(r.offset, r.len)?;
                    } else {
                        self.backend.write_zeroes(r.offset, r.len, r.unmap)?;
                    }
                }
                BlockMetrics::add(&self.metrics.discards, 1);
                Ok(0)
            }
        }
    }
}

/// Handles every available request the rate limiter allows (see
/// [`drain`]).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut RequestHandler,
    limiter: &mut RateLimiter,
) -> Result<QueueOutcome, QueueError> {
    // Bounds the descriptors read per chain, whatever an indirect table says.
    let max_descs = handler.limits().max_segments + 3;
    drain(queue, mem, limiter, max_descs, |descs, limiter| {
        handler.handle(descs, mem, limiter)
    })
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
            let outcome = process_queue(&mut q, &self.mem, handler, &mut RateLimiter::default()).unwrap();
            assert!(outcome.notify || chains.is_empty());
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
            RequestHandler::new(Box::new(disk), limits(sectors), "disk-one", m.clone()),
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
        let mut h = RequestHandler::new(Box::new(Broken), limits(8), "", m.clone());
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
}
