//! The public handle of a running VM.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_devices::legacy::boot_timer::process_cpu_time;
use hearth_devices::legacy::BootTime;
use hearth_devices::virtio::block::BlockCounters;

use crate::agent::{self, AgentClient, AgentError, ExecOutput, DEFAULT_AGENT_PORT};
use crate::boot::{self, BootFiles, BootSpec};
use crate::config::{check_host_memory, VmConfig};
use crate::device_manager::{self, Devices};
use crate::error::Error;
use crate::event_loop::EventLoop;
use crate::exit::{ExitReason, RunState};
use crate::kvm::vcpu::{Vcpu, VcpuHandle, VcpuRequest, VcpuResponse};
use crate::kvm::vm::KvmVm;
use crate::kvm::{self, kick, KvmError};
use crate::memory::{create_guest_memory, GuestMemoryMmap};
use crate::vsock::{self, VsockConnectError};

/// A running microVM.
///
/// `Vm` is `Send` and `Sync`; many can run in one process. Dropping it
/// stops the guest and releases every thread, file descriptor and mapping
/// it owns before `drop` returns.
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
    // Fields drop in order: the threads are gone (see Drop) before the
    // vCPU and VM fds close, and those close before guest memory unmaps.
    vcpus: Vec<VcpuHandle>,
    event_loop: Option<EventLoop>,
    run_state: Arc<RunState>,
    devices: Devices,
    kvm_vm: KvmVm,
    memory: GuestMemoryMmap,
    config: VmConfig,
    /// Serialises pause/resume; true while paused.
    paused: Mutex<bool>,
}

