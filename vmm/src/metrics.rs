//! What a running VM reports about itself: [`Vm::metrics`].

use serde::{Deserialize, Serialize};

use hearth_devices::guest_log::GuestLogCounters;
use hearth_devices::virtio::block::BlockCounters;
use hearth_devices::virtio::net::NetCounters;

use crate::vm::Vm;

/// A VM's counters at one moment. Cheap to take: atomics and one short
/// lock per virtio transport, no system call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VmMetrics {
    /// Each disk's counters, in config order.
    pub disks: Vec<BlockCounters>,
    /// Each network interface's counters, in config order.
    pub nets: Vec<NetCounters>,
    /// Problems the guest provoked, per virtio device, in MMIO slot order
    /// (disks, nets, vsock): how many, and how many were not logged
    /// (docs/LIMITS.md, "Logs").
    pub guest_problems: Vec<DeviceProblems>,
    /// The vsock device's connections, if it has one.
    pub vsock: Option<VsockCounters>,
}

/// The vsock device's state now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VsockCounters {
    /// Live connections.
    pub connections: u64,
    /// Host clients in their `CONNECT` handshake.
    pub pending_clients: u64,
    /// Guest data buffered for host sockets, in bytes.
    pub buffered_bytes: u64,
    /// RSTs waiting for guest rx buffers.
    pub control_backlog: u64,
}

/// One virtio device's guest-triggered problems.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceProblems {
    /// The device's id: `disk<N>`, `net<N>` or `vsock`.
    pub device: String,
    /// The counters.
    pub counters: GuestLogCounters,
}

impl Vm {
    /// The VM's counters now.
    pub fn metrics(&self) -> VmMetrics {
        VmMetrics {
            disks: self.disk_counters(),
            nets: self.net_counters(),
            guest_problems: self
                .devices
                .virtio
                .entries()
                .iter()
                .map(|e| DeviceProblems {
                    device: e.id.clone(),
                    counters: e.transport.guest_log().counters(),
                })
                .collect(),
            vsock: self.devices.virtio.vsock().map(|v| {
                let v = v.lock().unwrap_or_else(|p| p.into_inner());
                let m = v.muxer();
                VsockCounters {
                    connections: m.connection_count() as u64,
                    pending_clients: m.pending_client_count() as u64,
                    buffered_bytes: m.buffered_bytes() as u64,
                    control_backlog: m.control_backlog() as u64,
                }
            }),
        }
    }
}
