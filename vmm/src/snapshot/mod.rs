//! Snapshots: pause a VM, save its vCPU, VM and device state and its
//! memory to a directory, and restore it in this process or another, once
//! or many times (clones share unmodified memory pages).
//!
//! A snapshot directory holds [`STATE_FILE`] (see [`format`]) and
//! [`MEMORY_FILE`] (see [`memory`]). docs/SNAPSHOT.md describes both.

pub(crate) mod cpu_check;
pub(crate) mod create;
pub(crate) mod format;
pub(crate) mod memory;
pub(crate) mod restore;
pub(crate) mod state;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

pub use format::FormatError;
pub use memory::RestoreMemory;
pub use restore::RestoreOptions;

use crate::config::VmConfig;
use crate::kvm::KvmError;
use state::SnapshotState;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors saving or loading a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Snapshots are taken of paused VMs only.
    #[error("the VM must be paused before a snapshot is taken")]
    NotPaused,
    /// Writing the snapshot failed (a full disk, permissions).
    #[error("cannot write snapshot file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading the state file failed.
    #[error("cannot read snapshot state {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The state file is corrupt, truncated, or of another version.
    #[error("snapshot state {}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// The memory file is missing or does not fit.
    #[error("snapshot memory: {0}")]
    Memory(io::Error),
    /// A vCPU's state could not be saved or restored.
    #[error("vCPU {index}: {source}")]
    Vcpu {
        /// The vCPU.
        index: usize,
        /// The KVM error.
        source: KvmError,
    },
    /// The VM-wide state could not be saved or restored.
    #[error("VM state: {0}")]
    VmState(KvmError),
    /// The host cannot run what the snapshot was taken on.
    #[error("this host lacks CPU features the snapshot uses: {0}")]
    CpuFeatures(String),
    /// The state contradicts itself.
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// A snapshot opened and validated: its state file decoded, its memory
/// file present. Restore it as often as needed.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    state: SnapshotState,
}

/// What [`Vm::snapshot`](crate::Vm::snapshot) wrote.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotInfo {
    /// Size of the state file.
    pub state_bytes: u64,
    /// Guest memory size.
    pub memory_bytes: u64,
    /// Bytes of memory actually written (non-zero pages).
    pub memory_written: u64,
    /// Time the snapshot took.
    pub duration: std::time::Duration,
}

impl Snapshot {
    /// Reads and checks the snapshot in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|source| SnapshotError::Read {
            path: path.clone(),
            source,
        })?;
        let state: SnapshotState =
            format::decode(&bytes).map_err(|source| SnapshotError::Format { path, source })?;
        if state.vcpus.len() != state.config.vcpus as usize || state.vcpus.is_empty() {
            return Err(SnapshotError::Inconsistent(format!(
                "{} vCPU states for {} vCPUs",
                state.vcpus.len(),
                state.config.vcpus
            )));
        }
        if state.memory_bytes != state.config.memory_mib << 20 {
            return Err(SnapshotError::Inconsistent(format!(
                "{} bytes of memory for memory_mib {}",
                state.memory_bytes, state.config.memory_mib
            )));
        }
        let memory = dir.join(MEMORY_FILE);
        let size = std::fs::metadata(&memory)
            .map_err(|e| {
                SnapshotError::Memory(io::Error::new(e.kind(), format!("{}: {e}", memory.display())))
            })?
            .len();
        if size != state.memory_bytes {
            return Err(SnapshotError::Memory(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "memory file {} is {size} bytes, but the snapshot's guest has {}",
                    memory.display(),
                    state.memory_bytes
                ),
            )));
        }
        Ok(Self { dir, state })
    }

    /// The configuration the snapshotted VM ran with.
    pub fn config(&self) -> &VmConfig {
        &self.state.config
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