/// How long a vCPU may take to answer a pause or resume.
const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl Vm {
    /// Creates the VM, loads the kernel and starts the vCPUs.
    pub fn start(config: VmConfig) -> Result<Self, Error> {
        let t0 = (Instant::now(), process_cpu_time());
        config.validate()?;
        let files = BootFiles::open(&config.kernel, config.initrd.as_deref())?;
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

        let memory = create_guest_memory(config.memory_mib << 20, config.memory_backing)?;
        let kvm_vm = KvmVm::new(&host)?;
        // Memslots before the irqchip: see KvmVm::register_memory.
        kvm_vm.register_memory(&memory)?;
        kvm_vm.setup_irqchip(config.pit)?;
        let run_state = Arc::new(RunState::new().map_err(|source| Error::Setup {
            what: "the exit eventfd",
            source,
        })?);

        let setup = device_manager::setup(&kvm_vm, &memory, &config, &run_state, t0)?;
        let entry = boot::load(
            &memory,
            files,
            &BootSpec {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
                extra_cmdline: &setup.cmdline_extra,
                protocol: config.boot_protocol,
                vcpus: config.vcpus,
            },
        )?;

        let io = Arc::new(setup.io);
        let count = config.vcpus as u8;
        let mut pending = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let vcpu = Vcpu::new(&kvm_vm, index, io.clone(), run_state.clone())?;
            vcpu.configure(&host, count)?;
            if index == 0 {
                vcpu.setup_boot_registers(&memory, entry)?;
            }
            pending.push(vcpu);
        }

        let event_loop = if setup.subscribers.is_empty() {
            None
        } else {
            Some(
                EventLoop::start(setup.subscribers).map_err(|source| Error::Thread {
                    what: "event loop",
                    source,
                })?,
            )
        };

        let mut vm = Self {
            vcpus: Vec::with_capacity(pending.len()),
            event_loop,
            run_state,
            devices: setup.devices,
            kvm_vm,
            memory,
            config,
            paused: Mutex::new(false),
        };
        for vcpu in pending {
            // On failure, `vm` drops here and stops what already runs.
            let handle = vcpu
                .spawn()
                .map_err(|source| Error::Thread { what: "vCPU", source })?;
            vm.vcpus.push(handle);
        }
        log::debug!(
            "VM started in {} us ({} vCPUs, {} MiB)",
            t0.0.elapsed().as_micros(),
            vm.config.vcpus,
            vm.config.memory_mib
        );
        Ok(vm)
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
        self.run_state.request_exit(ExitReason::Stopped);
        for vcpu in &self.vcpus {
            // Wakes a paused vCPU; a running one is kicked by request_exit.
            vcpu.send(VcpuRequest::Finish);
        }
        self.run_state.kick_all();
        self.wait()
    }

    /// Stops every vCPU at an instruction boundary (any exit in flight has
    /// completed). Idempotent.
    pub fn pause(&self) -> Result<(), Error> {
        self.transition(true)
    }

    /// Lets paused vCPUs run again. Idempotent.
    pub fn resume(&self) -> Result<(), Error> {
        self.transition(false)
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, pause: bool) -> Result<(), Error> {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if *paused == pause {
            return Ok(());
        }
        if let Some(reason) = self.run_state.exit_reason() {
            return Err(Error::NotRunning(reason));
        }
        let (name, expected) = if pause {
            ("pause", VcpuResponse::Paused)
        } else {
            ("resume", VcpuResponse::Resumed)
        };
        for vcpu in &self.vcpus {
            vcpu.send(if pause {
                VcpuRequest::Pause
            } else {
                VcpuRequest::Resume
            });
        }
        if pause {
            self.run_state.kick_all();
        }
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            match vcpu.recv(VCPU_ANSWER_TIMEOUT) {
                Some(r) if r == expected => {}
                Some(VcpuResponse::Exited) => {
                    return Err(Error::NotRunning(
                        self.run_state.exit_reason().unwrap_or(ExitReason::Stopped),
                    ))
                }
                _ => return Err(Error::VcpuUnresponsive { index, request: name }),
            }
        }
        *paused = pause;
        Ok(())
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
        self.devices.disks.iter().map(|m| m.snapshot()).collect()
    }

    /// Connects to guest vsock port `port` (host-initiated), returning the
    /// byte stream. Uses the VM's Unix socket, like any external client.
    pub fn vsock_connect(&self, port: u32) -> Result<UnixStream, VsockConnectError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        vsock::connect(&v.uds_path, port)
    }

    /// Accepts guest connections to host port `port` (the guest connects
    /// to CID 2, port `port`). The listener lives at `<uds_path>_<port>`.
    pub fn vsock_listen(&self, port: u32) -> Result<UnixListener, VsockConnectError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        vsock::listen(&v.uds_path, port).map_err(|source| VsockConnectError::Socket {
            path: v.uds_path.clone(),
            source,
        })
    }

    /// A client for the guest agent on its default vsock port.
    pub fn agent(&self) -> Result<AgentClient, VsockConnectError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        Ok(AgentClient::new(&v.uds_path, DEFAULT_AGENT_PORT))
    }

    /// Runs a command in the guest through its agent (e.g.
    /// `vm.exec(&["uname", "-a"])`).
    pub fn exec<S: AsRef<str>>(&self, argv: &[S]) -> Result<ExecOutput, AgentError> {
        self.agent()?.exec(&agent::command(argv))
    }

    /// Writes a file in the guest through its agent.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), AgentError> {
        self.agent()?.write_file(path, data, mode)
    }

    /// Reads a file from the guest through its agent.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        self.agent()?.read_file(path)
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

    /// The configuration this VM was started with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    #[allow(dead_code)]
    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    #[allow(dead_code)]
    pub(crate) fn kvm_vm(&self) -> &KvmVm {
        &self.kvm_vm
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let t = Instant::now();
        if self.run_state.exit_reason().is_none() {
            self.stop();
        }
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Finish);
        }
        self.run_state.kick_all();
        // From here on no thread is kicked, so joining is safe.
        self.run_state.close_kick_list();
        for vcpu in &mut self.vcpus {
            if let Err(e) = vcpu.join() {
                log::error!("{e}");
            }
        }
        self.vcpus.clear();
        if let Some(mut event_loop) = self.event_loop.take() {
            event_loop.stop();
        }
        self.devices.serial.flush();
        log::debug!("VM threads stopped in {} us", t.elapsed().as_micros());
    }
}
