//! The VM configuration: plain serde data, a builder, and validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, MAX_VCPUS};
pub use crate::limits::ResourceLimits;
pub use crate::memory::MemoryBacking;
use crate::observe::{AuditConfig, EventSink, IdleAction, IdlePolicy, Labels};
use crate::seccomp::SeccompMode;
use crate::serial_output::{SerialBuffer, SerialCallback};

pub use crate::disk::{DiskConfig, DiskFactory};
pub use crate::net::{NetConfig, NetFactory};

/// Smallest guest memory: the kernel loads at 1 MiB and needs room above it.
pub const MIN_MEMORY_MIB: u64 = 4;
/// Largest guest memory accepted before any host check (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Where the guest's serial console (COM1) output goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SerialOutput {
    /// The VMM process's standard output (`"stdout"` in JSON).
    #[default]
    Stdout,
    /// Discarded (`"none"`).
    None,
    /// Appended to a file, created if missing (`{"file": "PATH"}`).
    File(PathBuf),
    /// An in-memory buffer the caller keeps a clone of (library only).
    #[serde(skip)]
    Buffer(SerialBuffer),
    /// A callback (library only).
    #[serde(skip)]
    Callback(SerialCallback),
}

/// Where the guest's serial input comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialInput {
    /// No input (the library can still inject bytes with
    /// [`Vm::send_serial_input`](crate::Vm::send_serial_input)).
    #[default]
    None,
    /// The VMM process's standard input.
    Stdin,
}

/// Which entry protocol to boot the kernel with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootProtocol {
    /// PVH when the ELF kernel carries a PVH note, else the Linux 64-bit
    /// boot protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol (ELF vmlinux or bzImage).
    Linux,
    /// PVH (ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note only).
    Pvh,
}

/// A configuration error; the message names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// vCPU count out of range.
    #[error("vcpus must be between 1 and {max}, got {got}")]
    Vcpus {
        /// Value given.
        got: u32,
        /// Upper bound.
        max: u32,
    },
    /// Memory too small.
    #[error("memory_mib must be at least {MIN_MEMORY_MIB}, got {0}")]
    MemoryTooSmall(u64),
    /// Memory larger than the host has.
    #[error("memory_mib {requested} exceeds the host's available memory ({available} MiB)")]
    MemoryTooLarge {
        /// MiB asked for.
        requested: u64,
        /// MiB the host has available.
        available: u64,
    },
    /// No kernel path.
    #[error("kernel must be set")]
    NoKernel,
    /// Command line too long.
    #[error("cmdline is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Command line with a NUL or another non-printable character.
    #[error("cmdline has a {what} at byte {offset}; only printable ASCII is allowed")]
    CmdlineCharacter {
        /// "NUL byte" or "non-printable character".
        what: &'static str,
        /// Where.
        offset: usize,
    },
    /// A disk entry is invalid.
    #[error("disks[{index}]: {why}")]
    Disk {
        /// Which disk.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// A network interface entry is invalid.
    #[error("nets[{index}]: {why}")]
    Net {
        /// Which interface.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// The vsock entry is invalid.
    #[error("vsock: {0}")]
    Vsock(String),
    /// A resource limit is out of range.
    #[error("limits: {0}")]
    Limits(String),
    /// The id or a label is invalid.
    #[error("{0}")]
    Identity(String),
    /// The TTL or idle policy is invalid.
    #[error("{0}")]
    Deadline(String),
    /// The JSON did not parse; the message starts with the field's path.
    #[error("invalid config: {0}")]
    Json(String),
}

fn default_vcpus() -> u32 {
    1
}
fn default_memory_mib() -> u64 {
    128
}
fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

/// Everything needed to start a VM.
///
/// Build it with [`VmConfig::builder`] or parse it with
/// [`VmConfig::from_json`]; `docs/CONFIG.md` documents the JSON form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VmConfig {
    /// Number of vCPUs (1..=254).
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Kernel image: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// Optional initrd/initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; Hearth appends its device entries.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Serial console output.
    #[serde(default)]
    pub serial: SerialOutput,
    /// Serial console input.
    #[serde(default)]
    pub serial_input: SerialInput,
    /// Kernel entry protocol.
    #[serde(default)]
    pub boot_protocol: BootProtocol,
    /// Create the legacy i8254 PIT. Guests that use the LAPIC timer and
    /// kvm-clock do not need it, and it costs a few ms on some hosts.
    #[serde(default)]
    pub pit: bool,
    /// What backs guest RAM.
    #[serde(default)]
    pub memory_backing: MemoryBacking,
    /// virtio-blk disks, in order (the first is /dev/vda).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, in order (the first is eth0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device with a Firecracker-compatible host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// seccomp filters on the VM's threads: `enforce` (default), `log`
    /// or `off`.
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// Bounds on the host resources the guest can make the VMM hold
    /// (docs/LIMITS.md).
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: ResourceLimits,
    /// The VM's id on its events and metrics; by default Hearth makes one
    /// (16 hex digits). A snapshot keeps it, so a restore is the same VM
    /// unless given another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Key/value pairs (tenant, team, trace id…) copied onto every event.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Where lifecycle events go (library only; docs/OBSERVABILITY.md).
    #[serde(skip)]
    pub events: Option<EventSink>,
    /// Time to live, counted from the start (pauses included): the VM
    /// then stops with [`ExitReason::TtlExpired`](crate::ExitReason). A
    /// snapshot keeps what is left of it. JSON: `ttl_ms`.
    #[serde(
        default,
        rename = "ttl_ms",
        with = "crate::observe::millis::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// What happens to the VM when it is idle for long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdlePolicy>,
    /// The audit of processes the agent runs (on by default).
    #[serde(default, skip_serializing_if = "is_default_audit")]
    pub audit: AuditConfig,
}

