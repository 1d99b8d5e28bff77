//! One proxied UDP flow: datagrams between one guest port and one
//! host-side address, over a connected non-blocking host socket.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::time::Instant;

/// Most datagrams read from one flow's host socket in one step.
pub(super) const STEP_DATAGRAMS: usize = 32;

/// One UDP flow.
#[derive(Debug)]
pub(super) struct UdpFlow {
    pub(super) id: u64,
    pub(super) target: SocketAddrV4,
    pub(super) sock: UdpSocket,
    pub(super) rule: String,
    pub(super) name: Option<String>,
    pub(super) opened: Instant,
    pub(super) last_active: Instant,
    pub(super) bytes_out: u64,
    pub(super) bytes_in: u64,
    pub(super) readable: bool,
}

impl UdpFlow {
    /// Opens the host socket, connected to `target`.
    pub(super) fn open(id: u64, target: SocketAddrV4, rule: String, now: Instant) -> io::Result<Self> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(target)?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            id,
            target,
            sock,
            rule,
            name: None,
            opened: now,
            last_active: now,
            bytes_out: 0,
            bytes_in: 0,
            readable: false,
        })
    }

    /// Sends a guest datagram; one the host cannot take now is dropped.
    pub(super) fn send(&mut self, payload: &[u8], now: Instant) {
        if self.sock.send(payload).is_ok() {
            self.bytes_out += payload.len() as u64;
            self.last_active = now;
        }
    }
}
