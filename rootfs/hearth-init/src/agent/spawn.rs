//! Starting a child: pipes or a pseudo-terminal, fork, and in the child
//! only system calls (session or process group, stdio, resource limits,
//! root directory, user, working directory, execve over the PATH
//! candidates).
//!
//! The child reports a failure through a close-on-exec status pipe
//! (stage + errno, then `_exit(127)`); end of file on that pipe means the
//! exec succeeded. The agent does not wait for it: the pipe joins the
//! event loop ([`read_status`]), so a slow exec (~0.66 s under an
//! emulated guest kernel) stalls nobody else.

use std::ffi::{CStr, CString};
use std::io;

use hearth_agent_protocol::{ErrorInfo, User, WinSize};

use super::command::{self, Command, Stage};
use super::errors;
use super::fd::{self, Fd};
use super::pty;

/// The agent's ends of a child's standard streams, non-blocking.
#[derive(Debug)]
pub enum Stdio {
    /// Pipes; `stdin` is `None` when the child's stdin is /dev/null.
    Pipes {
        /// Write end of the child's stdin.
        stdin: Option<Fd>,
        /// Read end of its stdout.
        stdout: Fd,
        /// Read end of its stderr.
        stderr: Fd,
    },
    /// A pseudo-terminal's master: output, input and size.
    Pty {
        /// The master.
        master: Fd,
    },
}

/// A forked child whose exec is not confirmed yet.
#[derive(Debug)]
pub struct Child {
    /// Its pid (and process group id).
    pub pid: libc::pid_t,
    /// Readable once it exited (`None` on kernels without pidfds).
    pub pidfd: Option<Fd>,
    /// The status pipe's read end, non-blocking.
    pub status: Fd,
    /// Its streams.
    pub stdio: Stdio,
}

/// What to start.
#[derive(Debug)]
pub struct Request<'a> {
    /// Program, arguments, environment, directory.
    pub cmd: &'a Command,
    /// Run as this user.
    pub user: Option<User>,
    /// On a terminal of this size.
    pub tty: Option<WinSize>,
    /// Whether stdin is a pipe (else /dev/null; a terminal is always
    /// stdin).
    pub stdin: bool,
    /// The descriptor limit to give the child (the agent raised its own).
    pub nofile: Option<libc::rlimit>,
}

