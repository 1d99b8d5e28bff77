//! The virtio-mmio interrupt-status register and the line it raises.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use crate::interrupt::IrqLine;

/// InterruptStatus bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Shared by a transport (which the guest reads and acknowledges) and its
/// device (which raises interrupts from the event loop).
pub struct VirtioInterrupt {
    status: AtomicU32,
    generation: AtomicU32,
    needs_reset: AtomicBool,
    line: Arc<dyn IrqLine>,
}

impl fmt::Debug for VirtioInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioInterrupt")
            .field("status", &self.status())
            .field("generation", &self.generation())
            .finish()
    }
}

impl VirtioInterrupt {
    /// Wraps `line`.
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Self {
            status: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            line,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.line.trigger() {
            log::debug!("virtio interrupt: {e}");
        }
    }

    /// Tells the driver it has used buffers to look at.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Tells the driver the config space (or NEEDS_RESET) changed.
    pub fn signal_config_change(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The device hit an error it cannot recover from: the transport
    /// shows NEEDS_RESET in the status register and the driver gets a
    /// configuration-change interrupt (virtio 1.2, 2.1.2).
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config_change();
        }
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears pending status on device reset.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Restores the registers and NEEDS_RESET (snapshots), exactly as
    /// saved: no interrupt is raised and the generation does not move.
    pub fn restore(&self, status: u32, generation: u32, needs_reset: bool) {
        self.status
            .store(status & (INT_VRING | INT_CONFIG), Ordering::SeqCst);
        self.generation.store(generation, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }
}
