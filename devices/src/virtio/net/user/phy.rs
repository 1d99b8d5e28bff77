//! The smoltcp `Device` of the backend: the guest's frames go in one at a
//! time (so every SYN meets the listener made for it), and smoltcp's
//! frames queue for the guest, virtio-net header first, up to a bound.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::virtio::net::rxtx::{ETH_HLEN, VNET_HDR_LEN};

/// The frames between smoltcp and the guest.
#[derive(Debug)]
pub(super) struct Phy {
    /// The one guest frame (Ethernet, no header) smoltcp reads next.
    pub(super) ingress: Option<Vec<u8>>,
    /// Frames for the guest, header first.
    pub(super) to_guest: VecDeque<Vec<u8>>,
    /// Most frames `to_guest` holds.
    pub(super) max_frames: usize,
    mtu: usize,
}

impl Phy {
    pub(super) fn new(mtu: u16, max_frames: usize) -> Self {
        Self {
            ingress: None,
            to_guest: VecDeque::new(),
            max_frames,
            mtu: usize::from(mtu),
        }
    }

    /// Whether another frame fits in the queue to the guest.
    pub(super) fn has_room(&self) -> bool {
        self.to_guest.len() < self.max_frames
    }

    /// Queues a frame the backend built itself; dropped (false) when full.
    pub(super) fn push(&mut self, frame: Vec<u8>) -> bool {
        if !self.has_room() {
            return false;
        }
        self.to_guest.push_back(frame);
        true
    }
}

pub(super) struct RxToken(Vec<u8>);

pub(super) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>, bool);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; VNET_HDR_LEN + len];
        let r = f(&mut frame[VNET_HDR_LEN..]);
        // A reply made while the queue is full is dropped, as on a wire.
        if self.1 {
            self.0.push_back(frame);
        }
        r
    }
}

impl phy::Device for Phy {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.ingress.take()?;
        let room = self.to_guest.len() < self.max_frames;
        Some((RxToken(frame), TxToken(&mut self.to_guest, room)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.to_guest.len() >= self.max_frames {
            return None;
        }
        Some(TxToken(&mut self.to_guest, true))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETH_HLEN;
        // The guest may offload checksums (VIRTIO_NET_F_CSUM): its
        // frames carry partial ones, so they are not verified; ours are
        // complete.
        let mut cs = ChecksumCapabilities::default();
        cs.ipv4 = Checksum::Tx;
        cs.tcp = Checksum::Tx;
        cs.udp = Checksum::Tx;
        cs.icmpv4 = Checksum::Tx;
        caps.checksum = cs;
        caps
    }
}