/// Pointers and values the child uses, built before fork so that the
/// child only makes system calls. They borrow the request's strings.
struct ChildPlan {
    candidates: Vec<*const libc::c_char>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    /// fds 0, 1, 2 (-1: open /dev/null for stdin).
    stdio: [libc::c_int; 3],
    /// The terminal to make controlling (after setsid), or -1.
    ctty: libc::c_int,
    status: libc::c_int,
    user: Option<User>,
    clear_groups: bool,
    nofile: Option<libc::rlimit>,
    /// chroot here first (null: no chroot).
    root: *const libc::c_char,
    rlimits: Vec<(u32, libc::rlimit)>,
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

const DEV_NULL: &CStr = c"/dev/null";

/// Forks `req`. The error is the client's.
pub fn spawn(req: &Request<'_>) -> Result<Child, ErrorInfo> {
    let name = req.cmd.name.as_bytes();
    let fail = |what: &str, e: io::Error| errors::io(what, name, &e);
    // The agent's ends and the child's ends.
    let (stdio, child_fds, ctty, _keep) = match req.tty {
        Some(size) => {
            let p = pty::open(size).map_err(|e| errors::io("open", b"/dev/ptmx", &e))?;
            let s = p.slave.raw();
            (Stdio::Pty { master: p.master }, [s, s, s], s, vec![p.slave])
        }
        None => {
            let (in_r, in_w) = if req.stdin {
                let (r, w) = fd::pipe().map_err(|e| fail("pipe", e))?;
                (Some(r), Some(w))
            } else {
                (None, None)
            };
            let (out_r, out_w) = fd::pipe().map_err(|e| fail("pipe", e))?;
            let (err_r, err_w) = fd::pipe().map_err(|e| fail("pipe", e))?;
            let fds = [in_r.as_ref().map_or(-1, Fd::raw), out_w.raw(), err_w.raw()];
            let keep: Vec<Fd> = in_r.into_iter().chain([out_w, err_w]).collect();
            let stdio = Stdio::Pipes {
                stdin: in_w,
                stdout: out_r,
                stderr: err_r,
            };
            (stdio, fds, -1, keep)
        }
    };
    let (status_r, status_w) = fd::pipe().map_err(|e| fail("pipe", e))?;
    let plan = ChildPlan {
        candidates: req.cmd.candidates.iter().map(|c| c.as_ptr()).collect(),
        argv: pointers(&req.cmd.argv),
        envp: pointers(&req.cmd.envp),
        cwd: req.cmd.cwd.as_ptr(),
        stdio: child_fds,
        ctty,
        status: status_w.raw(),
        user: req.user,
        // SAFETY: geteuid(2) has no memory effects.
        clear_groups: unsafe { libc::geteuid() } == 0,
        nofile: req.nofile,
        root: req.cmd.root.as_ref().map_or(std::ptr::null(), |r| r.as_ptr()),
        rlimits: req
            .cmd
            .rlimits
            .iter()
            .map(|&(resource, soft, hard)| {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                (resource, limit)
            })
            .collect(),
    };

    // SAFETY: fork(2) has no memory effects on this process. The agent is
    // single-threaded; the child makes only system calls (run_child),
    // with memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        run_child(&plan);
    }
    // The child's ends belong to the child now (`_keep`, `status_w`).
    drop(status_w);
    drop(_keep);
    let pidfd = match fd::pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(e) => {
            kill_and_reap(pid);
            return Err(fail("pidfd_open", e));
        }
    };
    let nonblocking = match &stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let mut r = stdout.set_nonblocking().and(stderr.set_nonblocking());
            if let Some(w) = stdin {
                r = r.and(w.set_nonblocking());
            }
            r
        }
        // Opened non-blocking.
        Stdio::Pty { .. } => Ok(()),
    };
    if let Err(e) = nonblocking.and(status_r.set_nonblocking()) {
        kill_and_reap(pid);
        return Err(fail("fcntl", e));
    }
    Ok(Child {
        pid,
        pidfd,
        status: status_r,
        stdio,
    })
}

/// What the status pipe says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Nothing yet.
    Pending,
    /// The exec succeeded.
    Started,
    /// The child failed at a stage and exits.
    Failed(Stage, i32),
}

