//! Frames in descriptor chains, as pure functions of (descriptors, guest
//! memory): no fds, no queue state.
//!
//! Every frame starts with the 12-byte virtio-net header
//! (`virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
//! csum_offset, num_buffers), in both directions and with any backend.

use std::collections::VecDeque;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

/// The virtio-net header of a modern device (virtio 1.2, 5.1.6).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// An Ethernet header.
pub const ETH_HLEN: usize = 14;
/// The largest Ethernet frame, with TSO: 64 KiB of payload plus the
/// Ethernet header.
pub const MAX_FRAME_LEN: usize = 65550;
/// The shortest transmitted packet: both headers.
pub const MIN_TX_LEN: usize = VNET_HDR_LEN + ETH_HLEN;
/// The longest packet in either direction, header included.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// The most descriptors a chain may have: the queue size (virtio 1.2,
/// 2.7.5.3.1), however an indirect table is sized.
pub const MAX_CHAIN_DESCRIPTORS: usize = 256;

/// A guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Why a transmitted frame is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// More descriptors than a chain may have.
    #[error("tx chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// The chain stops at a descriptor that still has NEXT set: a loop, an
    /// index past the table, or an unreadable descriptor.
    #[error("tx chain is broken (a loop, a bad next index or an unreadable descriptor)")]
    BrokenChain,
    /// A descriptor the device may only write.
    #[error("tx descriptor is device-writable")]
    WriteOnlyDescriptor,
    /// Shorter than the virtio-net and Ethernet headers.
    #[error("tx frame of {0} bytes is shorter than the virtio-net and Ethernet headers")]
    TooShort(u64),
    /// Longer than the largest frame.
    #[error("tx frame of more than {0} bytes exceeds the largest frame")]
    TooLong(u64),
    /// A buffer lies (partly) outside guest memory.
    #[error("tx buffer outside guest memory")]
    BadAddress,
}

/// Why a receive chain cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxBufferError {
    /// More descriptors than a chain may have.
    #[error("rx chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// The chain stops at a descriptor that still has NEXT set.
    #[error("rx chain is broken (a loop, a bad next index or an unreadable descriptor)")]
    BrokenChain,
    /// A descriptor the device may only read.
    #[error("rx descriptor is device-readable")]
    ReadOnlyDescriptor,
    /// A buffer lies (partly) outside guest memory.
    #[error("rx buffer outside guest memory")]
    BadAddress,
    /// Too small for the virtio-net header.
    #[error("rx chain of {0} bytes cannot hold the virtio-net header")]
    TooShort(u64),
}

/// Checks that a chain ended where the driver ended it.
fn complete(descs: &[Descriptor]) -> bool {
    descs.last().is_none_or(|d| !d.has_next())
}

/// Checks a transmit chain and copies its packet (virtio-net header
/// first) into `buf`, which must hold [`MAX_PACKET_LEN`] bytes. Returns
/// the packet's length. Nothing is copied unless the whole chain is valid.
pub fn read_tx_frame(descs: &[Descriptor], mem: &GuestMemoryMmap, buf: &mut [u8]) -> Result<usize, TxError> {
    if descs.len() > MAX_CHAIN_DESCRIPTORS {
        return Err(TxError::TooManyDescriptors);
    }
    if !complete(descs) {
        return Err(TxError::BrokenChain);
    }
    let limit = MAX_PACKET_LEN.min(buf.len()) as u64;
    let mut total: u64 = 0;
    for d in descs {
        if d.is_write_only() {
            return Err(TxError::WriteOnlyDescriptor);
        }
        total += u64::from(d.len());
        if total > limit {
            return Err(TxError::TooLong(limit));
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(TxError::BadAddress);
        }
    }
    if total < MIN_TX_LEN as u64 {
        return Err(TxError::TooShort(total));
    }
    let mut off = 0;
    for d in descs {
        let end = off + d.len() as usize;
        mem.read_slice(&mut buf[off..end], d.addr())
            .map_err(|_| TxError::BadAddress)?;
        off = end;
    }
    Ok(off)
}

/// A receive chain the guest posted, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxChain {
    /// Its head index, for the used ring.
    pub head: u16,
    /// Its buffers, all device-writable and inside guest memory.
    pub segments: Vec<Segment>,
    /// Their total length.
    pub capacity: u64,
}

