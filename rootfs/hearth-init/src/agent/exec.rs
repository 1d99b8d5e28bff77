//! EXEC: fork and execve a command, feed its stdin, stream its stdout and
//! stderr back as they come, then its exit status.
//!
//! The child reports a failed `chdir`/`execve` through a close-on-exec
//! status pipe (stage + errno, then `_exit(127)`); end of file on that pipe
//! means the exec succeeded. One `poll(2)` loop then serves the stdin pipe,
//! both output pipes, a pidfd of the child and the client's connection:
//! a client that goes away gets its command (and the command's process
//! group) killed at once, so it cannot hold the agent. Once the child has
//! exited, what is left in its pipes is drained without waiting: output
//! that background processes write later is dropped, not waited for.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::RawFd;

use hearth_agent_protocol::{write_frame, Exec, Response};

use super::command::{self, Command, Probe, Stage};
use super::fd::{self, Fd};

/// The largest STDOUT/STDERR chunk.
const CHUNK: usize = 64 << 10;
/// How much is drained from each pipe after the child exits.
const DRAIN_LIMIT: usize = 1 << 20;
/// The poll timeout when no pidfd is available (exit then found by polling).
const POLL_FALLBACK_MS: libc::c_int = 50;

/// Where EXEC's responses go.
pub trait Client: Write {
    /// A descriptor that polls readable when the client may have gone
    /// (`None`: not watched).
    fn hangup_fd(&self) -> Option<RawFd>;
    /// Whether the client has gone (asked when `hangup_fd` polls ready).
    fn is_gone(&self) -> bool;
}

/// Runs `exec`, writing the responses to `out`. An `Err` means the client
/// went away (or `out` failed); the command was then killed.
pub fn run(exec: &Exec, out: &mut impl Client) -> io::Result<()> {
    let cmd = match command::prepare(exec, probe) {
        Ok(cmd) => cmd,
        Err(msg) => return send(out, Response::Error(msg)),
    };
    let (mut child, pipes) = match spawn(&cmd) {
        Ok(spawned) => spawned,
        Err(msg) => return send(out, Response::Error(msg)),
    };
    match relay(&mut child, pipes, &exec.stdin, out) {
        Ok(status) => send(out, Response::Exit(status)),
        Err(e) => {
            child.kill();
            Err(e)
        }
    }
}

fn send(out: &mut impl Write, response: Response) -> io::Result<()> {
    write_frame(out, &response.encode())
}

/// What is at `path`, for the PATH search (two system calls at most).
fn probe(path: &[u8]) -> Probe {
    let Ok(c_path) = CString::new(path) else {
        return Probe::Missing;
    };
    // SAFETY: `c_path` is a valid NUL-terminated string for the call.
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } != 0 {
        return match fd::errno() {
            libc::ENOENT | libc::ENOTDIR => Probe::Missing,
            _ => Probe::NotExecutable,
        };
    }
    // SAFETY: `stat` is plain old data; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid string and `st` a writable stat buffer.
    if unsafe { libc::stat(c_path.as_ptr(), &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Probe::NotExecutable;
    }
    Probe::Executable
}

/// A started child.
#[derive(Debug)]
struct Child {
    pid: libc::pid_t,
    /// Readable once the child has exited (None: kernel without pidfds).
    pidfd: Option<Fd>,
    /// Set once reaped: the pid is then no longer ours to signal.
    status: Option<i32>,
}

impl Child {
    /// waitpid without blocking: the protocol status once it has exited.
    fn try_wait(&mut self) -> io::Result<Option<i32>> {
        self.wait(libc::WNOHANG)
    }

    fn wait(&mut self, flags: libc::c_int) -> io::Result<Option<i32>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid int for waitpid(2) to fill.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            match rc {
                0 => return Ok(None),
                pid if pid > 0 => {
                    self.status = Some(command::exit_status(status));
                    return Ok(self.status);
                }
                _ if fd::errno() == libc::EINTR => continue,
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }

    /// Kills the child and its process group (it leads its own session)
    /// and reaps it; nothing once it has been reaped.
    fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: kill(2) has no memory effects; the pid is our unreaped
        // child, so neither it nor its group id can have been reused.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.wait(0);
    }
}

/// The agent's ends of the child's standard streams, non-blocking.
#[derive(Debug)]
struct Pipes {
    stdin: Fd,
    stdout: Fd,
    stderr: Fd,
}

