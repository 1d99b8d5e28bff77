//! Owned file descriptors with the few calls the agent makes on them, and
//! errno text for the messages the host sees. Every call is one system
//! call (retried on EINTR): guest system calls may be emulated and cost
//! ~0.27 ms each.

use std::ffi::CString;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// The calling thread's errno (0 when unknown).
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The C library's text for `errno`, e.g. `No such file or directory`.
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // std formats it as "<strerror> (os error <n>)".
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(plain) => plain.to_owned(),
        None => text,
    }
}

/// The text of an I/O error: strerror for OS errors, else its message.
pub fn error_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => strerror(errno),
        None => e.to_string(),
    }
}

/// Turns a negative system call result into the thread's errno.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A path as a C string; a NUL byte inside is `EINVAL`.
pub fn cpath(path: &[u8]) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// An open descriptor, closed on drop.
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// Takes ownership of `fd`, a descriptor a system call just returned.
    pub fn from_new(fd: RawFd) -> io::Result<Self> {
        check(fd)?;
        // SAFETY: the caller passes a descriptor that was just created and
        // that nothing else owns; `check` refused the error value -1.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wraps an owned descriptor.
    pub fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// The raw descriptor (still owned by `self`).
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// One read(2), retried on EINTR: the byte count, 0 at end of file.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes
            // borrowed mutably for the duration of the call.
            let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
            if let Some(result) = retry_on_eintr(n) {
                return result;
            }
        }
    }

    /// One write(2), retried on EINTR: the byte count.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid, initialised slice of `buf.len()`
            // bytes for the duration of the call; write(2) only reads it.
            let n = unsafe { libc::write(self.raw(), buf.as_ptr().cast(), buf.len()) };
            if let Some(result) = retry_on_eintr(n) {
                return result;
            }
        }
    }

    /// Writes all of `buf` (a blocking descriptor: a regular file).
    pub fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = buf.get(n..).unwrap_or_default();
        }
        Ok(())
    }

    /// One sendmsg(2) of `bufs`, never blocking and never raising
    /// SIGPIPE (a peer that went away is `EPIPE`).
    pub fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: `msghdr` is plain old data; all-zero bytes are valid
        // (no address, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec; sendmsg only reads them.
        msg.msg_iov = bufs.as_ptr().cast_mut().cast();
        msg.msg_iovlen = bufs.len();
        loop {
            // SAFETY: `msg` points to `bufs`, valid initialised slices that
            // outlive the call; sendmsg(2) only reads them.
            let n = unsafe { libc::sendmsg(self.raw(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if let Some(result) = retry_on_eintr(n) {
                return result;
            }
        }
    }

    /// Whether a zero-length send fails: it does once the peer will
    /// receive nothing more (EPIPE after its close, ENOTCONN or
    /// ECONNRESET after a reset); a peer that only half-closed still
    /// receives.
    pub fn peer_gone(&self) -> bool {
        let nothing = [0u8; 0];
        // SAFETY: a zero-length send reads no memory; the pointer is valid.
        let rc = unsafe {
            libc::send(
                self.raw(),
                nothing.as_ptr().cast(),
                0,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        rc < 0 && !matches!(errno(), libc::EAGAIN | libc::EINTR)
    }

    /// shutdown(2) of the sending direction.
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: shutdown(2) takes no pointers.
        check(unsafe { libc::shutdown(self.raw(), libc::SHUT_WR) }).map(drop)
    }

    /// close(2), reporting its error (dropping ignores it).
    pub fn close(self) -> io::Result<()> {
        let fd = self.0.into_raw_fd();
        // SAFETY: `fd` was just released from its OwnedFd, so it is closed
        // exactly once, here.
        check(unsafe { libc::close(fd) })?;
        Ok(())
    }

    /// fstat(2).
    pub fn stat(&self) -> io::Result<libc::stat> {
        // SAFETY: `stat` is plain old data; all-zero bytes are a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat(2) fills `st`, a valid writable buffer, for a
        // descriptor we own.
        check(unsafe { libc::fstat(self.raw(), &mut st) })?;
        Ok(st)
    }

    /// Sets O_NONBLOCK on the open file description.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: fcntl(2) F_GETFL/F_SETFL on a descriptor we own; no
        // memory is passed.
        let flags = check(unsafe { libc::fcntl(self.raw(), libc::F_GETFL) })?;
        // SAFETY: as above.
        check(unsafe { libc::fcntl(self.raw(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
        Ok(())
    }
}

/// open(2) with `O_CLOEXEC` added.
pub fn open(path: &[u8], flags: libc::c_int, mode: libc::mode_t) -> io::Result<Fd> {
    let c_path = cpath(path)?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the call; the
    // variadic mode is passed as the promoted c_uint.
    let raw = unsafe { libc::open(c_path.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
    Fd::from_new(raw)
}

/// `Some(result)` for a finished call, `None` to retry after EINTR.
fn retry_on_eintr(n: isize) -> Option<io::Result<usize>> {
    match usize::try_from(n) {
        Ok(n) => Some(Ok(n)),
        Err(_) => {
            let err = io::Error::last_os_error();
            (err.kind() != io::ErrorKind::Interrupted).then_some(Err(err))
        }
    }
}

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub fn pipe() -> io::Result<(Fd, Fd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2(2) to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let [r, w] = fds;
    Ok((Fd::from_new(r)?, Fd::from_new(w)?))
}

/// pidfd_open(2): a descriptor that polls readable once `pid` exited.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<Fd> {
    // SAFETY: pidfd_open(2) takes a pid and flags; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Fd::from_new(fd)
}

/// kill(2) of the process group `pgid` and, should the leader have left
/// it, of the leader itself. The caller guarantees `pgid` is an unreaped
/// child of ours (so the number cannot have been reused).
pub fn kill_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory effects.
    let group = check(unsafe { libc::kill(-pgid, signal) });
    match group {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            // SAFETY: as above.
            check(unsafe { libc::kill(pgid, signal) }).map(drop)
        }
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_is_the_plain_text() {
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert_eq!(strerror(libc::EACCES), "Permission denied");
        assert_eq!(
            error_text(&io::Error::from_raw_os_error(libc::EISDIR)),
            "Is a directory"
        );
        assert_eq!(error_text(&io::Error::other("custom")), "custom");
    }

    #[test]
    fn pipe_round_trip() {
        let (r, w) = pipe().unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn nonblocking_read_of_empty_pipe_would_block() {
        let (r, _w) = pipe().unwrap();
        r.set_nonblocking().unwrap();
        let err = r.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn vectored_send_and_peer_gone() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = Fd::from_owned(a.into());
        let n = a
            .send_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .unwrap();
        assert_eq!(n, 4);
        assert!(!a.peer_gone());
        b.shutdown(std::net::Shutdown::Write).unwrap();
        // A half-close: the peer still receives.
        assert!(!a.peer_gone());
        drop(b);
        assert!(a.peer_gone());
        let err = a.send_vectored(&[IoSlice::new(b"x")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
