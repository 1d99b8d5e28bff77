//! Entry points for the fuzz targets in `fuzz/`: the parsers and builders
//! that take untrusted input, re-exported without making them part of the
//! public API. Not a stable interface.

use crate::boot::{build_cmdline as build, BootError};
use crate::config::ConfigError;
use crate::device_manager::{virtio_mmio_cmdline_entry, DeviceError, VirtioSlots};
use crate::snapshot::format;
use crate::snapshot::state::SnapshotState;

pub use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
pub use crate::snapshot::format::{
    FormatError, HEADER_LEN, MAGIC, MAX_STATE_BYTES, VERSION_MAJOR, VERSION_MINOR,
};

/// Decodes a snapshot state file as [`Snapshot::open`](crate::Snapshot::open)
/// does and, if it decodes, returns the state encoded again.
pub fn decode_snapshot_state(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let state: SnapshotState = format::decode(bytes)?;
    format::encode(&state)
}

/// The check [`VmConfig::validate`](crate::VmConfig::validate) applies to
/// the user's command line.
pub fn validate_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    crate::config::validate_cmdline(cmdline)
}

/// The command line the kernel gets: Hearth's `extra` entries, then
/// `user`, in a buffer of `capacity` bytes (NUL included).
pub fn build_cmdline(user: &str, extra: &[String], capacity: usize) -> Result<String, BootError> {
    let cmdline = build(user, extra, capacity)?;
    let c = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.into_string().map_err(|e| BootError::Cmdline(e.to_string()))
}

/// The `virtio_mmio.device=` entries of `count` virtio devices, placed as
/// the device manager places them (an error past the last IRQ).
pub fn virtio_mmio_cmdline_entries(count: usize) -> Result<Vec<String>, DeviceError> {
    let mut slots = VirtioSlots::default();
    (0..count)
        .map(|_| {
            slots
                .next()
                .map(|(addr, irq)| virtio_mmio_cmdline_entry(addr, irq))
        })
        .collect()
}