/// Pointers for execve, built before fork so the child only makes
/// system calls. They borrow `cmd`.
struct ExecPointers {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Forks and execs `cmd`; the error is the client's message.
fn spawn(cmd: &Command) -> Result<(Child, Pipes), String> {
    let io_err =
        |what: &str, e: io::Error| format!("cannot start {}: {what}: {}", cmd.name, fd::error_text(&e));
    let (stdin_r, stdin_w) = fd::pipe().map_err(|e| io_err("pipe", e))?;
    let (stdout_r, stdout_w) = fd::pipe().map_err(|e| io_err("pipe", e))?;
    let (stderr_r, stderr_w) = fd::pipe().map_err(|e| io_err("pipe", e))?;
    let (status_r, status_w) = fd::pipe().map_err(|e| io_err("pipe", e))?;
    let ptrs = ExecPointers {
        argv: null_terminated(&cmd.argv),
        envp: null_terminated(&cmd.envp),
    };

    // SAFETY: fork(2) has no memory effects on this process. The agent is
    // single-threaded; in the child only async-signal-safe calls follow
    // (exec_child), using memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io_err("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        exec_child(
            cmd,
            &ptrs,
            [stdin_r.raw(), stdout_w.raw(), stderr_w.raw()],
            status_w.raw(),
        );
    }
    // The child's ends belong to the child now.
    drop((stdin_r, stdout_w, stderr_w, status_w));
    let mut child = Child {
        pid,
        pidfd: None,
        status: None,
    };

    // End of file: the exec succeeded (the pipe is close-on-exec).
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match status_r.read(report.get_mut(got..).unwrap_or_default()) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if got > 0 {
        let _ = child.wait(0);
        return Err(
            match command::decode_failure(report.get(..got).unwrap_or_default()) {
                Some((stage, errno)) => command::failure_message(cmd, stage, errno),
                None => format!("cannot execute {}: bad status report from the child", cmd.name),
            },
        );
    }

    child.pidfd = pidfd_open(pid).ok();
    let pipes = Pipes {
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
    };
    for end in [&pipes.stdin, &pipes.stdout, &pipes.stderr] {
        if let Err(e) = end.set_nonblocking() {
            child.kill();
            return Err(io_err("fcntl", e));
        }
    }
    Ok((child, pipes))
}

/// The child after fork: stdio onto the pipes, a session of its own,
/// SIGPIPE back to default (Rust's runtime ignores it, and exec keeps
/// ignored signals), then chdir and execve. Failures go to `status_fd`.
fn exec_child(cmd: &Command, ptrs: &ExecPointers, stdio: [RawFd; 3], status_fd: RawFd) -> ! {
    for (target, fd) in (0..).zip(stdio) {
        // SAFETY: dup2(2) on descriptors this process owns; no memory.
        if unsafe { libc::dup2(fd, target) } < 0 {
            child_fail(status_fd, Stage::Stdio);
        }
    }
    // SAFETY: setsid(2) and signal(2) with SIG_DFL have no memory effects.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // SAFETY: `cmd.cwd` is a valid NUL-terminated string.
    if unsafe { libc::chdir(cmd.cwd.as_ptr()) } != 0 {
        child_fail(status_fd, Stage::Chdir);
    }
    // SAFETY: `program` is a valid string; `argv` and `envp` are
    // null-terminated arrays of pointers to strings owned by `cmd`, which
    // outlives the call (execve only returns on failure).
    unsafe { libc::execve(cmd.program.as_ptr(), ptrs.argv.as_ptr(), ptrs.envp.as_ptr()) };
    child_fail(status_fd, Stage::Exec)
}