fn is_default_audit(a: &AuditConfig) -> bool {
    *a == AuditConfig::default()
}

/// Most labels on a VM.
pub const MAX_LABELS: usize = 64;
/// Longest label key or VM id, in bytes.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;

/// Checks a VM id and labels.
pub(crate) fn validate_identity(id: Option<&str>, labels: &Labels) -> Result<(), ConfigError> {
    if let Some(id) = id {
        if id.is_empty() || id.len() > MAX_LABEL_KEY || id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Identity(format!(
                "id must be 1 to {MAX_LABEL_KEY} bytes without control characters"
            )));
        }
    }
    if labels.len() > MAX_LABELS {
        return Err(ConfigError::Identity(format!(
            "{} labels; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE {
            return Err(ConfigError::Identity(format!(
                "label {k:?}: keys are 1 to {MAX_LABEL_KEY} bytes, values at most {MAX_LABEL_VALUE}"
            )));
        }
    }
    Ok(())
}

/// Checks a TTL and an idle policy.
pub(crate) fn validate_deadlines(
    ttl: Option<Duration>,
    idle: Option<&IdlePolicy>,
) -> Result<(), ConfigError> {
    if ttl == Some(Duration::ZERO) {
        return Err(ConfigError::Deadline("ttl must be more than 0".into()));
    }
    if let Some(p) = idle {
        if p.timeout.is_zero() {
            return Err(ConfigError::Deadline("idle timeout must be more than 0".into()));
        }
        if !(p.cpu_threshold >= 0.0 && p.cpu_threshold.is_finite()) {
            return Err(ConfigError::Deadline(format!(
                "idle cpu_threshold must be a CPU fraction of 0 or more, got {}",
                p.cpu_threshold
            )));
        }
        if let IdleAction::Snapshot(dir) = &p.action {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::Deadline("idle snapshot directory is empty".into()));
            }
        }
    }
    Ok(())
}

fn is_default_limits(l: &ResourceLimits) -> bool {
    *l == ResourceLimits::default()
}

/// The vsock device: the guest's CID and the host Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host clients connect here and write `CONNECT <port>\n`; guest
    /// connections to host port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// A vsock device for guest `guest_cid` listening on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.into(),
        }
    }
}

