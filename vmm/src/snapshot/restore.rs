//! Restoring a VM from a snapshot, with per-VM overrides of external
//! resources so that many clones can run from one snapshot.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_devices::legacy::boot_timer::process_cpu_time;
use kvm_ioctls::Cap;

use super::create::Origin;
use super::state::ParentRef;
use super::{cpu_check, memory, mtime_ns, MemorySource, RestoreMemory, Snapshot, SnapshotError, MEMORY_FILE};
use crate::agent::refresh::RefreshHook;
use crate::agent::DEFAULT_AGENT_PORT;
use crate::assemble::{prepare_host, Assembly};
use crate::config::{validate_deadlines, validate_identity, DiskConfig, NetConfig, SerialOutput};
use crate::error::Error;
use crate::kvm::vm_state;
use crate::observe::{EventKind, EventSink, IdlePolicy, Labels};
use crate::seccomp::SeccompMode;
use crate::vm::Vm;

/// How to restore: memory mode, and replacements for the resources the
/// snapshot recorded by name.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Map memory lazily (default) or load it eagerly.
    pub memory: RestoreMemory,
    /// Leave the VM paused (call [`Vm::resume`]).
    pub paused: bool,
    /// Serial output (default: what the snapshot recorded, or none).
    pub serial: Option<SerialOutput>,
    /// A different vsock socket path (each clone needs its own).
    pub vsock_uds_path: Option<PathBuf>,
    /// Replacement disks by index.
    pub disks: BTreeMap<usize, DiskConfig>,
    /// Replacement network interfaces by index (e.g. another TAP).
    pub nets: BTreeMap<usize, NetConfig>,
    /// seccomp mode (default: what the snapshot recorded).
    pub seccomp: Option<SeccompMode>,
    /// Do not send the guest agent REFRESH after the restore (by default
    /// a VM with vsock gets it, so its agent reseeds the guest's RNG and
    /// sets its clock at once; docs/AGENT.md).
    pub skip_agent_refresh: bool,
    /// The agent's vsock port (default 52).
    pub agent_port: Option<u32>,
    /// A new copy-on-write overlay for disk `index`, on the snapshot's
    /// saved disk state (each clone of a snapshot with overlay disks needs
    /// its own).
    pub disk_overlays: BTreeMap<usize, PathBuf>,
    /// A new id (default: the snapshotted VM's, so that a VM suspended and
    /// resumed stays one VM; give each clone its own).
    pub id: Option<String>,
    /// Labels added to (or replacing same-key) ones the snapshot recorded.
    pub labels: Labels,
    /// Where the restored VM's events go (a snapshot does not keep the
    /// sink).
    pub events: Option<EventSink>,
    /// A new time to live from the restore (default: what was left at the
    /// snapshot).
    pub ttl: Option<Duration>,
    /// A new idle policy (default: the snapshot's).
    pub idle: Option<IdlePolicy>,
    /// Set by fork: the parent's id and the child's index, for the
    /// `forked` event.
    pub(crate) fork_of: Option<(String, usize)>,
}

impl RestoreOptions {
    /// Defaults: lazy memory, running, resources as recorded.
    pub fn new() -> Self {
        Self::default()
    }
    /// Memory mode.
    pub fn memory(mut self, m: RestoreMemory) -> Self {
        self.memory = m;
        self
    }
    /// Start paused.
    pub fn paused(mut self, p: bool) -> Self {
        self.paused = p;
        self
    }
    /// Serial output.
    pub fn serial(mut self, s: SerialOutput) -> Self {
        self.serial = Some(s);
        self
    }
    /// seccomp mode for the restored VM's threads.
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = Some(mode);
        self
    }
    /// vsock socket path.
    pub fn vsock_uds_path(mut self, p: impl Into<PathBuf>) -> Self {
        self.vsock_uds_path = Some(p.into());
        self
    }
    /// Replaces network interface `index`.
    pub fn net(mut self, index: usize, net: NetConfig) -> Self {
        self.nets.insert(index, net);
        self
    }
    /// Replaces disk `index`.
    pub fn disk(mut self, index: usize, disk: DiskConfig) -> Self {
        self.disks.insert(index, disk);
        self
    }
    /// Puts disk `index`'s writes in a new overlay at `path`, on the
    /// snapshot's disk state.
    pub fn disk_overlay(mut self, index: usize, path: impl Into<PathBuf>) -> Self {
        self.disk_overlays.insert(index, path.into());
        self
    }
    /// The restored VM's id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Adds or replaces a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// Where events go.
    pub fn events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }
    /// A new time to live, from the restore.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// A new idle policy.
    pub fn idle_timeout(mut self, policy: IdlePolicy) -> Self {
        self.idle = Some(policy);
        self
    }
    /// Whether to skip the agent refresh after the restore.
    pub fn skip_agent_refresh(mut self, skip: bool) -> Self {
        self.skip_agent_refresh = skip;
        self
    }
    /// The guest agent's vsock port.
    pub fn agent_port(mut self, port: u32) -> Self {
        self.agent_port = Some(port);
        self
    }
}

