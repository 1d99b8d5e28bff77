//! virtio over MMIO (virtio 1.2, MMIO version 2, modern devices only).
//!
//! - [`status`]: the device-status state machine, as an explicit table;
//! - [`mmio`]: the MMIO register file a guest driver talks to;
//! - [`device`]: the small trait a device implements for the transport;
//! - [`interrupt`]: the interrupt-status register and its irq line.

pub mod block;
pub mod device;
mod drain;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod placement;
#[cfg(test)]
mod roundtrip_tests;
pub mod status;
pub mod vsock;

pub use device::{ActivateContext, ActivateError, VirtioDevice};
pub(crate) use drain::{drain, Handled};
pub use drain::{QueueError, TURN_CHAINS};
pub use interrupt::VirtioInterrupt;
pub use mmio::MmioTransport;

/// Feature bit: the device is a virtio 1.x (modern) device.
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: used/avail event indices suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where ioeventfds attach.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueOutcome {
    /// The guest needs an interrupt.
    pub notify: bool,
    /// The rate limiter stopped the pass; retry after this long.
    pub throttled: Option<std::time::Duration>,
    /// The turn's budget ran out with work left: the device's event
    /// handler comes back once the event loop has served other events.
    pub more: bool,
}
