//! The error type of the public API.

use std::io;

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::device_manager::DeviceError;
use crate::exit::ExitReason;
use crate::kvm::vcpu::VcpuError;
use crate::kvm::KvmError;
use crate::memory::MemoryError;
use crate::seccomp::SeccompError;
use crate::snapshot::SnapshotError;

/// Everything that can stop a VM from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is missing, inaccessible or failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel, initrd or command line is unusable.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A device could not be set up.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A seccomp filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The operation needs a running VM, and this one has exited.
    #[error("the VM is not running ({0})")]
    NotRunning(ExitReason),
    /// A vCPU thread did not answer a request in time.
    #[error("vCPU {index} did not answer a {request} request")]
    VcpuUnresponsive {
        /// The vCPU.
        index: usize,
        /// The request.
        request: &'static str,
    },
    /// The device event loop did not answer a pause request in time.
    #[error("the device event loop did not answer a pause request")]
    EventLoopUnresponsive,
    /// The network interface has no user-mode backend (so no policy).
    #[error("net {0} is not a user-mode interface: only those have a network policy")]
    NotUserNet(usize),
    /// No device has this index.
    #[error("there is no {kind} {index}: the VM has {count}")]
    NoSuchDevice {
        /// "disk" or "net".
        kind: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// The VM cannot be forked as asked.
    #[error(transparent)]
    Fork(#[from] crate::fork::ForkError),
    /// An eventfd or signal handler could not be set up.
    #[error("cannot set up {what}: {source}")]
    Setup {
        /// What.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}
