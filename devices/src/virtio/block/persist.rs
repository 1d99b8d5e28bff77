//! What a virtio-blk device saves in a snapshot beyond its queue: what
//! the guest was told about the disk, which the disk it is restored onto
//! must match.

use serde::{Deserialize, Serialize};

use super::device::Block;
use crate::virtio::persist::{DeviceRestoreError, DeviceState, PersistError};

/// The kind's name in snapshots.
pub const KIND: &str = "block";

/// The saved state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Offered read-only.
    pub read_only: bool,
}

/// Why a block device refuses saved state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockRestoreError {
    /// Not block state.
    #[error(transparent)]
    State(#[from] PersistError),
    /// The disk is another size.
    #[error("the disk has {actual} sectors; the snapshot's disk had {saved}")]
    Capacity {
        /// In the snapshot.
        saved: u64,
        /// The disk's.
        actual: u64,
    },
    /// Read-only then, read-write now, or the other way round.
    #[error("the disk is {}; the snapshot's disk was {}", mode(*.actual), mode(*.saved))]
    Mode {
        /// Read-only in the snapshot.
        saved: bool,
        /// Read-only now.
        actual: bool,
    },
}

fn mode(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "read-write"
    }
}

impl Block {
    pub(super) fn save_state(&self) -> DeviceState {
        let l = self.limits();
        DeviceState::new(
            KIND,
            &BlockState {
                capacity_sectors: l.capacity_sectors,
                read_only: l.read_only,
            },
        )
    }

    pub(super) fn check_state(&self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        let check = || -> Result<(), BlockRestoreError> {
            let saved: BlockState = state.decode(KIND)?;
            let l = self.limits();
            if l.capacity_sectors != saved.capacity_sectors {
                return Err(BlockRestoreError::Capacity {
                    saved: saved.capacity_sectors,
                    actual: l.capacity_sectors,
                });
            }
            if l.read_only != saved.read_only {
                return Err(BlockRestoreError::Mode {
                    saved: saved.read_only,
                    actual: l.read_only,
                });
            }
            Ok(())
        };
        check().map_err(DeviceRestoreError::new)
    }
}
