//! VM exits by kind, counted by each vCPU thread (one relaxed atomic add
//! per exit).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why `KVM_RUN` returned, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// A signal or kick interrupted the run (pause, stop, a request).
    Interrupted,
    /// An instruction KVM could not emulate (Hearth steps over the ones
    /// it knows).
    Emulated,
    /// Anything else (halts, interrupt windows, system events).
    Other,
}

const KINDS: usize = 7;

/// Live counters of one vCPU.
#[derive(Debug, Default)]
pub(crate) struct ExitCounters([AtomicU64; KINDS]);

impl ExitCounters {
    pub fn count(&self, kind: ExitKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> ExitCounts {
        let g = |k: ExitKind| self.0[k as usize].load(Ordering::Relaxed);
        ExitCounts {
            io_in: g(ExitKind::IoIn),
            io_out: g(ExitKind::IoOut),
            mmio_read: g(ExitKind::MmioRead),
            mmio_write: g(ExitKind::MmioWrite),
            interrupted: g(ExitKind::Interrupted),
            emulated: g(ExitKind::Emulated),
            other: g(ExitKind::Other),
        }
    }
}

/// One vCPU's exits to the VMM since it started, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: u64,
    /// Port writes (the serial console, the boot marker…).
    pub io_out: u64,
    /// MMIO reads (virtio registers).
    pub mmio_read: u64,
    /// MMIO writes (virtio notifications).
    pub mmio_write: u64,
    /// Runs interrupted by a signal: pauses, stops, state requests.
    pub interrupted: u64,
    /// Instructions KVM could not emulate (Hearth steps over the ones it
    /// knows; any other ends the VM).
    pub emulated: u64,
    /// Everything else.
    pub other: u64,
}

impl ExitCounts {
    /// All exits.
    pub fn total(&self) -> u64 {
        self.io_in
            + self.io_out
            + self.mmio_read
            + self.mmio_write
            + self.interrupted
            + self.emulated
            + self.other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let c = ExitCounters::default();
        c.count(ExitKind::IoOut);
        c.count(ExitKind::IoOut);
        c.count(ExitKind::MmioWrite);
        let r = c.read();
        assert_eq!((r.io_out, r.mmio_write, r.total()), (2, 1, 3));
    }
}
