//! vCPUs: configuration, the `KVM_RUN` loop on a thread of its own, and
//! control through a request channel plus a kick.

use std::io;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use hearth_devices::bus::Bus;
use kvm_bindings::{Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::seccomp::Filter;

use super::emulation::{self, Outcome};
use super::vm::KvmVm;
use super::{kick, Host, KvmError};
use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::regs::{boot_fpu, boot_regs, setup_sregs, EntryPoint, WriteError};
use crate::arch::x86_64::{lapic, msr};
use crate::exit::{ExitReason, RunState};
use crate::memory::GuestMemoryMmap;
use crate::observe::exits::{ExitCounters, ExitKind};

/// The PIO and MMIO buses every vCPU dispatches exits through. Immutable
/// once the vCPUs run: lookups take no lock.
#[derive(Debug, Default)]
pub(crate) struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// Asks a vCPU thread to do something. Requests are served when the
/// thread is out of `KVM_RUN`, which a kick forces. Pause and resume carry
/// a sequence number that the answer repeats, so that the answer to a
/// request given up on (a rolled-back pause) is never taken for the answer
/// to a later one.
pub(crate) enum VcpuRequest {
    Pause(u64),
    Resume(u64),
    Finish,
    /// Run a closure on the vCPU thread with its fd (used to save state).
    With(Box<dyn FnOnce(&mut VcpuFd) + Send>),
}

/// What a vCPU thread reports back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VcpuResponse {
    Paused(u64),
    Resumed(u64),
    Exited,
}

/// The sequence number of the pause a vCPU spawned paused answers.
pub(crate) const SPAWN_PAUSE_SEQ: u64 = 0;

/// A vCPU before its thread starts.
pub(crate) struct Vcpu {
    index: u8,
    fd: VcpuFd,
    io: Arc<IoBuses>,
    run_state: Arc<RunState>,
}

/// Errors setting a vCPU up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM_SET_MSRS set {set} of {wanted} boot MSRs")]
    Msrs {
        /// MSRs set.
        set: usize,
        /// MSRs given.
        wanted: usize,
    },
    /// Boot structures did not fit in guest memory.
    #[error(transparent)]
    Write(#[from] WriteError),
}

enum Action {
    Continue,
    InternalError,
    Exit(ExitReason),
}

impl Vcpu {
    pub fn new(vm: &KvmVm, index: u8, io: Arc<IoBuses>, run_state: Arc<RunState>) -> Result<Self, KvmError> {
        Ok(Self {
            index,
            fd: vm.create_vcpu(u64::from(index))?,
            io,
            run_state,
        })
    }