/// Reports the failed stage with the current errno and exits 127.
fn child_fail(status_fd: RawFd, stage: Stage) -> ! {
    let report = command::encode_failure(stage, fd::errno());
    // SAFETY: `report` is a valid 8-byte buffer; write(2) only reads it.
    // _exit(2) ends the child without running the parent's exit handlers.
    unsafe {
        libc::write(status_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<Fd> {
    // SAFETY: pidfd_open(2) takes a pid and flags; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Fd::from_new(fd)
}

/// Which stream a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Stdin,
    Stdout,
    Stderr,
    Exit,
    Client,
}

/// Relays stdin, stdout and stderr until the child exits: its status.
fn relay(child: &mut Child, pipes: Pipes, input: &[u8], out: &mut impl Client) -> io::Result<i32> {
    let Pipes {
        stdin,
        stdout,
        stderr,
    } = pipes;
    // Empty input: close stdin at once.
    let mut stdin = (!input.is_empty()).then_some(stdin);
    let mut pending = input;
    let mut stdout = Some(stdout);
    let mut stderr = Some(stderr);
    let mut client = out.hangup_fd();
    let mut buf = vec![0u8; CHUNK];

    let status = loop {
        let mut fds = Vec::with_capacity(5);
        let mut slots = Vec::with_capacity(5);
        let mut watch = |fd: &Fd, events, slot| {
            fds.push(libc::pollfd {
                fd: fd.raw(),
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        if let Some(fd) = &stdin {
            watch(fd, libc::POLLOUT, Slot::Stdin);
        }
        if let Some(fd) = &stdout {
            watch(fd, libc::POLLIN, Slot::Stdout);
        }
        if let Some(fd) = &stderr {
            watch(fd, libc::POLLIN, Slot::Stderr);
        }
        if let Some(fd) = &child.pidfd {
            watch(fd, libc::POLLIN, Slot::Exit);
        }
        if let Some(fd) = client {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            });
            slots.push(Slot::Client);
        }
        let timeout = if child.pidfd.is_some() {
            -1
        } else {
            POLL_FALLBACK_MS
        };
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: `fds` is a valid array of `nfds` pollfd structs that
        // poll(2) may update for the duration of the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) } < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }

        let mut maybe_exited = child.pidfd.is_none();
        for (pfd, slot) in fds.iter().zip(&slots) {
            if pfd.revents == 0 {
                continue;
            }
            match slot {
                Slot::Stdin => {
                    if feed(&mut stdin, &mut pending) {
                        stdin = None;
                    }
                }
                Slot::Stdout => forward(&mut stdout, &mut buf, out, Response::Stdout)?,
                Slot::Stderr => forward(&mut stderr, &mut buf, out, Response::Stderr)?,
                Slot::Exit => maybe_exited = true,
                Slot::Client if out.is_gone() => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client closed the connection",
                    ))
                }
                // Stray bytes or a half-close: nothing to act on, stop
                // watching.
                Slot::Client => client = None,
            }
        }
        if maybe_exited {
            if let Some(status) = child.try_wait()? {
                break status;
            }
        }
    };
    drain(stdout, &mut buf, out, Response::Stdout)?;
    drain(stderr, &mut buf, out, Response::Stderr)?;
    Ok(status)
}

