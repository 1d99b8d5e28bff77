//! Device models for Hearth.
//!
//! Every device here is plain logic over guest memory (vm-memory) and
//! eventfds: nothing in this crate talks to KVM, so all of it can be unit
//! tested and fuzzed without a virtual machine. The VMM (crate `hearth`)
//! wires the devices to KVM: it places them on the PIO and MMIO [`bus::Bus`]es,
//! turns [`interrupt::IrqLine`]s into irqfds and registers ioeventfds.

pub mod bus;
pub mod guest_log;
pub mod interrupt;
pub mod legacy;
pub mod rate_limiter;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod throttle;
pub mod unix_socket;
pub mod virtio;

/// Guest memory as every device sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
