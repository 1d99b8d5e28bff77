//! The fixture for tests that boot real VMs.
//!
//! [`TestVm`] boots the project's bare-metal test guest (or a Linux guest)
//! with its console captured in memory, and fails with the console output
//! when an expectation is not met.
//!
//! These tests need /dev/kvm. Without it they fail: a missing KVM is an
//! error, never a quiet skip.

// Test support: failing loudly is the point.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod linux;
pub mod netns;
pub mod udp_echo;

use std::path::PathBuf;
use std::time::Duration;

use hearth::{
    BootProtocol, DiskConfig, ExitReason, NetConfig, ResourceLimits, SeccompMode, SerialBuffer, SerialOutput,
    Vm, VmConfig, VsockConfig,
};

/// The test guest's ELF form.
pub fn testguest() -> PathBuf {
    hearth_testguest::elf()
}

/// The test guest's bzImage form.
pub fn testguest_bzimage() -> PathBuf {
    hearth_testguest::bzimage()
}

/// Generous bound for the test guest, whose ring-0 code may be emulated.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A booted VM and its console.
#[derive(Debug)]
pub struct TestVm {
    /// The VM.
    pub vm: Vm,
    /// Everything the guest printed.
    pub console: SerialBuffer,
}

/// Options for [`TestVm`].
#[derive(Debug, Clone)]
pub struct TestVmBuilder {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    vcpus: u32,
    memory_mib: u64,
    protocol: BootProtocol,
    pit: bool,
    disks: Vec<DiskConfig>,
    nets: Vec<NetConfig>,
    vsock: Option<VsockConfig>,
    seccomp: SeccompMode,
    limits: ResourceLimits,
}

impl TestVmBuilder {
    /// seccomp mode (default: enforce, as in production).
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }
    /// vCPU count.
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }
    /// Memory in MiB.
    pub fn memory_mib(mut self, m: u64) -> Self {
        self.memory_mib = m;
        self
    }
    /// Boot protocol.
    pub fn protocol(mut self, p: BootProtocol) -> Self {
        self.protocol = p;
        self
    }
    /// Another kernel image (e.g. the bzImage form).
    pub fn kernel(mut self, k: PathBuf) -> Self {
        self.kernel = k;
        self
    }
    /// An initrd.
    pub fn initrd(mut self, i: PathBuf) -> Self {
        self.initrd = Some(i);
        self
    }
    /// Appends to the command line.
    pub fn arg(mut self, a: &str) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(a);
        self
    }
    /// Adds a disk.
    pub fn disk(mut self, d: DiskConfig) -> Self {
        self.disks.push(d);
        self
    }
    /// Adds a network interface.
    pub fn net(mut self, n: NetConfig) -> Self {
        self.nets.push(n);
        self
    }
    /// Adds a vsock device.
    pub fn vsock(mut self, v: VsockConfig) -> Self {
        self.vsock = Some(v);
        self
    }
    /// Resource bounds.
    pub fn limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Creates the PIT.
    pub fn pit(mut self, pit: bool) -> Self {
        self.pit = pit;
        self
    }
    /// The config this builder describes, with `console` as serial sink.
    pub fn config(&self, console: &SerialBuffer) -> VmConfig {
        let mut b = VmConfig::builder(&self.kernel)
            .vcpus(self.vcpus)
            .memory_mib(self.memory_mib)
            .cmdline(self.cmdline.clone())
            .boot_protocol(self.protocol)
            .pit(self.pit)
            .seccomp(self.seccomp)
            .limits(self.limits)
            .serial(SerialOutput::Buffer(console.clone()));
        if let Some(i) = &self.initrd {
            b = b.initrd(i);
        }
        for d in &self.disks {
            b = b.disk(d.clone());
        }
        for n in &self.nets {
            b = b.net(n.clone());
        }
        if let Some(v) = &self.vsock {
            b = b.vsock(v.clone());
        }
        b.build().expect("valid test config")
    }
    /// Boots.
    pub fn start(self) -> TestVm {
        let console = SerialBuffer::new();
        let vm = Vm::start(self.config(&console)).unwrap_or_else(|e| panic!("Vm::start failed: {e}"));
        TestVm { vm, console }
    }
}

impl TestVm {
    /// Boots the test guest with `tg.scenario=<scenario>`.
    pub fn scenario(scenario: &str) -> TestVmBuilder {
        TestVmBuilder {
            kernel: testguest(),
            initrd: None,
            cmdline: format!("tg.scenario={scenario}"),
            vcpus: 1,
            memory_mib: 64,
            protocol: BootProtocol::Auto,
            pit: false,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            seccomp: SeccompMode::Enforce,
            limits: ResourceLimits::default(),
        }
    }

    /// Boots any kernel with exactly `cmdline`.
    pub fn kernel(kernel: PathBuf, cmdline: &str) -> TestVmBuilder {
        TestVmBuilder {
            kernel,
            initrd: None,
            cmdline: cmdline.to_string(),
            vcpus: 1,
            memory_mib: 128,
            protocol: BootProtocol::Auto,
            pit: false,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            seccomp: SeccompMode::Enforce,
            limits: ResourceLimits::default(),
        }
    }

    /// Waits for `text` on the console; panics with the console if it
    /// does not come.
    pub fn expect(&self, text: &str, timeout: Duration) {
        if !self.console.wait_for(text, timeout) {
            panic!(
                "{text:?} did not appear within {timeout:?}; exit: {:?}; console:\n{}",
                self.vm.exit_reason(),
                self.console.text()
            );
        }
    }

    /// Waits for the VM to exit; panics with the console if it does not.
    pub fn expect_exit(&self, timeout: Duration) -> ExitReason {
        self.vm.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "the VM did not exit within {timeout:?}; console:\n{}",
                self.console.text()
            )
        })
    }

    /// The console lines that start with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.console
            .text()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// Mappings of this process (lines of /proc/self/maps).
pub fn mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count())
        .unwrap_or(0)
}
