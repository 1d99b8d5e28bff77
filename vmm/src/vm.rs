//! The public handle of a running VM.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_devices::legacy::boot_timer::process_cpu_time;
use hearth_devices::legacy::BootTime;
use hearth_devices::virtio::block::BlockCounters;
use hearth_devices::virtio::net::NetCounters;

use crate::assemble::{prepare_host, Assembly};
use crate::boot::{self, BootFiles, BootSpec};
use crate::config::VmConfig;
use crate::device_manager::Devices;
use crate::error::Error;
use crate::exit::{ExitReason, RunState};
use crate::kvm::vcpu::Vcpu;
use crate::kvm::vm::KvmVm;
use crate::kvm::Host;
use crate::memory::{create_guest_memory, GuestMemoryMmap};
use crate::observe::{EventKind, IdlePolicy, Labels, MemoryUsage};
use crate::runner::Runner;
use crate::seccomp::Filter;

/// A running microVM.
///
/// `Vm` is `Send` and `Sync`; many can run in one process. Dropping it
/// stops the guest and releases every thread, file descriptor and mapping
/// it owns before `drop` returns. Its operations are those of
/// [`VmCore`], which it dereferences to.
///
/// ```no_run
/// use hearth::{Vm, VmConfig};
/// let config = VmConfig::builder("vmlinux").cmdline("console=ttyS0 reboot=k").build()?;
/// let vm = Vm::start(config)?;
/// println!("guest exited: {}", vm.wait());
/// # Ok::<(), hearth::Error>(())
/// ```
#[derive(Debug)]
pub struct Vm {
    core: Arc<VmCore>,
    /// The lifecycle thread: events, TTL and idle timeout
    /// ([`crate::observe::life`]). It holds a clone of `core`.
    life: Option<JoinHandle<()>>,
}

/// A running VM's state and operations. Reached through [`Vm`] (which
/// dereferences to it); the VM's lifecycle thread shares it too.
#[derive(Debug)]
pub struct VmCore {
    // Fields drop in order: the threads are gone (see Drop) before the
    // vCPU and VM fds close, and those close before guest memory unmaps.
    pub(crate) runner: Runner,
    pub(crate) run_state: Arc<RunState>,
    pub(crate) devices: Devices,
    /// After a restore: the thread that refreshes the guest agent. Dropped
    /// after the devices (so its connection attempt fails at once).
    pub(crate) refresh: Option<crate::agent::refresh::RefreshHook>,
    /// For a VM restored lazily from a snapshot: what a diff snapshot of it
    /// refers to.
    pub(crate) origin: Option<crate::snapshot::create::Origin>,
    /// The last guest memory sample, for [`VmCore::metrics`].
    pub(crate) memory_sample: Mutex<Option<(Instant, MemoryUsage)>>,
    pub(crate) kvm_vm: KvmVm,
    pub(crate) memory: GuestMemoryMmap,
    pub(crate) config: VmConfig,
    pub(crate) host: Arc<Host>,
    /// The CPUID table set on each vCPU.
    pub(crate) cpuids: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
}

impl std::ops::Deref for Vm {
    type Target = VmCore;
    fn deref(&self) -> &VmCore {
        &self.core
    }
}