/// Writes what the pipe takes of `pending`: true when stdin should be
/// closed (all written, or the child closed its end).
fn feed(stdin: &mut Option<Fd>, pending: &mut &[u8]) -> bool {
    let Some(fd) = stdin else { return true };
    match fd.write(pending) {
        Ok(n) => {
            *pending = pending.get(n..).unwrap_or_default();
            pending.is_empty()
        }
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Reads one chunk from a readable pipe and sends it; closes the pipe at
/// end of file (or on a read error).
fn forward(
    pipe: &mut Option<Fd>,
    buf: &mut [u8],
    out: &mut impl Write,
    frame: fn(Vec<u8>) -> Response,
) -> io::Result<()> {
    let Some(fd) = pipe else { return Ok(()) };
    match fd.read(buf) {
        Ok(0) => *pipe = None,
        Ok(n) => send(out, frame(buf.get(..n).unwrap_or_default().to_vec()))?,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => *pipe = None,
    }
    Ok(())
}

/// Sends what is left in a pipe after the child exited, without waiting
/// for more.
fn drain(
    pipe: Option<Fd>,
    buf: &mut [u8],
    out: &mut impl Write,
    frame: fn(Vec<u8>) -> Response,
) -> io::Result<()> {
    let Some(fd) = pipe else { return Ok(()) };
    let mut total = 0;
    while total < DRAIN_LIMIT {
        match fd.read(buf) {
            Ok(n) if n > 0 => {
                total += n;
                send(out, frame(buf.get(..n).unwrap_or_default().to_vec()))?;
            }
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! These run real commands on the host (/bin/sh must exist).
    use super::*;
    use hearth_agent_protocol::read_response;

    impl Client for Vec<u8> {
        fn hangup_fd(&self) -> Option<RawFd> {
            None
        }
        fn is_gone(&self) -> bool {
            false
        }
    }

    fn run_exec(argv: &[&str], stdin: &[u8]) -> Vec<Response> {
        let exec = Exec {
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            stdin: stdin.to_vec(),
            ..Exec::default()
        };
        let mut out = Vec::new();
        run(&exec, &mut out).unwrap();
        let mut rest = &out[..];
        let mut responses = Vec::new();
        while let Some(r) = read_response(&mut rest).unwrap() {
            responses.push(r);
        }
        responses
    }

    /// Stdout, stderr and the status from a response list.
    fn collect(responses: &[Response]) -> (Vec<u8>, Vec<u8>, Option<i32>) {
        let (mut o, mut e, mut status) = (Vec::new(), Vec::new(), None);
        for r in responses {
            assert_eq!(status, None, "frames after EXIT: {responses:?}");
            match r {
                Response::Stdout(b) => o.extend_from_slice(b),
                Response::Stderr(b) => e.extend_from_slice(b),
                Response::Exit(s) => status = Some(*s),
                other => panic!("unexpected {other:?}"),
            }
        }
        (o, e, status)
    }

    #[test]
    fn output_streams_and_status() {
        let r = run_exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], b"");
        assert_eq!(collect(&r), (b"out\n".to_vec(), b"err\n".to_vec(), Some(3)));
    }

    #[test]
    fn stdin_is_fed_then_closed() {
        let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let r = run_exec(&["cat"], &input);
        let (o, e, status) = collect(&r);
        assert_eq!(status, Some(0));
        assert!(e.is_empty());
        assert_eq!(o.len(), input.len());
        assert!(o == input);
        assert!(r.iter().all(|f| match f {
            Response::Stdout(b) => b.len() <= CHUNK,
            _ => true,
        }));
    }

    #[test]
    fn child_not_reading_stdin_is_fine() {
        let r = run_exec(&["true"], &vec![b'x'; 1 << 20]);
        assert_eq!(collect(&r), (Vec::new(), Vec::new(), Some(0)));
    }

    #[test]
    fn signal_is_negative_status() {
        let r = run_exec(&["sh", "-c", "kill -9 $$"], b"");
        assert_eq!(collect(&r).2, Some(-9));
    }

    #[test]
    fn sigpipe_is_default_in_the_child() {
        let r = run_exec(&["cat", "/proc/self/status"], b"");
        let (o, _, status) = collect(&r);
        assert_eq!(status, Some(0));
        let text = String::from_utf8(o).unwrap();
        let ignored = text.lines().find_map(|l| l.strip_prefix("SigIgn:")).unwrap();
        let mask = u64::from_str_radix(ignored.trim(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "SigIgn {ignored}");
    }

    #[test]
    fn missing_program_is_one_error() {
        assert_eq!(
            run_exec(&["/no/such"], b""),
            [Response::Error(
                "cannot execute /no/such: No such file or directory".into()
            )]
        );
        assert_eq!(
            run_exec(&["no-such-program-hearth"], b""),
            [Response::Error(
                "cannot execute no-such-program-hearth: No such file or directory".into()
            )]
        );
        assert_eq!(
            run_exec(&["/"], b""),
            [Response::Error("cannot execute /: Permission denied".into())]
        );
    }

    #[test]
    fn bad_cwd_is_an_error() {
        let exec = Exec {
            argv: vec![b"true".to_vec()],
            cwd: b"/no/such/dir".to_vec(),
            ..Exec::default()
        };
        let mut out = Vec::new();
        run(&exec, &mut out).unwrap();
        assert_eq!(
            read_response(&mut &out[..]).unwrap(),
            Some(Response::Error(
                "cannot change directory to /no/such/dir: No such file or directory".into()
            ))
        );
    }

    #[test]
    fn background_output_does_not_hold_the_exit() {
        let start = std::time::Instant::now();
        let r = run_exec(&["sh", "-c", "echo hi; sleep 5 & exit 0"], b"");
        assert_eq!(collect(&r), (b"hi\n".to_vec(), Vec::new(), Some(0)));
        assert!(start.elapsed() < std::time::Duration::from_secs(4));
    }

    /// A writer that fails, like a client that went away.
    struct Gone;
    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Client for Gone {
        fn hangup_fd(&self) -> Option<RawFd> {
            None
        }
        fn is_gone(&self) -> bool {
            true
        }
    }

    /// A client whose hang-up is the closing of a pipe's write end.
    struct Leaving {
        out: Vec<u8>,
        hangup: Fd,
    }

    impl Write for Leaving {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Client for Leaving {
        fn hangup_fd(&self) -> Option<RawFd> {
            Some(self.hangup.raw())
        }
        fn is_gone(&self) -> bool {
            true
        }
    }

    #[test]
    fn silent_command_is_killed_when_the_client_leaves() {
        let (hangup, leave) = fd::pipe().unwrap();
        let mut client = Leaving {
            out: Vec::new(),
            hangup,
        };
        let leaver = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(leave);
        });
        let start = std::time::Instant::now();
        let exec = Exec {
            argv: vec![b"sleep".to_vec(), b"20".to_vec()],
            ..Exec::default()
        };
        let err = run(&exec, &mut client).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        leaver.join().unwrap();
    }

    #[test]
    fn client_gone_kills_the_command() {
        let start = std::time::Instant::now();
        let exec = Exec {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo x; sleep 10".to_vec()],
            ..Exec::default()
        };
        assert!(run(&exec, &mut Gone).is_err());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
