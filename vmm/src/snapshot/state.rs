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
    /// A random id: a diff snapshot names its parent by it (1.2+; 0 in
    /// older snapshots).
    #[serde(default)]
    pub id: u64,
    /// For a diff snapshot: its parent and where its pages go (1.2+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffInfo>,
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

/// What makes a snapshot a diff of another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DiffInfo {
    /// The snapshot it is a diff of.
    pub parent: ParentRef,
    /// How many diffs down from a full snapshot (1 for a diff of a full
    /// one).
    pub depth: u32,
    /// The pages this snapshot's memory file holds, in its order.
    pub extents: Vec<Extent>,
}

/// A parent snapshot, by path and content identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParentRef {
    /// Its directory (absolute).
    pub dir: std::path::PathBuf,
    /// Its state's id.
    pub id: u64,
    /// Its memory file's size.
    pub memory_size: u64,
    /// Its memory file's modification time (ns since the epoch).
    pub memory_mtime_ns: i64,
}

/// A run of guest memory in a diff's memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Extent {
    /// Where the run is in guest RAM, as an offset in the flat layout of
    /// the RAM ranges (a full memory file's layout).
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Where it is in the diff's memory file.
    pub at: u64,
}