    /// CPUID, MSRs, FPU and LAPIC, for any vCPU of `count`. Returns the
    /// CPUID table it set (snapshots save it).
    pub fn configure(
        &self,
        host: &Host,
        count: u8,
    ) -> Result<Vec<kvm_bindings::kvm_cpuid_entry2>, VcpuError> {
        let mut cpuid = host.cpuid.clone();
        cpuid::normalize(
            cpuid.as_mut_slice(),
            VcpuTopology {
                id: self.index,
                count,
            },
            host.tsc_deadline,
        );
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;

        let entries = msr::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs {
            set: 0,
            wanted: entries.len(),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(KvmError::ioctl("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::Msrs {
                set,
                wanted: entries.len(),
            });
        }
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(KvmError::ioctl("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(KvmError::ioctl("KVM_GET_LAPIC"))?;
        lapic::set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(KvmError::ioctl("KVM_SET_LAPIC"))?;
        Ok(cpuid.as_slice().to_vec())
    }

    /// Points the boot vCPU at the kernel entry. Application processors
    /// keep their reset state and wait for INIT/SIPI.
    pub fn setup_boot_registers(&self, mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<(), VcpuError> {
        let mut sregs = self.fd.get_sregs().map_err(KvmError::ioctl("KVM_GET_SREGS"))?;
        setup_sregs(mem, entry, &mut sregs)?;
        self.fd
            .set_sregs(&sregs)
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&boot_regs(entry))
            .map_err(KvmError::ioctl("KVM_SET_REGS"))?;
        Ok(())
    }

    /// Restores saved state (instead of `configure` and boot registers);
    /// `xsave_size` is the VM's KVM_CAP_XSAVE2 size.
    pub fn restore_state(
        &self,
        state: &super::vcpu_state::VcpuState,
        xsave_size: usize,
    ) -> Result<(), KvmError> {
        super::vcpu_state::restore(&self.fd, state, xsave_size)
    }

    /// Starts the vCPU thread; with `paused` it parks (and says so)
    /// before running any guest code.
    pub fn spawn(self, paused: bool, filter: Filter) -> io::Result<VcpuHandle> {
        let (req_tx, req_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let run_state = self.run_state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("hearth-vcpu{}", self.index))
            .spawn(move || self.run(req_rx, resp_tx, paused, filter))?;
        if !run_state.add_kick_target(thread.as_pthread_t() as libc::pthread_t) {
            // Teardown already began; the thread sees `stopping` and ends.
            log::debug!("vCPU spawned during teardown");
        }
        Ok(VcpuHandle {
            thread: Some(thread),
            requests: req_tx,
            responses: Mutex::new(resp_rx),
        })
    }

    fn run(
        mut self,
        requests: Receiver<VcpuRequest>,
        responses: Sender<VcpuResponse>,
        paused: bool,
        filter: Filter,
    ) -> VcpuFd {
        kick::bind(self.fd.get_kvm_run());
        let threads = self.run_state.obs.threads.clone();
        threads.register_current(&format!("vcpu{}", self.index));
        let fd = self.run_filtered(requests, responses, paused, filter);
        threads.finish();
        fd
    }

    fn run_filtered(
        mut self,
        requests: Receiver<VcpuRequest>,
        responses: Sender<VcpuResponse>,
        paused: bool,
        filter: Filter,
    ) -> VcpuFd {
        if let Err(e) = filter.install() {
            self.run_state
                .request_exit(ExitReason::Error(format!("vCPU {}: {e}", self.index)));
            kick::unbind();
            let _ = responses.send(VcpuResponse::Exited);
            return self.fd;
        }
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::on_vcpu_start();
        if paused {
            let _ = responses.send(VcpuResponse::Paused(SPAWN_PAUSE_SEQ));
            if !self.stay_paused(&requests, &responses) {
                kick::unbind();
                let _ = responses.send(VcpuResponse::Exited);
                return self.fd;
            }
        }
        let run_state = self.run_state.clone();
        let exits = run_state.obs.exits.get(usize::from(self.index));
        while !self.run_state.is_stopping() {
            let action = match self.fd.run() {
                Ok(exit) => dispatch(&self.io, self.index, exit, exits),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if let Some(c) = exits {
                        c.count(ExitKind::Interrupted);
                    }
                    self.fd.set_kvm_immediate_exit(0);
                    if self.serve_requests(&requests, &responses) {
                        Action::Continue
                    } else {
                        break;
                    }
                }
                Err(e) => Action::Exit(ExitReason::Error(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.index
                ))),
            };
            match action {
                Action::Continue => {}
                Action::InternalError => match emulation::handle_internal_error(&mut self.fd) {
                    Outcome::Skipped(name) => log::trace!("vCPU {}: stepped over {name}", self.index),
                    Outcome::Fatal(why) => {
                        self.run_state
                            .request_exit(ExitReason::Crash(format!("vCPU {}: {why}", self.index)));
                        break;
                    }
                },
                Action::Exit(reason) => {
                    self.run_state.request_exit(reason);
                    break;
                }
            }
        }
        kick::unbind();
        let _ = responses.send(VcpuResponse::Exited);
        self.fd
    }

    /// Serves pending requests; false means the thread must end.
    fn serve_requests(&mut self, rx: &Receiver<VcpuRequest>, tx: &Sender<VcpuResponse>) -> bool {
        while let Ok(request) = rx.try_recv() {
            match request {
                VcpuRequest::Pause(seq) => {
                    #[cfg(feature = "test-hooks")]
                    crate::test_hooks::before_vcpu_pause(self.index);
                    let _ = tx.send(VcpuResponse::Paused(seq));
                    if !self.stay_paused(rx, tx) {
                        return false;
                    }
                }
                // Running already (a rolled-back pause that never parked).
                VcpuRequest::Resume(seq) => {
                    let _ = tx.send(VcpuResponse::Resumed(seq));
                }
                VcpuRequest::Finish => return false,
                VcpuRequest::With(f) => f(&mut self.fd),
            }
        }
        true
    }

