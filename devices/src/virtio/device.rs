//! The device side of the transport: a small trait in the spirit of
//! rust-vmm's virtio-device, without PCI baggage.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::VirtioInterrupt;
use crate::guest_log::GuestLog;
use crate::GuestMemoryMmap;

/// What a device receives when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them (validated: every ready
    /// queue lies inside guest memory).
    pub queues: Vec<Queue>,
    /// Raises the device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features both sides agreed on.
    pub acked_features: u64,
}

/// Why a device could not go live.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs was not set up.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The device's own reason.
    #[error("{0}")]
    Device(String),
}

/// A virtio device model behind an MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (e.g. 2 for block).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features offered to the driver, VIRTIO_F_VERSION_1 included.
    fn avail_features(&self) -> u64;
    /// Reads the device config space. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device config space; most devices ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// One eventfd per queue, signalled on QueueNotify.
    fn queue_events(&self) -> &[EventFd];
    /// The device's rate-limited log of guest-triggered problems, shared
    /// with its transport.
    fn guest_log(&self) -> &Arc<GuestLog>;
    /// Goes live with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops processing and forgets the queues.
    fn reset(&mut self);
    /// The running queues' state, for a snapshot (`None` if not active).
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>>;
    /// Called once the device was activated from restored state, before
    /// the guest runs (e.g. vsock tells the guest its connections are gone).
    fn restored(&mut self) {}
    /// The device's own state, for a snapshot (its `persist` module).
    fn save_device(&self) -> Option<super::persist::DeviceState> {
        None
    }
    /// Takes saved device state before activation; refuses state that
    /// does not fit, with the device's own typed error.
    fn restore_device(
        &mut self,
        _state: &super::persist::DeviceState,
    ) -> Result<(), super::persist::DeviceRestoreError> {
        Ok(())
    }
}

/// Copies `data.len()` bytes of a config-space image from `offset`,
/// reading zeros past its end (never panics on any offset or width).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4, 5];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 0, &mut d);
        assert_eq!(d, [1, 2, 3, 4]);
        read_config_bytes(&cfg, 3, &mut d);
        assert_eq!(d, [4, 5, 0, 0]);
        read_config_bytes(&cfg, 5, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