impl VmConfig {
    /// Starts a builder with the defaults and `kernel`.
    pub fn builder(kernel: impl Into<PathBuf>) -> VmConfigBuilder {
        VmConfigBuilder {
            config: Self {
                vcpus: default_vcpus(),
                memory_mib: default_memory_mib(),
                kernel: kernel.into(),
                initrd: None,
                cmdline: default_cmdline(),
                serial: SerialOutput::default(),
                serial_input: SerialInput::default(),
                boot_protocol: BootProtocol::default(),
                pit: false,
                memory_backing: MemoryBacking::default(),
                disks: Vec::new(),
                nets: Vec::new(),
                vsock: None,
                seccomp: SeccompMode::default(),
                limits: ResourceLimits::default(),
                id: None,
                labels: Labels::new(),
                events: None,
                ttl: None,
                idle: None,
                audit: AuditConfig::default(),
            },
        }
    }

    /// Parses the JSON form. Errors name the field at fault.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ConfigError::Json(inner.to_string())
            } else {
                ConfigError::Json(format!("{path}: {inner}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The JSON form (library-only serial sinks are written as "none").
    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        if matches!(c.serial, SerialOutput::Buffer(_) | SerialOutput::Callback(_)) {
            c.serial = SerialOutput::None;
        }
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    /// Checks everything that does not depend on the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_identity(self.id.as_deref(), &self.labels)?;
        validate_deadlines(self.ttl, self.idle.as_ref())?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus {
                got: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::MemoryTooLarge {
                requested: self.memory_mib,
                available: MAX_MEMORY_MIB,
            });
        }
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        for (index, disk) in self.disks.iter().enumerate() {
            disk.validate().map_err(|why| ConfigError::Disk { index, why })?;
        }
        for (index, net) in self.nets.iter().enumerate() {
            net.validate().map_err(|why| ConfigError::Net { index, why })?;
        }
        if let Some(v) = &self.vsock {
            if !(3..=u64::from(u32::MAX)).contains(&v.guest_cid) {
                return Err(ConfigError::Vsock(format!(
                    "guest_cid must be from 3 to {}, got {}",
                    u32::MAX,
                    v.guest_cid
                )));
            }
            if v.uds_path.as_os_str().is_empty() {
                return Err(ConfigError::Vsock("uds_path must be set".into()));
            }
        }
        self.limits.validate().map_err(ConfigError::Limits)?;
        validate_cmdline(&self.cmdline)
    }
}

/// The command line must fit with its NUL and be printable ASCII.
pub(crate) fn validate_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(ConfigError::CmdlineCharacter {
            what: "NUL byte",
            offset,
        });
    }
    if let Some(offset) = cmdline.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        return Err(ConfigError::CmdlineCharacter {
            what: "non-printable character",
            offset,
        });
    }
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(ConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    Ok(())
}

/// Reads `MemAvailable` from a /proc/meminfo text, in MiB.
pub(crate) fn parse_mem_available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib / 1024)
    })
}

/// Refuses more memory than the host has available.
pub(crate) fn check_host_memory(requested_mib: u64) -> Result<(), ConfigError> {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(());
    };
    match parse_mem_available_mib(&meminfo) {
        Some(available) if requested_mib > available => Err(ConfigError::MemoryTooLarge {
            requested: requested_mib,
            available,
        }),
        _ => Ok(()),
    }
}

/// Builds a [`VmConfig`].
#[derive(Debug, Clone)]
pub struct VmConfigBuilder {
    config: VmConfig,
}