impl Snapshot {
    /// Starts a VM from this snapshot.
    pub fn restore(&self, options: &RestoreOptions) -> Result<Vm, Error> {
        let t0 = (Instant::now(), process_cpu_time());
        let state = &self.state;
        let mut config = state.config.clone();
        if let Some(s) = &options.serial {
            config.serial = s.clone();
        }
        if let Some(mode) = options.seccomp {
            config.seccomp = mode;
        }
        if let Some(id) = &options.id {
            config.id = Some(id.clone());
        }
        let from_vm = state.config.id.clone();
        config.labels.extend(options.labels.clone());
        if let Some(sink) = &options.events {
            config.events = Some(sink.clone());
        }
        if let Some(ttl) = options.ttl {
            config.ttl = Some(ttl);
        }
        if let Some(idle) = &options.idle {
            config.idle = Some(idle.clone());
        }
        validate_identity(config.id.as_deref(), &config.labels)?;
        validate_deadlines(config.ttl, config.idle.as_ref())?;
        if let (Some(path), Some(v)) = (&options.vsock_uds_path, config.vsock.as_mut()) {
            v.uds_path = path.clone();
        }
        for (&index, disk) in &options.disks {
            let count = config.disks.len();
            let slot = config.disks.get_mut(index).ok_or(Error::NoSuchDevice {
                kind: "disk",
                index,
                count,
            })?;
            let mut disk = disk.clone();
            // `--disk 0=BASE,overlay=NEW`: a new overlay on the snapshot's
            // frozen layers of the same base.
            if disk.layers.is_empty() && disk.path == slot.path && disk.overlay.is_some() {
                disk.layers = slot.layers.clone();
            }
            *slot = disk;
        }
        for (&index, overlay) in &options.disk_overlays {
            let count = config.disks.len();
            let slot = config.disks.get_mut(index).ok_or(Error::NoSuchDevice {
                kind: "disk",
                index,
                count,
            })?;
            slot.overlay = Some(overlay.clone());
        }
        for (&index, net) in &options.nets {
            let count = config.nets.len();
            let slot = config.nets.get_mut(index).ok_or(Error::NoSuchDevice {
                kind: "net",
                index,
                count,
            })?;
            *slot = net.clone();
        }
        let host = prepare_host(&config)?;
        for vcpu in &state.vcpus {
            if let Some(gap) = cpu_check::missing_features(host.cpuid.as_slice(), &vcpu.cpuid) {
                return Err(SnapshotError::CpuFeatures(gap).into());
            }
        }
        let memory = match &self.memory {
            MemorySource::Files(layers) => memory::load_chain(layers, state.memory_bytes, options.memory),
            MemorySource::Memfd(file) => memory::load_file(file, state.memory_bytes, options.memory),
        }
        .map_err(SnapshotError::Memory)?;
        let mut parts = Assembly::new(host, memory, &config, t0, Some(&state.devices))?;
        let vcpus = parts.create_vcpus(config.vcpus)?;
        let xsave_size = parts.kvm_vm.fd().check_extension_int(Cap::Xsave2).max(0) as usize;
        for (index, (vcpu, saved)) in vcpus.iter().zip(&state.vcpus).enumerate() {
            vcpu.restore_state(saved, xsave_size)
                .map_err(|source| SnapshotError::Vcpu { index, source })?;
        }
        vm_state::restore(parts.kvm_vm.fd(), &state.vm).map_err(SnapshotError::VmState)?;
        let cpuids = state.vcpus.iter().map(|v| v.cpuid.clone()).collect();
        let mut vm = parts.launch(vcpus, cpuids, config, options.paused)?;
        let how = match &options.fork_of {
            Some((parent, child)) => EventKind::Forked {
                parent: parent.clone(),
                child: *child,
            },
            None => EventKind::Restored {
                snapshot: Some(self.dir().to_path_buf()),
                from_vm,
                ms: t0.0.elapsed().as_secs_f64() * 1e3,
            },
        };
        // A lazily mapped VM knows which pages it writes from here on: a
        // snapshot of it can be a diff of this one.
        if let (MemorySource::Files(_), RestoreMemory::Lazy) = (&self.memory, options.memory) {
            vm.origin = self.origin();
        }
        log::debug!("VM restored in {} us", t0.0.elapsed().as_micros());
        if let (Some(v), false) = (&vm.config.vsock, options.skip_agent_refresh) {
            let port = options.agent_port.unwrap_or(DEFAULT_AGENT_PORT);
            match RefreshHook::start(v.uds_path.clone(), port, t0.0) {
                Ok(hook) => vm.refresh = Some(hook),
                Err(e) => log::warn!("cannot start the agent refresh thread: {e}"),
            }
        }
        Vm::from_core(vm, Some(how))
    }
}

impl Snapshot {
    /// What a diff snapshot of a VM restored from this one refers to.
    fn origin(&self) -> Option<Origin> {
        let dir = std::fs::canonicalize(self.dir()).ok()?;
        let meta = std::fs::metadata(dir.join(MEMORY_FILE)).ok()?;
        Some(Origin {
            parent: ParentRef {
                dir,
                id: self.state.id,
                memory_size: meta.len(),
                memory_mtime_ns: mtime_ns(&meta),
            },
            depth: self.state.diff.as_ref().map_or(0, |d| d.depth),
        })
    }
}

impl Vm {
    /// Opens the snapshot in `dir` and starts a VM from it. To restore
    /// many clones, open it once with [`Snapshot::open`] instead.
    pub fn restore(dir: impl AsRef<std::path::Path>, options: &RestoreOptions) -> Result<Vm, Error> {
        Snapshot::open(dir)?.restore(options)
    }
}
