//! What a virtio-vsock device saves in a snapshot beyond its queues.
//! Connections do not survive a snapshot, but the host must not reuse the
//! local ports of connections the guest may still hold.

use serde::{Deserialize, Serialize};

use super::device::Vsock;
use crate::virtio::persist::{DeviceRestoreError, DeviceState, PersistError};

/// The kind's name in snapshots.
pub const KIND: &str = "vsock";

/// The saved state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The next local port the host side would use.
    pub next_local_port: u32,
}

/// Why a vsock device refuses saved state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockRestoreError {
    /// Not vsock state.
    #[error(transparent)]
    State(#[from] PersistError),
    /// Another guest CID.
    #[error("the guest CID is {actual}; the snapshot's was {saved}")]
    Cid {
        /// In the snapshot.
        saved: u64,
        /// The device's.
        actual: u64,
    },
}

impl Vsock {
    pub(super) fn save_state(&self) -> DeviceState {
        DeviceState::new(
            KIND,
            &VsockState {
                guest_cid: self.cid(),
                next_local_port: self.muxer().next_local_port(),
            },
        )
    }

    pub(super) fn load_state(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let saved: VsockState = state
            .decode(KIND)
            .map_err(|e| DeviceRestoreError::new(VsockRestoreError::from(e)))?;
        if saved.guest_cid != self.cid() {
            return Err(DeviceRestoreError::new(VsockRestoreError::Cid {
                saved: saved.guest_cid,
                actual: self.cid(),
            }));
        }
        self.muxer_mut().set_next_local_port(saved.next_local_port);
        Ok(())
    }
}