impl VmConfigBuilder {
    /// Number of vCPUs.
    pub fn vcpus(mut self, n: u32) -> Self {
        self.config.vcpus = n;
        self
    }
    /// Guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.config.memory_mib = mib;
        self
    }
    /// An initrd.
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.config.initrd = Some(path.as_ref().to_path_buf());
        self
    }
    /// The kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.config.cmdline = cmdline.into();
        self
    }
    /// Serial output.
    pub fn serial(mut self, out: SerialOutput) -> Self {
        self.config.serial = out;
        self
    }
    /// Serial input.
    pub fn serial_input(mut self, input: SerialInput) -> Self {
        self.config.serial_input = input;
        self
    }
    /// Boot protocol.
    pub fn boot_protocol(mut self, p: BootProtocol) -> Self {
        self.config.boot_protocol = p;
        self
    }
    /// Whether to create the PIT.
    pub fn pit(mut self, pit: bool) -> Self {
        self.config.pit = pit;
        self
    }
    /// What backs guest RAM.
    pub fn memory_backing(mut self, backing: MemoryBacking) -> Self {
        self.config.memory_backing = backing;
        self
    }
    /// Adds a disk.
    pub fn disk(mut self, disk: DiskConfig) -> Self {
        self.config.disks.push(disk);
        self
    }
    /// Adds a network interface.
    pub fn net(mut self, net: NetConfig) -> Self {
        self.config.nets.push(net);
        self
    }
    /// Adds a vsock device.
    pub fn vsock(mut self, vsock: VsockConfig) -> Self {
        self.config.vsock = Some(vsock);
        self
    }
    /// Resource bounds.
    pub fn limits(mut self, limits: ResourceLimits) -> Self {
        self.config.limits = limits;
        self
    }
    /// What the seccomp filters do (see [`SeccompMode`]).
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.config.seccomp = mode;
        self
    }
    /// The VM's id on events and metrics.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.config.id = Some(id.into());
        self
    }
    /// Adds a label copied onto every event.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.labels.insert(key.into(), value.into());
        self
    }
    /// Where lifecycle events go.
    pub fn events(mut self, sink: EventSink) -> Self {
        self.config.events = Some(sink);
        self
    }
    /// Time to live: the VM stops with
    /// [`ExitReason::TtlExpired`](crate::ExitReason) this long after its
    /// start.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = Some(ttl);
        self
    }
    /// When idle for `timeout`, `action` (pause, or snapshot and stop).
    pub fn idle_timeout(mut self, timeout: Duration, action: IdleAction) -> Self {
        self.config.idle = Some(IdlePolicy::new(timeout, action));
        self
    }
    /// What audit records keep.
    pub fn audit(mut self, audit: AuditConfig) -> Self {
        self.config.audit = audit;
        self
    }
    /// Validates and returns the config.
    pub fn build(self) -> Result<VmConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_defaults_and_validation() {
        let c = VmConfig::builder("/k").build().unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.pit), (1, 128, false));
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!(
            VmConfig::builder("/k").vcpus(0).build(),
            Err(ConfigError::Vcpus {
                got: 0,
                max: MAX_VCPUS
            })
        );
        assert!(VmConfig::builder("/k").vcpus(255).build().is_err());
        assert_eq!(
            VmConfig::builder("/k").memory_mib(0).build(),
            Err(ConfigError::MemoryTooSmall(0))
        );
        assert_eq!(VmConfig::builder("").build(), Err(ConfigError::NoKernel));
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert_eq!(
            VmConfig::builder("/k").cmdline(long).build(),
            Err(ConfigError::CmdlineTooLong {
                len: CMDLINE_MAX_SIZE,
                max: CMDLINE_MAX_SIZE - 1
            })
        );
        assert_eq!(
            VmConfig::builder("/k").cmdline("a\0b").build(),
            Err(ConfigError::CmdlineCharacter {
                what: "NUL byte",
                offset: 1
            })
        );
        assert!(VmConfig::builder("/k").cmdline("tab\there").build().is_err());
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let c = VmConfig::from_json(r#"{"kernel": "/vmlinux", "vcpus": 2, "serial": {"file": "/tmp/s"}}"#)
            .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.serial, SerialOutput::File("/tmp/s".into()));
        let again = VmConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(again, c);
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "serial": "none", "boot_protocol": "pvh", "memory_backing": "memfd"}"#,
        )
        .unwrap();
        assert_eq!(c.serial, SerialOutput::None);
        assert_eq!(c.boot_protocol, BootProtocol::Pvh);
        assert_eq!(c.memory_backing, MemoryBacking::Memfd);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = VmConfig::from_json(r#"{"kernel": "/k", "vcpus": "two"}"#).unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "memory": 5}"#).unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        let e = VmConfig::from_json(r#"{"vcpus": 1}"#).unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "serial": {"file": 3}}"#).unwrap_err();
        assert!(e.to_string().contains("serial"), "{e}");
        let e = VmConfig::from_json(r#"{"kernel": "/k", "vcpus": 0}"#).unwrap_err();
        assert!(e.to_string().contains("vcpus"), "{e}");
        assert!(VmConfig::from_json("{").is_err());
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(parse_mem_available_mib(text), Some(2048));
        assert_eq!(parse_mem_available_mib("MemTotal: 1 kB\n"), None);
    }
}
