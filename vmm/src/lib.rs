//! # Hearth
//!
//! An embeddable microVM monitor for x86_64 KVM, built from the rust-vmm
//! crates. A [`Vm`] boots a Linux kernel (ELF vmlinux through the 64-bit
//! boot protocol or PVH, or a bzImage) with an optional initrd, on SMP
//! vCPUs with the in-kernel irqchip, a 16550 serial console and an i8042
//! for reset.
//!
//! ```no_run
//! use hearth::{SerialBuffer, SerialOutput, Vm, VmConfig};
//! use std::time::Duration;
//!
//! let console = SerialBuffer::new();
//! let config = VmConfig::builder("vmlinux")
//!     .vcpus(2)
//!     .memory_mib(128)
//!     .cmdline("console=ttyS0 reboot=k panic=1")
//!     .serial(SerialOutput::Buffer(console.clone()))
//!     .build()?;
//! let vm = Vm::start(config)?;
//! console.wait_for("login:", Duration::from_secs(30));
//! vm.stop();
//! # Ok::<(), hearth::Error>(())
//! ```
//!
//! The library never exits the process and never installs a logger; it
//! logs through the `log` crate.

mod agent;
mod arch;
mod assemble;
mod boot;
mod config;
mod device_manager;
mod disk;
mod error;
mod event_loop;
mod exit;
mod fork;
#[doc(hidden)]
pub mod fuzzing;
mod kvm;
mod limits;
mod memory;
mod metrics;
mod net;
mod observe;
mod pagemap;
mod rate_limits;
mod registry;
mod runner;
pub mod seccomp;
mod serial_cap;
mod serial_output;
mod snapshot;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks;
mod vm;
mod vsock;

pub use agent::{
    AgentClient, AgentError, Command, DirEntry, Endpoint, ExecOutput, ExitStatus, FileKind, FileStat,
    GuestErrorKind, GuestMount, Process, ProcessInfo, ProcessOutput, ProcessState, ProcessStdin,
    RefreshOutcome, Refreshed, Started, DEFAULT_AGENT_PORT,
};
pub use boot::BootError;
pub use config::{
    BootProtocol, ConfigError, DiskConfig, DiskFactory, MemoryBacking, NetConfig, NetFactory, ResourceLimits,
    SerialInput, SerialOutput, VmConfig, VmConfigBuilder, VsockConfig, DEFAULT_CMDLINE, MAX_LABELS,
    MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_MEMORY_MIB, MIN_MEMORY_MIB,
};
pub use device_manager::DeviceError;
pub use error::Error;
pub use exit::ExitReason;
pub use fork::{ChildOptions, ForkError, ForkOptions};
pub use hearth_devices::guest_log::GuestLogCounters;
pub use hearth_devices::legacy::{BootTime, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
pub use hearth_devices::rate_limiter::{BucketConfig, RateLimit};
pub use hearth_devices::unix_socket::clear_stale_socket;
pub use hearth_devices::virtio::block::{BlockCounters, DiskBackend, DiskError, FileDisk, MemoryDisk};
pub use hearth_devices::virtio::net::user::{
    FlowEvent, FlowProtocol, FlowRecord, FlowRecorder, NetPolicy, PolicyError, Rule as NetRule,
    UserNetCounters, UserNetLimits,
};
pub use hearth_devices::virtio::net::{GuestOffloads, MemoryNet, NetBackend, NetCounters, Tap, TapError};
pub use hearth_devices::virtio::vsock::VsockTraffic;
pub use kvm::vcpu::VcpuError;
pub use kvm::KvmError;
pub use memory::MemoryError;
pub use metrics::{DeviceProblems, VcpuMetrics, VmMetrics, VsockCounters, MEMORY_SAMPLE_MAX_AGE};
pub use net::{NetBackendKind, UserNetSpec};
pub use observe::{
    AgentRequests, AuditConfig, AuditRecord, EventKind, EventSink, ExitCounts, IdleAction, IdlePolicy,
    Labels, MemoryUsage, ThreadCpu, Totals, VmEvent, DEFAULT_IDLE_CPU_THRESHOLD, REDACTED,
};
pub use seccomp::SeccompMode;
pub use serial_cap::{SerialCounters, DEFAULT_SERIAL_OUTPUT_LIMIT};
pub use serial_output::{SerialBuffer, SerialCallback, DEFAULT_SERIAL_BUFFER_LIMIT};
pub use snapshot::{
    FormatError, RestoreMemory, RestoreOptions, Snapshot, SnapshotError, SnapshotInfo, SnapshotOptions,
    MAX_DIFF_DEPTH, MEMORY_FILE, STATE_FILE,
};
pub use vm::{Vm, VmCore};
pub use vsock::VsockConnectError;

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn vm_is_send_and_sync() {
        assert_send_sync::<crate::Vm>();
        assert_send_sync::<crate::VmConfig>();
    }
}
