//! What a VM used over its life, for its `exited` event.

use serde::{Deserialize, Serialize};

use crate::metrics::VmMetrics;

/// Sums over a VM's life (since its start or restore).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Totals {
    /// Wall-clock time since start, milliseconds.
    pub uptime_ms: u64,
    /// Of which paused, milliseconds.
    pub paused_ms: u64,
    /// CPU time of the vCPU threads, microseconds.
    pub vcpu_cpu_us: u64,
    /// CPU time of the VMM's other threads, microseconds.
    pub vmm_cpu_us: u64,
    /// VM exits, all vCPUs.
    pub exits: u64,
    /// Bytes the guest read from its disks.
    pub disk_read_bytes: u64,
    /// Bytes the guest wrote to its disks.
    pub disk_write_bytes: u64,
    /// Bytes delivered to the guest's network interfaces.
    pub net_rx_bytes: u64,
    /// Bytes the guest's network interfaces sent.
    pub net_tx_bytes: u64,
    /// vsock payload bytes to the guest.
    pub vsock_rx_bytes: u64,
    /// vsock payload bytes from the guest.
    pub vsock_tx_bytes: u64,
    /// Agent requests made through the VM's clients.
    pub agent_requests: u64,
}

impl Totals {
    /// The sums of `m`.
    pub fn of(m: &VmMetrics) -> Self {
        let vsock = m.vsock.map(|v| v.traffic).unwrap_or_default();
        Self {
            uptime_ms: m.uptime_ms,
            paused_ms: m.paused_ms,
            vcpu_cpu_us: m.vcpus.iter().map(|v| v.cpu.cpu_us).sum(),
            vmm_cpu_us: m.vmm_threads.iter().map(|t| t.cpu_us).sum(),
            exits: m.vcpus.iter().map(|v| v.exits.total()).sum(),
            disk_read_bytes: m.disks.iter().map(|d| d.read_bytes).sum(),
            disk_write_bytes: m.disks.iter().map(|d| d.write_bytes).sum(),
            net_rx_bytes: m.nets.iter().map(|n| n.rx_bytes).sum(),
            net_tx_bytes: m.nets.iter().map(|n| n.tx_bytes).sum(),
            vsock_rx_bytes: vsock.rx_bytes,
            vsock_tx_bytes: vsock.tx_bytes,
            agent_requests: m.agent.requests.values().sum(),
        }
    }
}
