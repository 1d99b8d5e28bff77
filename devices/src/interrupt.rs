//! "Signal the guest": the one thing a device needs from the interrupt
//! controller. The VMM implements it with a KVM irqfd, tests with a counter.

use std::fmt::Debug;
use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line into the guest.
pub trait IrqLine: Send + Sync + Debug {
    /// Raises the interrupt.
    fn trigger(&self) -> io::Result<()>;
}

/// An eventfd registered as a KVM irqfd raises its GSI when written.
impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the interrupts raised.
    #[derive(Debug, Default)]
    pub struct CountingIrq(pub AtomicUsize);

    impl CountingIrq {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl IrqLine for CountingIrq {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
}
