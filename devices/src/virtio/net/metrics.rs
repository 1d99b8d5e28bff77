//! Counters of a network device, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, bumped by the device. Byte counts are Ethernet bytes:
/// the 12-byte virtio-net header is not included.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Frames the guest sent that reached the backend.
    pub tx_frames: AtomicU64,
    /// Bytes the guest sent that reached the backend.
    pub tx_bytes: AtomicU64,
    /// Received frames dropped for lack of guest buffers: larger than a
    /// whole rx chain (without VIRTIO_NET_F_MRG_RXBUF) or than the whole
    /// ring (with it), or still waiting in the backlog when the driver
    /// reset the device.
    pub rx_dropped_no_buffer: AtomicU64,
    /// Reads from the backend that failed, or returned a frame shorter
    /// than the virtio-net header (dropped).
    pub rx_backend_errors: AtomicU64,
    /// Receive chains returned unused because they were malformed
    /// (device-readable, outside guest memory, or too short).
    pub rx_invalid_buffers: AtomicU64,
    /// Transmitted frames dropped because their chain was malformed.
    pub tx_dropped_malformed: AtomicU64,
    /// Transmitted frames dropped because the backend refused them
    /// (including EAGAIN from a full TAP queue).
    pub tx_dropped_backend: AtomicU64,
    /// Times the receive rate limiter held frames back.
    pub rx_throttled: AtomicU64,
    /// Times the transmit rate limiter held frames back.
    pub tx_throttled: AtomicU64,
    /// Time the receive rate limiter held frames back, in microseconds.
    pub rx_throttled_us: AtomicU64,
    /// Time the transmit rate limiter held frames back, in microseconds.
    pub tx_throttled_us: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_dropped_no_buffer: u64,
    pub rx_backend_errors: u64,
    pub rx_invalid_buffers: u64,
    pub tx_dropped_malformed: u64,
    pub tx_dropped_backend: u64,
    pub rx_throttled: u64,
    pub tx_throttled: u64,
    #[serde(default)]
    pub rx_throttled_us: u64,
    #[serde(default)]
    pub tx_throttled_us: u64,
}

impl NetMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> NetCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCounters {
            rx_frames: g(&self.rx_frames),
            rx_bytes: g(&self.rx_bytes),
            tx_frames: g(&self.tx_frames),
            tx_bytes: g(&self.tx_bytes),
            rx_dropped_no_buffer: g(&self.rx_dropped_no_buffer),
            rx_backend_errors: g(&self.rx_backend_errors),
            rx_invalid_buffers: g(&self.rx_invalid_buffers),
            tx_dropped_malformed: g(&self.tx_dropped_malformed),
            tx_dropped_backend: g(&self.tx_dropped_backend),
            rx_throttled: g(&self.rx_throttled),
            tx_throttled: g(&self.tx_throttled),
            rx_throttled_us: g(&self.rx_throttled_us),
            tx_throttled_us: g(&self.tx_throttled_us),
        }
    }
}
