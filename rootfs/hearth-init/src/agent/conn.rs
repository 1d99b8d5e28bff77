//! The agent's vsock sockets: the listener and one accepted connection.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::time::Duration;

use super::exec::Client;
use super::fd::{self, Fd};

/// A client silent this long (mid-request, or not reading its replies) is
/// dropped, so one stuck client cannot hold the agent forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A listening `AF_VSOCK` stream socket.
#[derive(Debug)]
pub struct Listener(Fd);

impl Listener {
    /// socket, bind to any CID on `port`, listen.
    pub fn bind(port: u32) -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        let sock = Fd::from_new(raw).map_err(|e| context("socket(AF_VSOCK)", e))?;
        // SAFETY: `sockaddr_vm` is plain old data; all-zero bytes are valid.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the call.
        let rc = unsafe { libc::bind(sock.raw(), std::ptr::addr_of!(addr).cast(), len) };
        fd::check(rc).map_err(|e| context("bind", e))?;
        // SAFETY: listen(2) takes no pointers.
        fd::check(unsafe { libc::listen(sock.raw(), 16) }).map_err(|e| context("listen", e))?;
        Ok(Self(sock))
    }

    /// Waits for the next connection (close-on-exec, with idle timeouts).
    pub fn accept(&self) -> io::Result<Conn> {
        loop {
            // SAFETY: null address pointers are allowed by accept4(2).
            let raw = unsafe {
                libc::accept4(
                    self.0.raw(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            match Fd::from_new(raw) {
                Ok(fd) => {
                    let conn = Conn(fd);
                    conn.set_timeouts(IDLE_TIMEOUT)?;
                    return Ok(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn context(call: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{call}: {}", fd::error_text(&e)))
}

/// One accepted connection. Writes use `MSG_NOSIGNAL`: a client that went
/// away is an `EPIPE` error, never a signal.
#[derive(Debug)]
pub struct Conn(Fd);

impl Conn {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: 0,
        };
        for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: `tv` is a valid timeval of the given size for the call.
            let rc = unsafe {
                libc::setsockopt(
                    self.0.raw(),
                    libc::SOL_SOCKET,
                    option,
                    std::ptr::addr_of!(tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            fd::check(rc).map_err(|e| context("setsockopt", e))?;
        }
        Ok(())
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid, initialised slice of `buf.len()`
            // bytes for the duration of the call; send(2) only reads it.
            let n = unsafe { libc::send(self.0.raw(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Client for Conn {
    fn hangup_fd(&self) -> Option<RawFd> {
        Some(self.0.raw())
    }

    /// A zero-length send fails once the peer will receive nothing more:
    /// EPIPE after its SHUTDOWN (the VMM sends one when the host side
    /// closes), ENOTCONN or ECONNRESET after a reset. Stray bytes or a
    /// half-close from the peer do not make it fail.
    fn is_gone(&self) -> bool {
        let nothing = [0u8; 0];
        // SAFETY: a zero-length send reads no memory; the pointer is valid.
        let rc = unsafe {
            libc::send(
                self.0.raw(),
                nothing.as_ptr().cast(),
                0,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        rc < 0 && !matches!(fd::errno(), libc::EAGAIN | libc::EINTR)
    }
}
