//! What a snapshot's state file holds.

use hearth_devices::legacy::{CmosSnapshot, SerialSnapshot};
use hearth_devices::virtio::persist::TransportSnapshot;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::kvm::vcpu_state::VcpuState;
use crate::kvm::vm_state::VmState;

/// The whole VM apart from its memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotState {
    /// The configuration, with external resources (disk paths, vsock
    /// socket) recorded by name; restore options may replace them.
    pub config: VmConfig,
    /// Guest memory size, which the memory file must match.
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DevicesState,
}

/// Device state, in the order the device manager creates devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DevicesState {
    pub serial: SerialSnapshot,
    pub cmos: CmosSnapshot,
    /// Virtio transports in MMIO slot order.
    pub virtio: Vec<TransportSnapshot>,
}