/// Checks the descriptors of a receive chain.
pub fn parse_rx_chain(
    head: u16,
    descs: &[Descriptor],
    mem: &GuestMemoryMmap,
) -> Result<RxChain, RxBufferError> {
    if descs.len() > MAX_CHAIN_DESCRIPTORS {
        return Err(RxBufferError::TooManyDescriptors);
    }
    if !complete(descs) {
        return Err(RxBufferError::BrokenChain);
    }
    let mut segments = Vec::with_capacity(descs.len());
    let mut capacity = 0u64;
    for d in descs {
        if !d.is_write_only() {
            return Err(RxBufferError::ReadOnlyDescriptor);
        }
        if d.len() == 0 {
            continue;
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(RxBufferError::BadAddress);
        }
        capacity += u64::from(d.len());
        segments.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    if capacity < VNET_HDR_LEN as u64 {
        return Err(RxBufferError::TooShort(capacity));
    }
    Ok(RxChain {
        head,
        segments,
        capacity,
    })
}

/// Where a received packet can go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxPlan {
    /// Into the first `n` chains.
    Fits(usize),
    /// The guest must post more chains first.
    NeedMore,
    /// It can never fit: drop it.
    TooBig,
}

/// Decides where a packet of `len` bytes (header included) goes, given the
/// chains taken so far. Without mergeable buffers a packet must fit the
/// first chain; with them it may span chains, up to `max_chains` (the
/// queue size) of them.
pub fn plan_rx(len: usize, chains: &VecDeque<RxChain>, mergeable: bool, max_chains: usize) -> RxPlan {
    let len = len as u64;
    if !mergeable {
        return match chains.front() {
            None => RxPlan::NeedMore,
            Some(c) if c.capacity >= len => RxPlan::Fits(1),
            Some(_) => RxPlan::TooBig,
        };
    }
    let mut have = 0u64;
    for (i, c) in chains.iter().enumerate() {
        have += c.capacity;
        if have >= len {
            return RxPlan::Fits(i + 1);
        }
    }
    if chains.len() >= max_chains {
        RxPlan::TooBig
    } else {
        RxPlan::NeedMore
    }
}

