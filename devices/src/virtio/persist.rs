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
    pub device: Option<DeviceSnapshot>,
}

/// A device's own state, beyond its transport and queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSnapshot {
    /// virtio-blk: what the guest was told about the disk, which the disk
    /// it is restored onto must match.
    Block {
        /// Size in 512-byte sectors.
        capacity_sectors: u64,
        /// Offered read-only.
        read_only: bool,
    },
    /// virtio-vsock: connections do not survive a snapshot, but the host
    /// must not reuse the local ports of connections the guest may still
    /// hold.
    Vsock {
        /// The guest's CID.
        guest_cid: u64,
        /// The next local port the host side would use.
        next_local_port: u32,
    },
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
    #[error("{0}")]
    Device(String),
    /// The device refused to go live.
    #[error("the device failed to activate: {0}")]
    Activate(String),
}
