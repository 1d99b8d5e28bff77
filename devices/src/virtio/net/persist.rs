//! What a virtio-net device saves in a snapshot beyond its queues: its
//! backend's own state, if the backend has any (the user-mode backend's
//! policy). A TAP has none, and older snapshots have no net state.

use serde::{Deserialize, Serialize};

use super::device::Net;
use crate::virtio::persist::{DeviceRestoreError, DeviceState, PersistError};

/// The kind's name in snapshots.
pub const KIND: &str = "net";

/// The saved state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    /// The backend's state, as it wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<serde_json::Value>,
}

/// Why a net device refuses saved state.
#[derive(Debug, thiserror::Error)]
pub enum NetRestoreError {
    /// Not net state.
    #[error(transparent)]
    State(#[from] PersistError),
    /// The backend refused its part.
    #[error("the network backend refused its saved state: {0}")]
    Backend(std::io::Error),
}

impl Net {
    pub(super) fn save_state(&self) -> Option<DeviceState> {
        let backend = self.backend_state()?;
        Some(DeviceState::new(
            KIND,
            &NetState {
                backend: Some(backend),
            },
        ))
    }

    pub(super) fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let saved: NetState = state
            .decode(KIND)
            .map_err(|e| DeviceRestoreError::new(NetRestoreError::State(e)))?;
        if let Some(b) = saved.backend {
            self.restore_backend_state(&b)
                .map_err(|e| DeviceRestoreError::new(NetRestoreError::Backend(e)))?;
        }
        Ok(())
    }
}