/// Reads the status pipe (non-blocking).
pub fn read_status(status: &Fd) -> Status {
    let mut report = [0u8; 8];
    match status.read(&mut report) {
        Ok(0) => Status::Started,
        Ok(n) => match command::decode_failure(report.get(..n).unwrap_or_default()) {
            Some((stage, errno)) => Status::Failed(stage, errno),
            None => Status::Failed(Stage::Exec, libc::EIO),
        },
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Status::Pending,
        Err(e) => Status::Failed(Stage::Exec, e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Kills a child that will not be used and reaps it.
pub fn kill_and_reap(pid: libc::pid_t) {
    let _ = fd::kill_group(pid, libc::SIGKILL);
    reap_blocking(pid);
}

/// waitpid(pid, 0): for a child known to be exiting.
pub fn reap_blocking(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid(2) to fill.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 || fd::errno() != libc::EINTR {
            return;
        }
    }
}

/// waitpid(pid, WNOHANG): the raw status once it has exited.
pub fn try_reap(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for waitpid(2) to fill.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match rc {
            0 => return None,
            pid if pid > 0 => return Some(status),
            // ECHILD: not ours any more (cannot happen); treat as gone.
            _ if fd::errno() == libc::EINTR => continue,
            _ => return Some(0),
        }
    }
}

/// The child after fork. Never returns.
fn run_child(plan: &ChildPlan) -> ! {
    // SAFETY: only system calls on descriptors this process owns and on
    // memory prepared before the fork, which stays valid (the child's
    // copy of the agent's memory) until execve or _exit.
    unsafe {
        // Signals: none blocked, SIGPIPE back to default (Rust's runtime
        // ignores it, and exec keeps ignored signals).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        if plan.ctty >= 0 {
            if libc::setsid() < 0 || libc::ioctl(plan.ctty, libc::TIOCSCTTY, 0) < 0 {
                child_fail(plan.status, Stage::Session);
            }
        } else if libc::setpgid(0, 0) < 0 {
            child_fail(plan.status, Stage::Session);
        }

        let [stdin, stdout, stderr] = plan.stdio;
        let stdin = if stdin >= 0 {
            stdin
        } else {
            libc::open(DEV_NULL.as_ptr(), libc::O_RDONLY)
        };
        for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
            if fd < 0 || libc::dup2(fd, target) < 0 {
                child_fail(plan.status, Stage::Stdio);
            }
        }

        if let Some(limit) = &plan.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, limit);
        }
        for (resource, limit) in &plan.rlimits {
            // The resource's type is an int on glibc's prototype.
            if libc::setrlimit(*resource as _, limit) != 0 {
                child_fail(plan.status, Stage::Rlimit);
            }
        }
        if !plan.root.is_null() && (libc::chroot(plan.root) != 0 || libc::chdir(c"/".as_ptr()) != 0) {
            child_fail(plan.status, Stage::Root);
        }
        if let Some(user) = plan.user {
            if plan.clear_groups && libc::setgroups(0, std::ptr::null()) < 0 {
                child_fail(plan.status, Stage::Groups);
            }
            if libc::setgid(user.gid) < 0 {
                child_fail(plan.status, Stage::Gid);
            }
            if libc::setuid(user.uid) < 0 {
                child_fail(plan.status, Stage::Uid);
            }
        }
        if libc::chdir(plan.cwd) != 0 {
            child_fail(plan.status, Stage::Chdir);
        }

        // Like execvp(3): ENOENT/ENOTDIR/ESTALE go on, EACCES is
        // remembered, anything else stops the search.
        let mut last = libc::ENOENT;
        let mut denied = false;
        for &program in &plan.candidates {
            libc::execve(program, plan.argv.as_ptr(), plan.envp.as_ptr());
            last = fd::errno();
            match last {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => report_and_exit(plan.status, Stage::Exec, last),
            }
        }
        let errno = if denied { libc::EACCES } else { last };
        report_and_exit(plan.status, Stage::Exec, errno)
    }
}

/// Reports the failed stage with the current errno and exits 127.
fn child_fail(status_fd: libc::c_int, stage: Stage) -> ! {
    report_and_exit(status_fd, stage, fd::errno())
}

fn report_and_exit(status_fd: libc::c_int, stage: Stage, errno: i32) -> ! {
    let report = command::encode_failure(stage, errno);
    // SAFETY: `report` is a valid 8-byte buffer; write(2) only reads it.
    // _exit(2) ends the child without running the parent's exit handlers.
    unsafe {
        libc::write(status_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// A wait(2) status as `(code, signal)`.
pub fn decode_wait(status: libc::c_int) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// A wait(2) status as one number: the exit code, or minus the signal
/// (the supervisor's console lines).
pub fn exit_status(status: libc::c_int) -> i32 {
    match decode_wait(status) {
        (Some(code), _) => code,
        (None, Some(signal)) => -signal,
        (None, None) => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        assert_eq!(decode_wait(3 << 8), (Some(3), None));
        assert_eq!(decode_wait(libc::SIGKILL), (None, Some(9)));
        assert_eq!(decode_wait(libc::SIGSEGV | 0x80), (None, Some(11)));
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(255 << 8), 255);
        assert_eq!(exit_status(libc::SIGTERM), -15);
    }
}
