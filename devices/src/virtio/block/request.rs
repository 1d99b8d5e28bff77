//! A virtio-blk request, parsed from a descriptor chain.
//!
//! This is a pure function of the descriptors and guest memory: nothing is
//! read from or written to the disk here, and every value that comes from
//! the guest is checked before it is used.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header (type, reserved, sector).
pub const HEADER_SIZE: u32 = 16;
/// Size of one discard/write-zeroes segment.
pub const DISCARD_SEGMENT_SIZE: u32 = 16;
/// Length of the GET_ID string.
pub const ID_BYTES: u32 = 20;

/// What the request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors.
    In,
    /// Write sectors.
    Out,
    /// Flush the write cache.
    Flush,
    /// Get the device id string.
    GetId,
    /// Discard ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
}

/// A guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A range for discard or write-zeroes, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Offset on the disk.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Write-zeroes may deallocate.
    pub unmap: bool,
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its type.
    pub kind: RequestType,
    /// Byte offset on the disk (sector × 512) for In/Out.
    pub offset: u64,
    /// The data buffers, in order.
    pub data: Vec<Segment>,
    /// Their total length.
    pub data_len: u64,
    /// Ranges for Discard/WriteZeroes.
    pub ranges: Vec<Range>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// The limits a request must respect: the disk's and those advertised in
/// config space.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Disk size in sectors.
    pub capacity_sectors: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Largest number of data descriptors (seg_max).
    pub max_segments: usize,
    /// Largest data descriptor (size_max).
    pub max_segment_len: u32,
    /// Largest number of discard/write-zeroes segments.
    pub max_discard_segments: u32,
    /// Largest discard/write-zeroes range in sectors.
    pub max_discard_sectors: u32,
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptors.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// No usable status descriptor: the request cannot even be answered.
    #[error("the last descriptor is not a writable status byte in guest memory")]
    BadStatus,
    /// Header missing, too short, write-only, or unreadable.
    #[error("bad request header")]
    BadHeader,
    /// The request type is unknown or unsupported.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A data buffer has the wrong direction.
    #[error("data descriptor has the wrong direction")]
    WrongDirection,
    /// Data length is zero or not a multiple of the sector or segment size.
    #[error("bad data length {0}")]
    BadLength(u64),
    /// More descriptors, or longer ones, than advertised.
    #[error("request exceeds seg_max or size_max")]
    TooManySegments,
    /// A data buffer lies outside guest memory.
    #[error("data buffer outside guest memory")]
    BadAddress,
    /// The sector range passes the end of the disk (or overflows).
    #[error("sector range past the end of the disk")]
    OutOfRange,
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Discard with the unmap flag, or unknown flags.
    #[error("unsupported discard/write-zeroes flags {0:#x}")]
    BadFlags(u32),
}

impl RequestError {
    /// The virtio-blk status the guest gets, if a status byte can be written.
    pub fn status(&self) -> Option<u8> {
        match self {
            Self::EmptyChain | Self::BadStatus => None,
            Self::Unsupported(_) | Self::BadFlags(_) => Some(VIRTIO_BLK_S_UNSUPP as u8),
            _ => Some(VIRTIO_BLK_S_IOERR as u8),
        }
    }
}

