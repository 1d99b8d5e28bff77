//! Owned file descriptors with the few calls the agent makes on them, and
//! errno text for the messages the host sees.

use std::io;
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
            match retry_on_eintr(n) {
                Some(result) => return result,
                None => continue,
            }
        }
    }

    /// One write(2), retried on EINTR: the byte count.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid, initialised slice of `buf.len()`
            // bytes for the duration of the call; write(2) only reads it.
            let n = unsafe { libc::write(self.raw(), buf.as_ptr().cast(), buf.len()) };
            match retry_on_eintr(n) {
                Some(result) => return result,
                None => continue,
            }
        }
    }

    /// Writes all of `buf`.
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

    /// close(2), reporting its error (dropping ignores it).
    pub fn close(self) -> io::Result<()> {
        let fd = self.0.into_raw_fd();
        // SAFETY: `fd` was just released from its OwnedFd, so it is closed
        // exactly once, here.
        check(unsafe { libc::close(fd) })?;
        Ok(())
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

/// `Some(result)` for a finished read/write, `None` to retry after EINTR.
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
    Ok((Fd::from_new(fds[0])?, Fd::from_new(fds[1])?))
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
}
