//! Hooks for Hearth's own tests (feature `test-hooks`, never in a
//! release build): they make a VMM thread misbehave on purpose.

use std::sync::atomic::{AtomicBool, Ordering};

static VIOLATE_ON_VCPU_START: AtomicBool = AtomicBool::new(false);

/// From now on, every vCPU thread makes a system call outside its seccomp
/// list (`getppid`) right after installing its filter.
pub fn violate_seccomp_on_vcpu_start() {
    VIOLATE_ON_VCPU_START.store(true, Ordering::SeqCst);
}

pub(crate) fn on_vcpu_start() {
    if VIOLATE_ON_VCPU_START.load(Ordering::SeqCst) {
        log::warn!("test hook: calling getppid from a vCPU thread");
        // SAFETY: getppid has no arguments and cannot fail.
        let ppid = unsafe { libc::getppid() };
        log::warn!("test hook: getppid returned {ppid}");
    }
}
