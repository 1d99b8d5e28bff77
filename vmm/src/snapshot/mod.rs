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

pub use create::SnapshotOptions;
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
    /// A disk's copy-on-write state could not be frozen into the snapshot.
    #[error("disk {index}: {source}")]
    Disk {
        /// The disk.
        index: usize,
        /// Why.
        source: hearth_devices::virtio::block::OverlayError,
    },
    /// A diff snapshot's parent is missing or has changed.
    #[error("{0}")]
    Parent(String),
}

/// A snapshot opened and validated: its state file decoded, its memory
/// file present (and, for a diff snapshot, its parents checked). Restore
/// it as often as needed.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    pub(crate) state: SnapshotState,
    /// Where guest memory comes from.
    pub(crate) memory: MemorySource,
}

/// Where a snapshot's guest memory is.
#[derive(Debug, Clone)]
pub(crate) enum MemorySource {
    /// Files, the full snapshot at the root first, then each diff.
    Files(Vec<memory::MemoryLayer>),
    /// A memfd holding a forked VM's memory (never on disk).
    Memfd(std::sync::Arc<std::fs::File>),
}

/// How deep a chain of diff snapshots may go; a snapshot of a VM restored
/// from a diff this deep is written in full.
pub const MAX_DIFF_DEPTH: u32 = 8;

/// What [`Vm::snapshot`](crate::Vm::snapshot) wrote.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// Size of the state file.
    pub state_bytes: u64,
    /// Guest memory size.
    pub memory_bytes: u64,
    /// Bytes of memory actually written (non-zero pages; for a diff, the
    /// pages changed since its parent).
    pub memory_written: u64,
    /// For a diff snapshot, the parent it refers to.
    pub parent: Option<PathBuf>,
    /// Time the snapshot took.
    pub duration: std::time::Duration,
}

pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn memory_err(path: &Path, e: io::Error) -> SnapshotError {
    SnapshotError::Memory(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn read_state(dir: &Path) -> Result<SnapshotState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| SnapshotError::Read {
        path: path.clone(),
        source,
    })?;
    format::decode(&bytes).map_err(|source| SnapshotError::Format { path, source })
}

/// Checks a diff's runs: whole pages inside guest memory, back to back in
/// its file, in order; returns the file size they need.
fn check_extents(state: &SnapshotState, extents: &[state::Extent]) -> Result<u64, SnapshotError> {
    let bad = |why: String| SnapshotError::Inconsistent(format!("diff memory runs: {why}"));
    let mut at = 0u64;
    let mut last_end = 0u64;
    for (i, e) in extents.iter().enumerate() {
        if e.len == 0 || e.offset % 4096 != 0 || e.len % 4096 != 0 || e.at != at {
            return Err(bad(format!("run {i} is misaligned, empty or out of order")));
        }
        let end = e
            .offset
            .checked_add(e.len)
            .ok_or_else(|| bad(format!("run {i} overflows")))?;
        if end > state.memory_bytes || e.offset < last_end {
            return Err(bad(format!(
                "run {i} is outside guest memory or overlaps the one before"
            )));
        }
        last_end = end;
        at += e.len;
    }
    Ok(at)
}

impl Snapshot {
    /// Reads and checks the snapshot in `dir` (and, for a diff snapshot,
    /// every parent it refers to).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        Self::open_at_depth(dir.as_ref(), 0)
    }

    fn open_at_depth(dir: &Path, depth: u32) -> Result<Self, SnapshotError> {
        let dir = dir.to_path_buf();
        let state = read_state(&dir)?;
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
            .map_err(|e| memory_err(&memory, e))?
            .len();
        let Some(diff) = &state.diff else {
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
            let layers = vec![memory::MemoryLayer {
                path: memory,
                extents: None,
            }];
            return Ok(Self {
                dir,
                state,
                memory: MemorySource::Files(layers),
            });
        };
        if diff.depth == 0 || diff.depth > MAX_DIFF_DEPTH || depth > MAX_DIFF_DEPTH {
            return Err(SnapshotError::Inconsistent(format!(
                "diff depth {} is out of range (1 to {MAX_DIFF_DEPTH})",
                diff.depth
            )));
        }
        let needed = check_extents(&state, &diff.extents)?;
        if size != needed {
            return Err(SnapshotError::Memory(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "diff memory file {} is {size} bytes, its runs need {needed}",
                    memory.display()
                ),
            )));
        }
        let parent = Self::open_at_depth(&diff.parent.dir, depth + 1).map_err(|e| {
            SnapshotError::Parent(format!(
                "diff snapshot {} needs its parent {}: {e}",
                dir.display(),
                diff.parent.dir.display()
            ))
        })?;
        let pmem = parent.dir.join(MEMORY_FILE);
        let pmeta = std::fs::metadata(&pmem).map_err(|e| memory_err(&pmem, e))?;
        if parent.state.id != diff.parent.id
            || pmeta.len() != diff.parent.memory_size
            || mtime_ns(&pmeta) != diff.parent.memory_mtime_ns
            || parent.state.memory_bytes != state.memory_bytes
        {
            return Err(SnapshotError::Parent(format!(
                "diff snapshot {} was taken of another parent than {} (its id, memory file size or \
                 modification time changed)",
                dir.display(),
                diff.parent.dir.display()
            )));
        }
        let MemorySource::Files(mut layers) = parent.memory else {
            return Err(SnapshotError::Parent("a diff's parent must be on disk".into()));
        };
        layers.push(memory::MemoryLayer {
            path: memory,
            extents: Some(diff.extents.clone()),
        });
        Ok(Self {
            dir,
            state,
            memory: MemorySource::Files(layers),
        })
    }

    /// A snapshot that lives in memory (a fork's).
    pub(crate) fn in_memory(state: SnapshotState, memory: MemorySource) -> Self {
        Self {
            dir: PathBuf::new(),
            state,
            memory,
        }
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
