//! Network backends: where a virtio-net device's frames come from and go.
//!
//! [`NetBackend`] is public so that library users can plug in their own
//! networking (a user-space stack, a socket, a switch); [`Tap`](super::Tap)
//! and [`MemoryNet`] (for tests and benchmarks) ship here.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What the guest accepts in received frames, from the negotiated
/// features: a backend may then hand over frames with partial checksums
/// (`csum`) and TCP segmentation left undone (`tso4`, `tso6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestOffloads {
    /// VIRTIO_NET_F_GUEST_CSUM: partial checksums are fine.
    pub csum: bool,
    /// VIRTIO_NET_F_GUEST_TSO4 (with GUEST_CSUM): TCPv4 super-frames.
    pub tso4: bool,
    /// VIRTIO_NET_F_GUEST_TSO6 (with GUEST_CSUM): TCPv6 super-frames.
    pub tso6: bool,
}

impl GuestOffloads {
    /// The offloads the driver acked. TSO needs checksum offload too
    /// (virtio 1.2, 5.1.3.1).
    pub fn from_features(acked: u64) -> Self {
        let has = |bit: u32| acked & (1u64 << bit) != 0;
        let csum = has(VIRTIO_NET_F_GUEST_CSUM);
        Self {
            csum,
            tso4: csum && has(VIRTIO_NET_F_GUEST_TSO4),
            tso6: csum && has(VIRTIO_NET_F_GUEST_TSO6),
        }
    }
}

/// The host side of a virtio-net device. Every frame starts with the
/// 12-byte virtio-net header (`virtio_net_hdr_v1`, with `num_buffers`).
///
/// The device calls it from the event loop only, so it needs no locking.
pub trait NetBackend: Send {
    /// Reads one frame, header first, into `buf` (which holds
    /// [`MAX_PACKET_LEN`](super::rxtx::MAX_PACKET_LEN) bytes) and returns
    /// its length. Must not block: [`io::ErrorKind::WouldBlock`] when no
    /// frame is waiting. The device sets `num_buffers` itself.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one whole frame, header first, given as consecutive pieces
    /// (like `writev`). Must not block: a backend that cannot take the
    /// frame now returns an error and the device drops it, as a NIC would.
    fn write_frame(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()>;

    /// Tells the backend which offloads the guest accepts in received
    /// frames; it must not hand over frames needing more. Called on every
    /// activation; an error fails the activation (the driver sees
    /// NEEDS_RESET), since the guest could not parse what would come.
    fn set_offload(&mut self, offloads: GuestOffloads) -> io::Result<()>;

    /// A file descriptor that polls readable (level-triggered) while a
    /// frame is waiting, or `None`. The device stops watching it while its
    /// receive backlog is full. A backend without one is read whenever the
    /// guest posts receive buffers or the owner calls
    /// [`Net::process_rx`](super::Net::process_rx).
    fn fd(&self) -> Option<RawFd>;

    /// The backend's own state for a snapshot (e.g. the user-mode
    /// backend's policy), or `None` (the default) if it has none.
    fn save_state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Takes state [`save_state`](Self::save_state) gave, before the
    /// device runs; an error refuses the restore. Restored state is
    /// untrusted input.
    fn restore_state(&mut self, state: &serde_json::Value) -> io::Result<()> {
        let _ = state;
        Ok(())
    }
}

#[derive(Debug)]
struct Inner {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    capture_tx: bool,
    tx_frames: u64,
    tx_error: Option<io::ErrorKind>,
    offloads: Option<GuestOffloads>,
}

/// A backend in memory, for tests and benchmarks: frames for the guest
/// wait in a queue, and frames from the guest are captured (or only
/// counted). Clones share the same queues, so a test keeps one handle
/// while the device owns another. Its eventfd is readable while frames
/// wait, like a TAP fd.
#[derive(Clone, Debug)]
pub struct MemoryNet {
    inner: Arc<Mutex<Inner>>,
    ready: Arc<EventFd>,
}

impl MemoryNet {
    /// An empty backend that captures transmitted frames.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                rx: VecDeque::new(),
                tx: Vec::new(),
                capture_tx: true,
                tx_frames: 0,
                tx_error: None,
                offloads: None,
            })),
            ready: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame (virtio-net header first) for the guest.
    pub fn push_rx(&self, frame: Vec<u8>) {
        let mut inner = self.lock();
        if inner.rx.is_empty() {
            let _ = self.ready.write(1);
        }
        inner.rx.push_back(frame);
    }

    /// Frames still waiting for the device to read them.
    pub fn rx_pending(&self) -> usize {
        self.lock().rx.len()
    }

    /// Takes the frames the guest sent so far.
    pub fn take_tx(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.lock().tx)
    }

    /// Whether transmitted frames are kept (default) or only counted.
    pub fn set_capture_tx(&self, capture: bool) {
        self.lock().capture_tx = capture;
    }

    /// Frames written by the device since creation.
    pub fn tx_frames(&self) -> u64 {
        self.lock().tx_frames
    }

    /// Makes writes fail with `kind` (e.g. `WouldBlock`, as a full TAP
    /// queue), or succeed again with `None`.
    pub fn set_tx_error(&self, kind: Option<io::ErrorKind>) {
        self.lock().tx_error = kind;
    }

    /// The offloads last set by the device.
    pub fn offloads(&self) -> Option<GuestOffloads> {
        self.lock().offloads
    }
}

