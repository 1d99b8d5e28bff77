//! The steps that booting and restoring share: create the VM around its
//! memory, build the devices, then start the event loop and the vCPUs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{check_host_memory, VmConfig};
use crate::device_manager::{self, DeviceSetup};
use crate::error::Error;
use crate::event_loop::EventLoop;
use crate::exit::RunState;
use crate::kvm::vcpu::Vcpu;
use crate::kvm::vm::KvmVm;
use crate::kvm::{self, kick, Host, KvmError};
use crate::memory::GuestMemoryMmap;
use crate::observe::observer::{Identity, Observer};
use crate::runner::Runner;
use crate::seccomp::{Filter, ThreadKind};
use crate::snapshot::state::DevicesState;
use crate::vm::VmCore;

/// Checks the host can run `config`, and returns its KVM capabilities.
pub(crate) fn prepare_host(config: &VmConfig) -> Result<Arc<Host>, Error> {
    config.validate()?;
    check_host_memory(config.memory_mib)?;
    let host = kvm::host()?;
    if config.vcpus as usize > host.max_vcpus {
        return Err(KvmError::TooManyVcpus {
            requested: config.vcpus,
            max: host.max_vcpus,
        }
        .into());
    }
    kick::install_handler().map_err(|source| Error::Setup {
        what: "the vCPU kick signal handler",
        source,
    })?;
    Ok(host)
}

/// A VM with its memory, interrupt controller and devices, not running.
pub(crate) struct Assembly {
    pub host: Arc<Host>,
    pub memory: GuestMemoryMmap,
    pub kvm_vm: KvmVm,
    pub run_state: Arc<RunState>,
    pub setup: DeviceSetup,
}

impl Assembly {
    /// Creates the VM around `memory` and builds the devices (restoring
    /// their saved state if given).
    pub fn new(
        host: Arc<Host>,
        memory: GuestMemoryMmap,
        config: &VmConfig,
        start: (Instant, Duration),
        saved: Option<&DevicesState>,
    ) -> Result<Self, Error> {
        let kvm_vm = KvmVm::new(&host)?;
        // Memslots before the irqchip: see KvmVm::register_memory.
        kvm_vm.register_memory(&memory)?;
        kvm_vm.setup_irqchip(config.pit)?;
        // Opened now, before any seccomp filter or jail hides /proc.
        let _ = crate::pagemap::pagemap();
        let obs = Observer::new(Identity::of(config), config.vcpus as usize);
        let run_state = Arc::new(RunState::new(obs).map_err(|source| Error::Setup {
            what: "the exit eventfd",
            source,
        })?);
        let setup = device_manager::setup(&kvm_vm, &memory, config, &run_state, start, saved)?;
        Ok(Self {
            host,
            memory,
            kvm_vm,
            run_state,
            setup,
        })
    }

    /// Creates the vCPUs (not yet configured). The device buses move into
    /// them, so devices are complete by now.
    pub fn create_vcpus(&mut self, count: u32) -> Result<Vec<Vcpu>, Error> {
        let io = Arc::new(std::mem::take(&mut self.setup.io));
        let vcpus = (0..count as u8)
            .map(|i| Vcpu::new(&self.kvm_vm, i, io.clone(), self.run_state.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vcpus)
    }

    /// Starts the event loop and the vCPU threads (parked if `paused`).
    pub fn launch(
        self,
        vcpus: Vec<Vcpu>,
        cpuids: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
        config: VmConfig,
        paused: bool,
    ) -> Result<VmCore, Error> {
        let DeviceSetup {
            devices, subscribers, ..
        } = self.setup;
        let event_loop = if subscribers.is_empty() {
            None
        } else {
            let filter = Filter::new(ThreadKind::EventLoop, config.seccomp)?;
            Some(
                EventLoop::start(subscribers, filter, self.run_state.obs.threads.clone()).map_err(
                    |source| Error::Thread {
                        what: "event loop",
                        source,
                    },
                )?,
            )
        };
        let mut vm = VmCore {
            runner: Runner::new(event_loop, self.run_state.clone()),
            run_state: self.run_state,
            devices,
            refresh: None,
            origin: None,
            memory_sample: std::sync::Mutex::new(None),
            kvm_vm: self.kvm_vm,
            memory: self.memory,
            config,
            host: self.host,
            cpuids,
        };
        let filter = Filter::new(ThreadKind::Vcpu, vm.config.seccomp)?;
        vm.spawn_vcpus(vcpus, paused, filter)?;
        Ok(vm)
    }
}
