//! The i8042 keyboard controller, reduced to what a microVM needs: the
//! guest writes 0xFE (pulse reset) to port 0x64 to reboot, which ends the VM.

use std::fmt;
use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// Base I/O port of the controller (data port 0x60, command port 0x64).
pub const I8042_PORT: u64 = 0x60;
/// Length of the port range.
pub const I8042_PORT_LEN: u64 = 5;

/// Called when the guest asks for a CPU reset.
pub type ResetHandler = Arc<dyn Fn() + Send + Sync>;

struct ResetTrigger(ResetHandler);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)();
        Ok(())
    }
}

/// The i8042 controller on the PIO bus.
pub struct I8042 {
    inner: Mutex<I8042Device<ResetTrigger>>,
}

impl fmt::Debug for I8042 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("I8042")
    }
}

impl I8042 {
    /// Creates the controller; `on_reset` runs on the vCPU thread that wrote
    /// the reset command.
    pub fn new(on_reset: ResetHandler) -> Self {
        Self {
            inner: Mutex::new(I8042Device::new(ResetTrigger(on_reset))),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Ok(mut dev) = self.inner.lock() else { return };
        for byte in data.iter_mut() {
            *byte = dev.read(offset as u8);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Ok(mut dev) = self.inner.lock() else { return };
        // Only single-byte accesses mean anything to this controller.
        if let [value] = data {
            let Ok(()) = dev.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn reset_command_fires_handler_once() {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let dev = I8042::new(Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        dev.write(4, &[0x00]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xfe]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0], "input buffer must read as empty so reboot proceeds");
    }
}