    fn stay_paused(&mut self, rx: &Receiver<VcpuRequest>, tx: &Sender<VcpuResponse>) -> bool {
        loop {
            match rx.recv() {
                Ok(VcpuRequest::Resume(seq)) => {
                    let _ = tx.send(VcpuResponse::Resumed(seq));
                    return true;
                }
                Ok(VcpuRequest::Pause(seq)) => {
                    let _ = tx.send(VcpuResponse::Paused(seq));
                }
                Ok(VcpuRequest::With(f)) => f(&mut self.fd),
                Ok(VcpuRequest::Finish) | Err(_) => return false,
            }
        }
    }
}

fn exit_kind(exit: &VcpuExit) -> ExitKind {
    match exit {
        VcpuExit::IoIn(..) => ExitKind::IoIn,
        VcpuExit::IoOut(..) => ExitKind::IoOut,
        VcpuExit::MmioRead(..) => ExitKind::MmioRead,
        VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
        VcpuExit::Intr => ExitKind::Interrupted,
        VcpuExit::InternalError => ExitKind::Emulated,
        _ => ExitKind::Other,
    }
}

fn dispatch(io: &IoBuses, index: u8, exit: VcpuExit, exits: Option<&ExitCounters>) -> Action {
    if let Some(c) = exits {
        c.count(exit_kind(&exit));
    }
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => {
            io.pio.write(u64::from(port), data);
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !io.mmio.read(addr, data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            io.mmio.write(addr, data);
            Action::Continue
        }
        VcpuExit::InternalError => Action::InternalError,
        VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::IoapicEoi(_) | VcpuExit::Debug(_) => {
            Action::Continue
        }
        VcpuExit::Hlt => Action::Exit(ExitReason::Shutdown),
        VcpuExit::Shutdown => Action::Exit(ExitReason::Crash(format!("triple fault on vCPU {index}"))),
        VcpuExit::SystemEvent(kind, _) => Action::Exit(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::Shutdown,
            KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
            KVM_SYSTEM_EVENT_CRASH => ExitReason::Crash(format!("vCPU {index} reported a crash")),
            other => ExitReason::Crash(format!("vCPU {index}: unknown system event {other}")),
        }),
        VcpuExit::FailEntry(reason, cpu) => Action::Exit(ExitReason::Crash(format!(
            "VM entry failed on vCPU {index}: hardware reason {reason:#x} (host cpu {cpu})"
        ))),
        other => Action::Exit(ExitReason::Crash(format!(
            "vCPU {index}: unexpected KVM exit {other:?}"
        ))),
    }
}

/// The `Vm`'s grip on a running vCPU thread.
#[derive(Debug)]
pub(crate) struct VcpuHandle {
    thread: Option<JoinHandle<VcpuFd>>,
    requests: Sender<VcpuRequest>,
    responses: Mutex<Receiver<VcpuResponse>>,
}

impl std::fmt::Debug for VcpuRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pause(seq) => write!(f, "Pause({seq})"),
            Self::Resume(seq) => write!(f, "Resume({seq})"),
            Self::Finish => f.write_str("Finish"),
            Self::With(_) => f.write_str("With"),
        }
    }
}

impl VcpuHandle {
    /// Queues a request; the caller kicks the thread afterwards.
    pub fn send(&self, request: VcpuRequest) -> bool {
        self.requests.send(request).is_ok()
    }

    /// Waits until `deadline` for `want` (or `Exited`), dropping the
    /// answers to earlier requests; `None` if the thread is gone or did not
    /// answer in time.
    pub fn recv_answer(&self, want: VcpuResponse, deadline: Instant) -> Option<VcpuResponse> {
        let rx = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) if r == want || r == VcpuResponse::Exited => return Some(r),
                Ok(stale) => log::trace!("vCPU answer {stale:?} dropped (waiting for {want:?})"),
                Err(_) => return None,
            }
        }
    }

    /// Waits for the thread to end and releases the vCPU.
    pub fn join(&mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map(drop)
                .map_err(|_| "a vCPU thread panicked".to_string()),
            None => Ok(()),
        }
    }
}