impl NetBackend for MemoryNet {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut inner = self.lock();
        let Some(frame) = inner.rx.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if inner.rx.is_empty() {
            let _ = self.ready.read();
        }
        // Like a datagram socket: a frame longer than `buf` is truncated.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(kind) = inner.tx_error {
            return Err(kind.into());
        }
        inner.tx_frames += 1;
        if inner.capture_tx {
            inner
                .tx
                .push(frame.iter().flat_map(|s| s.iter().copied()).collect());
        }
        Ok(())
    }

    fn set_offload(&mut self, offloads: GuestOffloads) -> io::Result<()> {
        self.lock().offloads = Some(offloads);
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.ready.as_raw_fd())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;

    #[test]
    fn offloads_from_features() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | 1 << b);
        assert_eq!(GuestOffloads::from_features(0), GuestOffloads::default());
        // TSO without checksum offload is not an offload.
        assert_eq!(
            GuestOffloads::from_features(f(&[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_CSUM])),
            GuestOffloads::default()
        );
        assert_eq!(
            GuestOffloads::from_features(f(&[
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6
            ])),
            GuestOffloads {
                csum: true,
                tso4: true,
                tso6: true
            }
        );
    }

    /// Whether `fd` polls readable now.
    pub(crate) fn readable(fd: RawFd) -> bool {
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        let ep = Epoll::new().unwrap();
        ep.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
            .unwrap();
        let mut events = [EpollEvent::default(); 1];
        ep.wait(0, &mut events).unwrap() == 1
    }

    #[test]
    fn memory_backend_queues_and_signals() {
        let mut b = MemoryNet::new().unwrap();
        let handle = b.clone();
        let fd = b.fd().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            b.read_frame(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!readable(fd));
        handle.push_rx(vec![1; 20]);
        handle.push_rx(vec![2; 100]);
        assert!(readable(fd));
        assert_eq!(b.read_frame(&mut buf).unwrap(), 20);
        assert!(readable(fd), "one frame still waits");
        assert_eq!(b.read_frame(&mut buf).unwrap(), 64, "truncated to the buffer");
        assert!(!readable(fd));
        b.write_frame(&[IoSlice::new(&[1, 2]), IoSlice::new(&[3])])
            .unwrap();
        assert_eq!(handle.take_tx(), vec![vec![1, 2, 3]]);
        handle.set_tx_error(Some(io::ErrorKind::WouldBlock));
        assert!(b.write_frame(&[IoSlice::new(&[1])]).is_err());
        assert_eq!(handle.tx_frames(), 1);
    }
}