/// Writes `packet` (virtio-net header first) across the first `n` chains,
/// which [`plan_rx`] said are enough, setting `num_buffers` to `n`. Pushes
/// each chain's (head, bytes written) to `used`.
pub fn write_rx_frame(
    packet: &mut [u8],
    chains: &VecDeque<RxChain>,
    n: usize,
    mem: &GuestMemoryMmap,
    used: &mut Vec<(u16, u32)>,
) -> Result<(), RxBufferError> {
    let num_buffers = u16::try_from(n).map_err(|_| RxBufferError::TooManyDescriptors)?;
    packet
        .get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN)
        .ok_or(RxBufferError::TooShort(0))?
        .copy_from_slice(&num_buffers.to_le_bytes());
    let mut rest: &[u8] = packet;
    for chain in chains.iter().take(n) {
        let mut written = 0u32;
        for seg in &chain.segments {
            if rest.is_empty() {
                break;
            }
            let k = rest.len().min(seg.len as usize);
            mem.write_slice(&rest[..k], seg.addr)
                .map_err(|_| RxBufferError::BadAddress)?;
            rest = &rest[k..];
            written += k as u32;
        }
        used.push((chain.head, written));
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(RxBufferError::TooShort(packet.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn chain(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Vec<Descriptor> {
        MockSplitQueue::new(m, 16)
            .build_desc_chain(descs)
            .unwrap()
            .collect()
    }

    fn buf() -> Vec<u8> {
        vec![0u8; MAX_PACKET_LEN]
    }

    #[test]
    fn tx_frame_is_gathered_in_order() {
        let m = mem();
        m.write_slice(&[1u8; 12], GuestAddress(0x1000)).unwrap();
        m.write_slice(&[2u8; 100], GuestAddress(0x8000)).unwrap();
        let d = chain(&m, &[desc(0x1000, 12, 0), desc(0x8000, 100, 0)]);
        let mut b = buf();
        assert_eq!(read_tx_frame(&d, &m, &mut b), Ok(112));
        assert_eq!(&b[..12], &[1u8; 12]);
        assert_eq!(&b[12..112], &[2u8; 100]);
    }

    #[test]
    fn tx_bounds() {
        let m = mem();
        let mut b = buf();
        let d = chain(&m, &[desc(0x1000, 25, 0)]);
        assert_eq!(read_tx_frame(&d, &m, &mut b), Err(TxError::TooShort(25)));
        assert_eq!(read_tx_frame(&[], &m, &mut b), Err(TxError::TooShort(0)));
        let d = chain(&m, &[desc(0x1000, 26, 0)]);
        assert_eq!(read_tx_frame(&d, &m, &mut b), Ok(26));
        let d = chain(&m, &[desc(0x1000, MAX_PACKET_LEN as u32, 0)]);
        assert_eq!(read_tx_frame(&d, &m, &mut b), Ok(MAX_PACKET_LEN));
        let d = chain(&m, &[desc(0x1000, 60_000, 0), desc(0x10_0000, 6_000, 0)]);
        assert_eq!(
            read_tx_frame(&d, &m, &mut b),
            Err(TxError::TooLong(MAX_PACKET_LEN as u64))
        );
        let d = chain(&m, &[desc(0x1000, 12, 0), desc(0x2000, 64, WRITE)]);
        assert_eq!(read_tx_frame(&d, &m, &mut b), Err(TxError::WriteOnlyDescriptor));
        // Starts inside memory, runs past its end.
        let d = chain(&m, &[desc(0x3f_ffc0, 1500, 0)]);
        assert_eq!(read_tx_frame(&d, &m, &mut b), Err(TxError::BadAddress));
        let d = chain(&m, &[desc(0x1000_0000, 100, 0)]);
        assert_eq!(read_tx_frame(&d, &m, &mut b), Err(TxError::BadAddress));
    }

    #[test]
    fn tx_descriptor_count_and_broken_chains() {
        let m = mem();
        let mut b = buf();
        let many: Vec<Descriptor> = (0..=MAX_CHAIN_DESCRIPTORS as u64)
            .map(|i| Descriptor::new(0x1000 + i * 64, 64, NEXT, 0))
            .collect();
        assert_eq!(read_tx_frame(&many, &m, &mut b), Err(TxError::TooManyDescriptors));
        // A walk that stopped at a descriptor still pointing further.
        let cut = [Descriptor::new(0x1000, 64, NEXT, 200)];
        assert_eq!(read_tx_frame(&cut, &m, &mut b), Err(TxError::BrokenChain));
    }

    #[test]
    fn rx_chain_checks() {
        let m = mem();
        let d = chain(
            &m,
            &[
                desc(0x1000, 12, WRITE),
                desc(0x2000, 0, WRITE),
                desc(0x3000, 1514, WRITE),
            ],
        );
        let c = parse_rx_chain(7, &d, &m).unwrap();
        assert_eq!((c.head, c.capacity, c.segments.len()), (7, 1526, 2));
        let d = chain(&m, &[desc(0x1000, 1526, 0)]);
        assert_eq!(parse_rx_chain(0, &d, &m), Err(RxBufferError::ReadOnlyDescriptor));
        let d = chain(&m, &[desc(0x1000, 11, WRITE)]);
        assert_eq!(parse_rx_chain(0, &d, &m), Err(RxBufferError::TooShort(11)));
        let d = chain(&m, &[desc(0x3f_ff00, 4096, WRITE)]);
        assert_eq!(parse_rx_chain(0, &d, &m), Err(RxBufferError::BadAddress));
        let cut = [Descriptor::new(0x1000, 64, NEXT | WRITE, 200)];
        assert_eq!(parse_rx_chain(0, &cut, &m), Err(RxBufferError::BrokenChain));
    }

    fn rx_chain(head: u16, addr: u64, len: u32) -> RxChain {
        RxChain {
            head,
            segments: vec![Segment {
                addr: GuestAddress(addr),
                len,
            }],
            capacity: u64::from(len),
        }
    }

    #[test]
    fn plans() {
        let mut q = VecDeque::new();
        assert_eq!(plan_rx(100, &q, false, 4), RxPlan::NeedMore);
        assert_eq!(plan_rx(100, &q, true, 4), RxPlan::NeedMore);
        q.push_back(rx_chain(0, 0x1000, 64));
        assert_eq!(plan_rx(64, &q, false, 4), RxPlan::Fits(1));
        assert_eq!(plan_rx(100, &q, false, 4), RxPlan::TooBig);
        assert_eq!(plan_rx(100, &q, true, 4), RxPlan::NeedMore);
        q.push_back(rx_chain(1, 0x2000, 64));
        assert_eq!(plan_rx(100, &q, true, 4), RxPlan::Fits(2));
        assert_eq!(plan_rx(300, &q, true, 2), RxPlan::TooBig);
    }

    #[test]
    fn rx_frame_spans_chains_with_num_buffers() {
        let m = mem();
        let q: VecDeque<RxChain> = [rx_chain(3, 0x1000, 40), rx_chain(9, 0x2000, 40)].into();
        let mut packet: Vec<u8> = (0..70u8).collect();
        let mut used = Vec::new();
        write_rx_frame(&mut packet, &q, 2, &m, &mut used).unwrap();
        assert_eq!(used, vec![(3, 40), (9, 30)]);
        let mut a = [0u8; 40];
        m.read_slice(&mut a, GuestAddress(0x1000)).unwrap();
        assert_eq!(&a[..10], &(0..10u8).collect::<Vec<_>>()[..]);
        assert_eq!(&a[10..12], &2u16.to_le_bytes(), "num_buffers");
        assert_eq!(&a[12..], &(12..40u8).collect::<Vec<_>>()[..]);
        let mut b = [0u8; 30];
        m.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert_eq!(&b[..], &(40..70u8).collect::<Vec<_>>()[..]);
        // Not enough room is an error, never a panic.
        used.clear();
        let mut big = vec![0u8; 100];
        assert!(write_rx_frame(&mut big, &q, 2, &m, &mut used).is_err());
    }
}
