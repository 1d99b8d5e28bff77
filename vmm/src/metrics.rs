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
}

/// One virtio device's guest-triggered problems.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceProblems {
    /// "block", "net" or "vsock".
    pub device: String,
    /// The counters.
    pub counters: GuestLogCounters,
}

fn device_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "net",
        2 => "block",
        19 => "vsock",
        _ => "other",
    }
}

impl Vm {
    /// The VM's counters now.
    pub fn metrics(&self) -> VmMetrics {
        VmMetrics {
            disks: self.disk_counters(),
            nets: self.net_counters(),
            guest_problems: self
                .devices
                .transports
                .iter()
                .map(|t| DeviceProblems {
                    device: device_name(t.device_type()).to_string(),
                    counters: t.guest_log().counters(),
                })
                .collect(),
        }
    }
}
