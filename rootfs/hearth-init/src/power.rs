//! Ending the VM.

/// Flushes file systems and restarts the machine. With `reboot=k` on the
/// kernel command line the kernel resets through the i8042 port 0x64,
/// which the VMM treats as the end of the VM. Never returns: if the reboot
/// fails, init waits forever (PID 1 must not exit).
pub fn restart() -> ! {
    // SAFETY: sync(2) takes no arguments and has no memory effects.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a plain command has no memory effects.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    loop {
        // SAFETY: pause(2) takes no arguments and has no memory effects.
        unsafe { libc::pause() };
    }
}