impl Vm {
    /// Creates the VM, loads the kernel and starts the vCPUs.
    pub fn start(config: VmConfig) -> Result<Self, Error> {
        let t0 = (Instant::now(), process_cpu_time());
        // Bad paths fail before any KVM work.
        config.validate()?;
        let files = BootFiles::open(&config.kernel, config.initrd.as_deref())?;
        let host = prepare_host(&config)?;
        let memory = create_guest_memory(config.memory_mib << 20, config.memory_backing)?;
        let mut parts = Assembly::new(host, memory, &config, t0, None)?;
        let entry = boot::load(
            &parts.memory,
            files,
            &BootSpec {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                extra_cmdline: &parts.setup.cmdline_extra,
                protocol: config.boot_protocol,
                vcpus: config.vcpus,
            },
        )?;
        let vcpus = parts.create_vcpus(config.vcpus)?;
        let count = config.vcpus as u8;
        let mut cpuids = Vec::with_capacity(vcpus.len());
        for (index, vcpu) in vcpus.iter().enumerate() {
            cpuids.push(vcpu.configure(&parts.host, count)?);
            if index == 0 {
                vcpu.setup_boot_registers(&parts.memory, entry)?;
            }
        }
        let vm = Vm::from_core(parts.launch(vcpus, cpuids, config, false)?, None)?;
        log::debug!(
            "VM started in {} us ({} vCPUs, {} MiB)",
            t0.0.elapsed().as_micros(),
            vm.config.vcpus,
            vm.config.memory_mib
        );
        Ok(vm)
    }

    /// Wraps a launched VM: starts its lifecycle thread and reports it
    /// created (then `how`: restored or forked).
    pub(crate) fn from_core(core: VmCore, how: Option<EventKind>) -> Result<Self, Error> {
        let core = Arc::new(core);
        let obs = &core.run_state.obs;
        if core.runner.is_paused() {
            obs.mark_paused();
        }
        obs.emit(EventKind::Created {
            vcpus: core.config.vcpus,
            memory_mib: core.config.memory_mib,
        });
        if let Some(how) = how {
            obs.emit(how);
        }
        let life = crate::observe::life::spawn(core.clone())?;
        Ok(Self {
            core,
            life: Some(life),
        })
    }
}

impl VmCore {
    /// Starts the vCPU threads; with `paused` they park before running
    /// guest code and the event loop is parked too.
    pub(crate) fn spawn_vcpus(
        &mut self,
        vcpus: Vec<Vcpu>,
        paused: bool,
        filter: Filter,
    ) -> Result<(), Error> {
        for vcpu in vcpus {
            // On failure, `self` drops in the caller and stops what runs.
            let handle = vcpu
                .spawn(paused, filter)
                .map_err(|source| Error::Thread { what: "vCPU", source })?;
            self.runner.push_vcpu(handle);
        }
        if paused {
            self.runner.adopt_spawned_paused()?;
        }
        Ok(())
    }

    /// Blocks until the VM exits, and returns why.
    pub fn wait(&self) -> ExitReason {
        self.run_state
            .wait_exit(None)
            .unwrap_or_else(|| ExitReason::Error("exit state lost".into()))
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        self.run_state.wait_exit(Some(timeout))
    }

