//! The agent's listening socket: `AF_VSOCK` in the guest, `AF_UNIX` in
//! native mode. Both hand out non-blocking, close-on-exec streams.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::fd::{self, Fd};

/// Pending connections the kernel keeps before `accept`.
const BACKLOG: libc::c_int = 128;

/// A listening socket.
#[derive(Debug)]
pub struct Listener {
    sock: Fd,
    /// The socket file of a Unix listener (removed on drop).
    path: Option<PathBuf>,
}

impl Listener {
    /// A vsock listener on `port`, any CID.
    pub fn vsock(port: u32) -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_VSOCK,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
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
        fd::check(unsafe { libc::listen(sock.raw(), BACKLOG) }).map_err(|e| context("listen", e))?;
        Ok(Self { sock, path: None })
    }

    /// A Unix listener at `path` (a stale socket file there is replaced).
    pub fn unix(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let sock = Fd::from_owned(OwnedFd::from(listener));
        // std listens with a backlog of 128 already; say it again in case.
        // SAFETY: listen(2) takes no pointers.
        fd::check(unsafe { libc::listen(sock.raw(), BACKLOG) }).map_err(|e| context("listen", e))?;
        Ok(Self {
            sock,
            path: Some(path.to_owned()),
        })
    }

    /// The listening descriptor (to poll).
    pub fn fd(&self) -> &Fd {
        &self.sock
    }

    /// The next pending connection, if any (`Ok(None)`: none now).
    pub fn accept(&self) -> io::Result<Option<Fd>> {
        loop {
            // SAFETY: null address pointers are allowed by accept4(2).
            let raw = unsafe {
                libc::accept4(
                    self.sock.raw(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            match Fd::from_new(raw) {
                Ok(fd) => return Ok(Some(fd)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                // The connection died before we took it: try the next.
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Listener {
    /// Removes a Unix listener's socket file (the agent is stopping).
    pub fn remove_socket_file(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.remove_socket_file();
    }
}

fn context(call: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{call}: {}", fd::error_text(&e)))
}