/// The status byte's address in a chain whose request failed to parse, if
/// it is a valid one; the caller still answers the guest there.
pub fn status_address(descs: &[Descriptor], mem: &GuestMemoryMmap) -> Option<GuestAddress> {
    let last = descs.last()?;
    (descs.len() >= 2 && last.is_write_only() && last.len() >= 1 && mem.check_range(last.addr(), 1))
        .then_some(last.addr())
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding, any bit pattern valid.
unsafe impl ByteValued for Header {}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DiscardSegment {
    sector: u64,
    num_sectors: u32,
    flags: u32,
}
// SAFETY: plain integers, no padding, any bit pattern valid.
unsafe impl ByteValued for DiscardSegment {}

fn end_sector(start: u64, count: u64, limits: &Limits) -> Result<(), RequestError> {
    match start.checked_add(count) {
        Some(end) if end <= limits.capacity_sectors => Ok(()),
        _ => Err(RequestError::OutOfRange),
    }
}

/// Parses the descriptors of one chain (head first).
pub fn parse(descs: &[Descriptor], mem: &GuestMemoryMmap, limits: &Limits) -> Result<Request, RequestError> {
    let (header_desc, rest) = descs.split_first().ok_or(RequestError::EmptyChain)?;
    let status = status_address(descs, mem).ok_or(RequestError::BadStatus)?;
    let data_descs = rest.split_last().map(|(_, d)| d).unwrap_or(&[]);

    if header_desc.is_write_only() || header_desc.len() < HEADER_SIZE {
        return Err(RequestError::BadHeader);
    }
    let header: Header = mem
        .read_obj(header_desc.addr())
        .map_err(|_| RequestError::BadHeader)?;
    let (kind, header_kind) = match u32::from_le(header.kind) {
        VIRTIO_BLK_T_IN => (RequestType::In, true),
        VIRTIO_BLK_T_OUT => (RequestType::Out, false),
        VIRTIO_BLK_T_FLUSH => (RequestType::Flush, false),
        VIRTIO_BLK_T_GET_ID => (RequestType::GetId, true),
        VIRTIO_BLK_T_DISCARD => (RequestType::Discard, false),
        VIRTIO_BLK_T_WRITE_ZEROES => (RequestType::WriteZeroes, false),
        other => return Err(RequestError::Unsupported(other)),
    };
    let device_writes = header_kind;

    if data_descs.len() > limits.max_segments {
        return Err(RequestError::TooManySegments);
    }
    let mut data = Vec::with_capacity(data_descs.len());
    let mut data_len: u64 = 0;
    for d in data_descs {
        if d.is_write_only() != device_writes {
            return Err(RequestError::WrongDirection);
        }
        if d.len() > limits.max_segment_len {
            return Err(RequestError::TooManySegments);
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(RequestError::BadAddress);
        }
        data_len += u64::from(d.len());
        data.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }

    let sector = u64::from_le(header.sector);
    let mut request = Request {
        kind,
        offset: 0,
        data,
        data_len,
        ranges: Vec::new(),
        status,
    };
    match kind {
        RequestType::In | RequestType::Out => {
            if kind == RequestType::Out && limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            if data_len == 0 || !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::BadLength(data_len));
            }
            end_sector(sector, data_len / SECTOR_SIZE, limits)?;
            request.offset = sector * SECTOR_SIZE;
        }
        RequestType::Flush => {}
        RequestType::GetId => {
            if data_len == 0 {
                return Err(RequestError::BadLength(0));
            }
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            request.ranges = parse_ranges(&request, mem, limits)?;
        }
    }
    Ok(request)
}