    /// The exit reason if the VM has exited, without blocking.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.run_state.exit_reason()
    }

    /// Stops the guest and returns the exit reason, which is
    /// [`ExitReason::Stopped`] unless the guest had already exited.
    pub fn stop(&self) -> ExitReason {
        self.end(ExitReason::Stopped)
    }

    /// Stops every vCPU at an instruction boundary (any exit in flight has
    /// completed) and parks device processing. All or nothing: if any part
    /// does not answer in time, every part runs again and the error says
    /// which. Idempotent.
    pub fn pause(&self) -> Result<(), Error> {
        self.pause_by("api")
    }

    /// [`pause`](Self::pause), with the reason its event gives.
    pub(crate) fn pause_by(&self, by: &str) -> Result<(), Error> {
        self.runner.pause()?;
        let obs = &self.run_state.obs;
        if obs.mark_paused() {
            obs.emit(EventKind::Paused { by: by.to_string() });
        }
        Ok(())
    }

    /// Lets a paused VM run again. Idempotent.
    pub fn resume(&self) -> Result<(), Error> {
        self.runner.resume()?;
        let obs = &self.run_state.obs;
        if let Some(d) = obs.mark_resumed() {
            obs.emit(EventKind::Resumed {
                paused_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }

    /// Ends the VM with `reason` (unless it already ended).
    pub(crate) fn end(&self, reason: ExitReason) -> ExitReason {
        self.run_state.request_exit(reason);
        self.runner.stop();
        self.wait()
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.runner.is_paused()
    }

    /// When the guest wrote its boot-ready marker (see
    /// [`BOOT_TIMER_PORT`](hearth_devices::legacy::BOOT_TIMER_PORT)), measured
    /// from the start of [`Vm::start`].
    pub fn boot_time(&self) -> Option<BootTime> {
        self.devices.boot_timer.boot_time()
    }

    /// Blocks until the guest is ready (boot marker), the VM exits, or
    /// `timeout` passes; returns the boot time if the marker came.
    pub fn wait_boot(&self, timeout: Option<Duration>) -> Option<BootTime> {
        self.run_state.wait_boot(timeout)
    }

    /// Counters of each disk, in config order.
    pub fn disk_counters(&self) -> Vec<BlockCounters> {
        self.devices.virtio.disk_counters()
    }

    /// Counters of each network interface, in config order.
    pub fn net_counters(&self) -> Vec<NetCounters> {
        self.devices.virtio.net_counters()
    }

    /// Queues bytes on the guest's serial input; returns how many fitted.
    pub fn send_serial_input(&self, bytes: &[u8]) -> usize {
        self.devices.serial.enqueue_input(bytes)
    }

    /// A file descriptor (an eventfd) that becomes readable when the VM
    /// exits, for callers that poll rather than block. It stays valid
    /// while the `Vm` lives; do not close it.
    pub fn exit_fd(&self) -> RawFd {
        self.run_state.exit_evt().as_raw_fd()
    }

    /// The VM generation the guest sees on its generation ports: new at
    /// every boot, restore and fork (docs/AGENT.md).
    pub fn generation(&self) -> u64 {
        self.devices.generation.generation()
    }

    /// The configuration this VM runs with (after restore overrides).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The VM's id: [`VmConfig::id`], or the one Hearth made at start.
    pub fn id(&self) -> &str {
        &self.run_state.obs.id
    }

    /// The VM's labels, as on its events.
    pub fn labels(&self) -> &Labels {
        &self.run_state.obs.labels
    }

    /// Sets the time to live from now (`None`: none). When it runs out the
    /// VM stops with [`ExitReason::TtlExpired`].
    pub fn set_ttl(&self, ttl: Option<Duration>) {
        self.run_state.obs.set_ttl(ttl);
    }

    /// The time to live left, if the VM has one.
    pub fn ttl_remaining(&self) -> Option<Duration> {
        self.run_state.obs.ttl_remaining()
    }

    /// After the VM exited: waits up to `timeout` until its events, the
    /// `exited` event last, have been delivered to the sink. True if they
    /// were (or the VM has no sink). Do not call it from the sink.
    pub fn flush_events(&self, timeout: Duration) -> bool {
        let obs = &self.run_state.obs;
        if obs.sink.is_none() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let mut life = obs.life();
        while !life.drained {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            life = obs
                .wake
                .wait_timeout(life, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Sets or clears the idle policy; idleness is measured from now.
    pub fn set_idle_timeout(&self, policy: Option<IdlePolicy>) {
        self.run_state.obs.set_idle(policy);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let t = Instant::now();
        if self.run_state.exit_reason().is_none() {
            self.stop();
        }
        // The lifecycle thread reports the exit, delivers what is queued
        // and ends; then this is the only handle on the core.
        self.run_state.obs.update(|l| l.shutdown = true);
        if let Some(life) = self.life.take() {
            if life.join().is_err() {
                log::error!("the lifecycle thread panicked");
            }
        }
        match Arc::get_mut(&mut self.core) {
            Some(core) => core.runner.join(),
            None => log::error!("VM core still shared at drop: its threads are left to end on their own"),
        }
        self.devices.serial.flush();
        log::debug!("VM threads stopped in {} us", t.elapsed().as_micros());
    }
}
