//! Kicking a vCPU out of `KVM_RUN`.
//!
//! The kicker sends a real-time signal to the vCPU thread. The handler
//! sets `immediate_exit` in that thread's `kvm_run`, so `KVM_RUN` returns
//! `EINTR` whether the signal lands inside the ioctl or just before it.

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The current thread's `kvm_run`, while it runs a vCPU.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal number used for kicks.
pub(crate) fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set only by `bind` on this very thread and
        // cleared by `unbind` before the vCPU (and its kvm_run mapping) is
        // released; the handler runs on the same thread, so the mapping is live.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Installs the process-wide handler, once.
pub(crate) fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), handle_kick).map_err(|e| e.errno())))
        .map_err(io::Error::from_raw_os_error)
}

/// Binds the calling thread to `run`; kicks will make its `KVM_RUN` return.
pub(crate) fn bind(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}

/// Unbinds the calling thread.
pub(crate) fn unbind() {
    KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
}

/// Sends a kick to `thread`. The caller guarantees the thread has not been
/// joined yet.
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller keeps `thread` un-joined (see RunState's kick list),
    // so the handle is valid; pthread_kill with a valid signal has no other
    // effect than delivering it.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