fn parse_ranges(
    request: &Request,
    mem: &GuestMemoryMmap,
    limits: &Limits,
) -> Result<Vec<Range>, RequestError> {
    let len = request.data_len;
    if len == 0 || !len.is_multiple_of(u64::from(DISCARD_SEGMENT_SIZE)) {
        return Err(RequestError::BadLength(len));
    }
    let count = len / u64::from(DISCARD_SEGMENT_SIZE);
    if count > u64::from(limits.max_discard_segments) {
        return Err(RequestError::TooManySegments);
    }
    // Segments may straddle descriptors: gather the bytes first (bounded
    // by max_discard_segments × 16).
    let mut bytes = Vec::with_capacity(len as usize);
    for seg in &request.data {
        let start = bytes.len();
        bytes.resize(start + seg.len as usize, 0);
        mem.read_slice(&mut bytes[start..], seg.addr)
            .map_err(|_| RequestError::BadAddress)?;
    }
    let allowed_flags = match request.kind {
        RequestType::WriteZeroes => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        _ => 0,
    };
    let mut ranges = Vec::with_capacity(count as usize);
    for chunk in bytes.chunks_exact(DISCARD_SEGMENT_SIZE as usize) {
        let seg = DiscardSegment::from_slice(chunk)
            .copied()
            .ok_or(RequestError::BadLength(len))?;
        let (sector, n, flags) = (
            u64::from_le(seg.sector),
            u32::from_le(seg.num_sectors),
            u32::from_le(seg.flags),
        );
        if flags & !allowed_flags != 0 {
            return Err(RequestError::BadFlags(flags));
        }
        if n > limits.max_discard_sectors {
            return Err(RequestError::TooManySegments);
        }
        end_sector(sector, u64::from(n), limits)?;
        ranges.push(Range {
            offset: sector * SECTOR_SIZE,
            len: u64::from(n) * SECTOR_SIZE,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    pub(crate) fn limits() -> Limits {
        Limits {
            capacity_sectors: 1024,
            read_only: false,
            max_segments: 8,
            max_segment_len: 1 << 20,
            max_discard_segments: 4,
            max_discard_sectors: 512,
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(
            Header {
                kind,
                reserved: 0,
                sector,
            },
            GuestAddress(HDR),
        )
        .unwrap();
    }

    /// Builds the chain in a mock queue and returns its descriptors.
    fn chain(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Vec<Descriptor> {
        let q = MockSplitQueue::new(m, 16);
        q.build_desc_chain(descs).unwrap().collect()
    }

    fn read_req(m: &GuestMemoryMmap, sector: u64, len: u32) -> Result<Request, RequestError> {
        header(m, VIRTIO_BLK_T_IN, sector);
        let d = chain(
            m,
            &[desc(HDR, 16, 0), desc(DATA, len, WRITE), desc(STATUS, 1, WRITE)],
        );
        parse(&d, m, &limits())
    }

    #[test]
    fn parses_read_and_write() {
        let m = mem();
        let r = read_req(&m, 8, 4096).unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!(r.offset, 8 * 512);
        assert_eq!(
            r.data,
            vec![Segment {
                addr: GuestAddress(DATA),
                len: 4096
            }]
        );
        assert_eq!(r.status, GuestAddress(STATUS));

        header(&m, VIRTIO_BLK_T_OUT, 1023);
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)],
        );
        let w = parse(&d, &m, &limits()).unwrap();
        assert_eq!(
            (w.kind, w.offset, w.data_len),
            (RequestType::Out, 1023 * 512, 512)
        );
    }

    #[test]
    fn multiple_data_segments_and_flush() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let d = chain(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, WRITE),
                desc(DATA + 4096, 1024, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!(parse(&d, &m, &limits()).unwrap().data_len, 1536);
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let d = chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, WRITE)]);
        assert_eq!(parse(&d, &m, &limits()).unwrap().kind, RequestType::Flush);
    }

    #[test]
    fn chain_too_short() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        // Header only: no status descriptor.
        let d = chain(&m, &[desc(HDR, 16, 0)]);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadStatus));
        assert_eq!(parse(&[], &m, &limits()), Err(RequestError::EmptyChain));
        // Header and status, but a read needs data.
        let d = chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, WRITE)]);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadLength(0)));
    }

    #[test]
    fn status_missing_read_only_or_outside_memory() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, WRITE), desc(STATUS, 1, 0)],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadStatus));
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, WRITE), desc(STATUS, 0, WRITE)],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadStatus));
        let d = chain(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(DATA, 512, WRITE),
                desc(0x7fff_ffff, 1, WRITE),
            ],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadStatus));
        assert_eq!(RequestError::BadStatus.status(), None);
    }

    #[test]
    fn wrong_direction() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::WrongDirection));
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, WRITE), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::WrongDirection));
        // A write-only header.
        let d = chain(
            &m,
            &[desc(HDR, 16, WRITE), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadHeader));
        assert_eq!(
            RequestError::WrongDirection.status(),
            Some(VIRTIO_BLK_S_IOERR as u8)
        );
    }

    #[test]
    fn lengths_sectors_and_overflow() {
        let m = mem();
        assert_eq!(read_req(&m, 0, 100), Err(RequestError::BadLength(100)));
        assert_eq!(read_req(&m, 0, 0), Err(RequestError::BadLength(0)));
        assert_eq!(read_req(&m, 1024, 512), Err(RequestError::OutOfRange));
        assert_eq!(read_req(&m, 1023, 1024), Err(RequestError::OutOfRange));
        assert_eq!(read_req(&m, u64::MAX, 512), Err(RequestError::OutOfRange));
        assert_eq!(read_req(&m, u64::MAX / 512, 512), Err(RequestError::OutOfRange));
        assert!(read_req(&m, 1023, 512).is_ok());
        // Header too short.
        header(&m, VIRTIO_BLK_T_IN, 0);
        let d = chain(
            &m,
            &[desc(HDR, 8, 0), desc(DATA, 512, WRITE), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadHeader));
        // Data outside guest memory.
        let d = chain(
            &m,
            &[
                desc(HDR, 16, 0),
                desc(0x3f_ff00, 512, WRITE),
                desc(STATUS, 1, WRITE),
            ],
        );
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadAddress));
        // Longer than size_max, and more segments than seg_max.
        let mut l = limits();
        l.max_segment_len = 512;
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 1024, WRITE), desc(STATUS, 1, WRITE)],
        );
        assert_eq!(parse(&d, &m, &l), Err(RequestError::TooManySegments));
        let mut descs = vec![desc(HDR, 16, 0)];
        descs.extend((0..9).map(|i| desc(DATA + i * 512, 512, WRITE)));
        descs.push(desc(STATUS, 1, WRITE));
        assert_eq!(
            parse(&chain(&m, &descs), &m, &limits()),
            Err(RequestError::TooManySegments)
        );
    }

    #[test]
    fn unknown_type_and_read_only() {
        let m = mem();
        header(&m, 0x77, 0);
        let d = chain(&m, &[desc(HDR, 16, 0), desc(STATUS, 1, WRITE)]);
        let e = parse(&d, &m, &limits()).unwrap_err();
        assert_eq!(e, RequestError::Unsupported(0x77));
        assert_eq!(e.status(), Some(VIRTIO_BLK_S_UNSUPP as u8));
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let d = chain(
            &m,
            &[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, WRITE)],
        );
        let mut l = limits();
        l.read_only = true;
        assert_eq!(parse(&d, &m, &l), Err(RequestError::ReadOnly));
    }

    fn discard_seg(m: &GuestMemoryMmap, at: u64, sector: u64, n: u32, flags: u32) {
        m.write_obj(
            DiscardSegment {
                sector,
                num_sectors: n,
                flags,
            },
            GuestAddress(at),
        )
        .unwrap();
    }

    #[test]
    fn discard_and_write_zeroes() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_DISCARD, 0);
        discard_seg(&m, DATA, 8, 16, 0);
        discard_seg(&m, DATA + 16, 100, 1, 0);
        let d = chain(&m, &[desc(HDR, 16, 0), desc(DATA, 32, 0), desc(STATUS, 1, WRITE)]);
        let r = parse(&d, &m, &limits()).unwrap();
        assert_eq!(
            r.ranges,
            vec![
                Range {
                    offset: 8 * 512,
                    len: 16 * 512,
                    unmap: false
                },
                Range {
                    offset: 100 * 512,
                    len: 512,
                    unmap: false
                }
            ]
        );
        // Unmap is not a discard flag.
        discard_seg(&m, DATA, 8, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadFlags(1)));
        // ...but it is one for write-zeroes.
        header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        assert!(parse(&d, &m, &limits()).unwrap().ranges[0].unmap);
        // Past the end, too long, bad length.
        discard_seg(&m, DATA, 1020, 8, 0);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::OutOfRange));
        discard_seg(&m, DATA, 0, 513, 0);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::TooManySegments));
        let d = chain(&m, &[desc(HDR, 16, 0), desc(DATA, 20, 0), desc(STATUS, 1, WRITE)]);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::BadLength(20)));
        let d = chain(&m, &[desc(HDR, 16, 0), desc(DATA, 80, 0), desc(STATUS, 1, WRITE)]);
        assert_eq!(parse(&d, &m, &limits()), Err(RequestError::TooManySegments));
    }

    #[test]
    fn indirect_table_that_loops_is_bounded() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        // An indirect table of 4 descriptors whose `next` fields form a cycle.
        let table = GuestAddress(0x38_0000);
        let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        for i in 0..4u16 {
            let d = Descriptor::new(DATA + u64::from(i) * 512, 512, next | WRITE, (i + 1) % 4);
            m.write_obj(RawDescriptor::from(d), table.unchecked_add(u64::from(i) * 16))
                .unwrap();
        }
        let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
        let descs: Vec<Descriptor> = q
            .build_desc_chain(&[desc(table.0, 64, indirect)])
            .unwrap()
            .collect();
        // The walk stops after the table's 4 entries.
        assert_eq!(descs.len(), 4);
        // All of them write-only data: the "header" is write-only.
        assert_eq!(parse(&descs, &m, &limits()), Err(RequestError::BadHeader));
    }
}
