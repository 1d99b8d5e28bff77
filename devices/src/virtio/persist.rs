//! Saved state of virtio devices, for snapshots. Restored state is
//! untrusted input: [`MmioTransport::restore`](super::MmioTransport::restore)
//! validates every queue against guest memory before the device runs.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// A virtqueue's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx,
        }
    }
}

/// A virtio-mmio transport and its device's queues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct TransportSnapshot {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub needs_reset: bool,
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state (format 1.1 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceState>,
    /// The device's id in the VM (format 1.2 and later): restore pairs
    /// saved state with devices by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A device's own state, beyond its transport and queues: the device
/// kind's name and the state that kind's `persist` module writes and
/// reads (`block::persist`, `vsock::persist`, `net::persist`), as JSON.
///
/// Encoded as `{"<kind>": <state>}`, which is also how format 1.1 wrote
/// its (closed) enum of device states, so 1.1 snapshots still load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceState(std::collections::BTreeMap<String, serde_json::Value>);

/// Why a device's own saved state cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    /// The state is another kind of device's.
    #[error("saved state is a {found} device's, not a {expected} device's")]
    WrongKind {
        /// The kind reading it.
        expected: &'static str,
        /// What the state says.
        found: String,
    },
    /// The state does not decode as the kind's fields.
    #[error("{kind} state does not decode: {reason}")]
    Decode {
        /// The kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

impl DeviceState {
    /// `state` of device kind `kind`.
    pub fn new<T: Serialize>(kind: &'static str, state: &T) -> Self {
        let value = serde_json::to_value(state).unwrap_or(serde_json::Value::Null);
        Self(std::iter::once((kind.to_string(), value)).collect())
    }

    /// The kind's name.
    pub fn kind(&self) -> &str {
        self.0.keys().next().map_or("", String::as_str)
    }

    /// Reads the state as kind `kind`'s.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, kind: &'static str) -> Result<T, PersistError> {
        match self.0.iter().next() {
            Some((k, v)) if k == kind && self.0.len() == 1 => {
                T::deserialize(v).map_err(|e| PersistError::Decode {
                    kind,
                    reason: e.to_string(),
                })
            }
            _ => Err(PersistError::WrongKind {
                expected: kind,
                found: self.kind().to_string(),
            }),
        }
    }
}

/// Why restored device state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// The snapshot is of another kind of device.
    #[error("saved device type {saved} does not match device type {actual}")]
    DeviceType {
        /// In the snapshot.
        saved: u32,
        /// The device being restored.
        actual: u32,
    },
    /// Wrong number of queues.
    #[error("saved state has {saved} queues, the device has {actual}")]
    QueueCount {
        /// In the snapshot.
        saved: usize,
        /// The device's.
        actual: usize,
    },
    /// A queue's sizes or addresses are invalid.
    #[error("queue {0} is invalid")]
    BadQueue(usize),
    /// The rings of an active device are misplaced.
    #[error(transparent)]
    Placement(#[from] super::placement::PlacementError),
    /// The status is not one a driver can reach.
    #[error("invalid device status {0:#x}")]
    BadStatus(u32),
    /// Features the device does not offer.
    #[error("acked features {acked:#x} are not a subset of {offered:#x}")]
    BadFeatures {
        /// Saved.
        acked: u64,
        /// Offered now.
        offered: u64,
    },
    /// The device's own state does not fit the device (e.g. a disk of
    /// another size).
    #[error(transparent)]
    Device(#[from] DeviceRestoreError),
    /// The device refused to go live.
    #[error("the device failed to activate: {0}")]
    Activate(String),
}

/// A device refused its own saved state: the reason, typed by the device.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DeviceRestoreError(pub Box<dyn std::error::Error + Send + Sync>);

impl PartialEq for DeviceRestoreError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for DeviceRestoreError {}

impl DeviceRestoreError {
    /// Wraps a device's typed error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}
