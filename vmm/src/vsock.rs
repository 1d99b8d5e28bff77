//! The host side of vsock for library users: connecting to a guest port
//! through the VM's Unix socket (the same `CONNECT <port>` protocol any
//! Firecracker-style client uses), and listening for guest connections.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for the guest to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors connecting to a guest port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VsockConnectError {
    /// The VM has no vsock device.
    #[error("the VM has no vsock device")]
    NoVsock,
    /// The VM's Unix socket refused the connection.
    #[error("cannot connect to vsock socket {}: {source}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Nothing listens on that guest port (or the guest reset the connection).
    #[error("guest port {0} refused the connection")]
    Refused(u32),
    /// The guest did not answer in time.
    #[error("guest port {0} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout(u32),
    /// The reply was not `OK <port>`.
    #[error("unexpected vsock handshake reply {0:?}")]
    BadReply(String),
}

impl crate::Vm {
    /// Connects to guest vsock port `port` (host-initiated), returning the
    /// byte stream. Uses the VM's Unix socket, like any external client.
    pub fn vsock_connect(&self, port: u32) -> Result<UnixStream, VsockConnectError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        connect(&v.uds_path, port)
    }

    /// Accepts guest connections to host port `port` (the guest connects
    /// to CID 2, port `port`). The listener lives at `<uds_path>_<port>`.
    pub fn vsock_listen(&self, port: u32) -> Result<UnixListener, VsockConnectError> {
        let v = self.config.vsock.as_ref().ok_or(VsockConnectError::NoVsock)?;
        listen(&v.uds_path, port).map_err(|source| VsockConnectError::Socket {
            path: v.uds_path.clone(),
            source,
        })
    }
}

/// Connects to guest port `port` through the VM's socket at `uds_path`.
pub fn connect(uds_path: &Path, port: u32) -> Result<UnixStream, VsockConnectError> {
    let socket_err = |source| VsockConnectError::Socket {
        path: uds_path.into(),
        source,
    };
    let mut stream = UnixStream::connect(uds_path).map_err(socket_err)?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(socket_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(socket_err)?;
    // Read the reply byte by byte: nothing after its newline is ours.
    let mut line = Vec::with_capacity(32);
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => return Err(VsockConnectError::Refused(port)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => {
                return Err(VsockConnectError::BadReply(
                    String::from_utf8_lossy(&line).into_owned(),
                ))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(VsockConnectError::Timeout(port))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(VsockConnectError::Refused(port))
            }
            Err(e) => return Err(socket_err(e)),
        }
    }
    let text = String::from_utf8_lossy(&line);
    match text.strip_prefix("OK ").map(|p| p.trim().parse::<u32>()) {
        Some(Ok(_)) => {
            stream.set_read_timeout(None).map_err(socket_err)?;
            Ok(stream)
        }
        _ => Err(VsockConnectError::BadReply(text.into_owned())),
    }
}

/// Listens for guest connections to host port `port`: the socket
/// `<uds_path>_<port>`, replacing a stale one.
pub fn listen(uds_path: &Path, port: u32) -> io::Result<UnixListener> {
    let path = PathBuf::from(format!("{}_{port}", uds_path.display()));
    if path.exists() && UnixStream::connect(&path).is_err() {
        std::fs::remove_file(&path)?;
    }
    UnixListener::bind(path)
}
