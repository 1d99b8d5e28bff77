//! The two processes of a jailed run. The parent stays in the host's
//! namespaces: it waits, turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into a
//! SIGKILL of the child (pid 1 of its namespace ignores signals it has no
//! handler for), cleans up and exits as the child did. The child is pid 1
//! of a new pid namespace and becomes the VMM.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

/// The signals the parent passes on (as a SIGKILL) and then dies of.
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain C data; all zeroes is a valid value, and
    // sigemptyset makes it a proper empty set anyway.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

fn waited_signals() -> libc::sigset_t {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    sigset(&all)
}

/// Blocks SIGCHLD and the forwarded signals (so that none is lost before
/// the parent waits) and returns the previous mask.
pub fn block_signals() -> io::Result<libc::sigset_t> {
    let set = waited_signals();
    // SAFETY: sigset_t is plain C data; pthread_sigmask fills it.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live sigset_t values.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(old)
}

/// Restores a mask saved by [`block_signals`].
pub fn restore_mask(old: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `old` is a live sigset_t; no old mask is asked for.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two fds into the array, which outlives the call.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Which side of the fork this is.
#[derive(Debug)]
pub enum Fork {
    Parent { child: libc::pid_t },
    Child,
}

/// Forks a child that is pid 1 of a new pid namespace. The parent's own
/// pid namespace does not change. The caller must be single-threaded.
pub fn fork_pid_ns() -> io::Result<Fork> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
    // SAFETY: the process is single-threaded (checked by the caller), so
    // the child's copy of memory has no lock held by a lost thread.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        child => Ok(Fork::Parent { child }),
    }
}

/// How the child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
}

/// Waits for `child` with [`block_signals`] in force. A forwarded signal
/// kills the child; it is returned with the status.
pub fn wait(child: libc::pid_t) -> io::Result<(Status, Option<libc::c_int>)> {
    let set = waited_signals();
    let mut received = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a live integer.
        match unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } {
            0 => {}
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            _ if libc::WIFEXITED(status) => return Ok((Status::Exited(libc::WEXITSTATUS(status)), received)),
            _ if libc::WIFSIGNALED(status) => {
                return Ok((Status::Signaled(libc::WTERMSIG(status)), received))
            }
            _ => {}
        }
        // SAFETY: `set` is a live sigset_t; no siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if FORWARDED.contains(&sig) {
            received.get_or_insert(sig);
            // SAFETY: kill takes integers; `child` is our unreaped child,
            // so the pid cannot have been reused.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
    }
}

/// The parent's exit for the child's: the same exit code; for a death by
/// signal (or a forwarded signal), death by the same signal, else 128 + it.
pub fn exit_code(status: Status, received: Option<libc::c_int>) -> ExitCode {
    let sig = match (status, received) {
        (_, Some(sig)) | (Status::Signaled(sig), None) => sig,
        (Status::Exited(code), None) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
    };
    // SAFETY: restoring the default action of a valid signal, unblocking it
    // and raising it: no memory is involved. If the default is to ignore
    // it, the call returns and the process exits with 128 + sig.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let set = sigset(&[sig]);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    ExitCode::from(u8::try_from(128 + sig).unwrap_or(1))
}

/// Whether the other end of `read_end`'s pipe is closed.
pub fn peer_closed(read_end: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes one live pollfd; a zero timeout
    // returns at once.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLIN) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(exit_code(Status::Exited(0), None), ExitCode::SUCCESS);
        assert_eq!(exit_code(Status::Exited(2), None), ExitCode::from(2));
        assert_eq!(exit_code(Status::Exited(1), None), ExitCode::from(1));
    }

    #[test]
    fn peer_closed_sees_the_write_end_go() {
        let (r, w) = pipe().unwrap();
        assert!(!peer_closed(&r));
        drop(w);
        assert!(peer_closed(&r));
    }
}
