//! One proxied TCP connection: the smoltcp socket that talks to the
//! guest, the non-blocking host socket, and the bytes moved between them
//! in bounded steps. Which interest the host fd needs follows from the
//! state, so a ready host socket is always either served or unwatched.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use socket2::{Domain, Socket, Type};
use vmm_sys_util::epoll::{ControlOperation, EventSet};

use super::poller::Poller;

/// Most reads or writes of one flow in one step, each way.
const STEP_IOS: usize = 8;

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TcpState {
    /// Waiting for the first bytes to carry the name (TLS SNI, Host).
    Sniffing,
    /// The host connect is in progress.
    Connecting,
    /// Bytes flow.
    Open,
}

/// A guest connection (the guest's address, and the address it asked
/// for).
pub(super) type FlowKey = (SocketAddrV4, SocketAddrV4);

/// One TCP flow.
#[derive(Debug)]
pub(super) struct TcpFlow {
    pub(super) id: u64,
    pub(super) key: FlowKey,
    /// The host-side destination.
    pub(super) target: SocketAddrV4,
    pub(super) state: TcpState,
    /// The guest-side socket; `None` until the host accepted (its SYN
    /// waits in `syn`).
    pub(super) handle: Option<SocketHandle>,
    pub(super) syn: Option<Vec<u8>>,
    pub(super) host: Option<TcpStream>,
    pub(super) name: Option<String>,
    /// The name was read from the flow (SNI or Host) and allowed.
    pub(super) sniffed: bool,
    pub(super) rule: Option<String>,
    pub(super) opened: Instant,
    pub(super) last_active: Instant,
    /// Connect or sniff deadline.
    pub(super) deadline: Instant,
    pub(super) bytes_out: u64,
    pub(super) bytes_in: u64,
    host_eof: bool,
    shut_host_write: bool,
    /// The host socket said it is readable, or may be.
    readable: bool,
    /// Interest registered with the poller (`None`: not registered).
    watched: Option<EventSet>,
    /// The guest's bytes wait for the host socket to take them.
    blocked_out: bool,
    /// Why the flow failed, if it did.
    pub(super) error: Option<String>,
}

/// Starts a non-blocking connect to `target`.
pub(super) fn connect(target: SocketAddrV4) -> io::Result<TcpStream> {
    // socket2 makes it close-on-exec.
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let _ = s.set_tcp_nodelay(true);
    Ok(s.into())
}

/// Whether the guest sent its FIN (or the connection is gone): nothing
/// more will come from it. Not true before the handshake completes.
pub(super) fn guest_closed(sock: &tcp::Socket<'_>) -> bool {
    use tcp::State::*;
    matches!(sock.state(), CloseWait | LastAck | Closing | TimeWait | Closed)
}

impl TcpFlow {
    pub(super) fn new(
        id: u64,
        key: FlowKey,
        target: SocketAddrV4,
        state: TcpState,
        now: Instant,
        deadline: Instant,
    ) -> Self {
        Self {
            id,
            key,
            target,
            state,
            handle: None,
            syn: None,
            host: None,
            name: None,
            sniffed: false,
            rule: None,
            opened: now,
            last_active: now,
            deadline,
            bytes_out: 0,
            bytes_in: 0,
            host_eof: false,
            shut_host_write: false,
            readable: false,
            watched: None,
            blocked_out: false,
            error: None,
        }
    }

    /// The host socket's readiness, from the poller.
    pub(super) fn on_ready(&mut self, events: EventSet) {
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::ERROR) {
            self.blocked_out = false;
        }
    }

    /// Whether the host connect finished: `Some(Ok)` connected,
    /// `Some(Err)` failed, `None` still in progress.
    pub(super) fn connect_result(&mut self) -> Option<io::Result<()>> {
        let host = self.host.as_ref()?;
        match host.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Err(e)),
            Ok(None) => {}
        }
        match host.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Moves bytes both ways, within [`STEP_IOS`] reads and writes each.
    /// Returns whether anything moved.
    pub(super) fn step(&mut self, sock: &mut tcp::Socket<'_>, now: Instant) -> bool {
        let Some(host) = self.host.as_mut() else {
            return false;
        };
        let mut moved = false;
        // Guest to host.
        for _ in 0..STEP_IOS {
            if self.blocked_out || !sock.can_recv() {
                break;
            }
            let r = sock.recv(|buf| match host.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => {
                    self.bytes_out += n as u64;
                    moved = true;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.blocked_out = true,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    self.fail(sock, format!("host write: {e}"));
                    return true;
                }
            }
        }
        if guest_closed(sock) && !sock.can_recv() && !self.shut_host_write {
            let _ = host.shutdown(Shutdown::Write);
            self.shut_host_write = true;
            moved = true;
        }
        // Host to guest.
        for _ in 0..STEP_IOS {
            if !self.readable
                || self.host_eof
                || !sock.may_send()
                || sock.send_queue() >= sock.send_capacity()
            {
                break;
            }
            let r = sock.send(|buf| match host.read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => {
                    self.host_eof = true;
                    sock.close();
                    moved = true;
                }
                Ok(Ok(n)) => {
                    self.bytes_in += n as u64;
                    moved = true;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    self.fail(sock, format!("host read: {e}"));
                    return true;
                }
                Err(_) => break,
            }
        }
        if moved {
            self.last_active = now;
        }
        moved
    }

    /// Aborts the guest side (an RST goes out) and notes why.
    pub(super) fn fail(&mut self, sock: &mut tcp::Socket<'_>, why: String) {
        sock.abort();
        self.host = None;
        self.watched = None;
        self.error.get_or_insert(why);
    }

    /// Whether the flow is over: the guest side is closed and forgotten
    /// (or lingering in TIME-WAIT).
    pub(super) fn finished(sock: &tcp::Socket<'_>) -> bool {
        match sock.state() {
            tcp::State::Closed => sock.remote_endpoint().is_none(),
            tcp::State::TimeWait => true,
            _ => false,
        }
    }

    /// The interest the host fd needs now.
    fn wanted(&self, sock: Option<&tcp::Socket<'_>>) -> EventSet {
        let mut want = EventSet::empty();
        match self.state {
            TcpState::Connecting => want |= EventSet::OUT,
            TcpState::Sniffing => {}
            TcpState::Open => {
                if let Some(sock) = sock {
                    let room = sock.send_queue() < sock.send_capacity();
                    if !self.host_eof && sock.may_send() && room {
                        want |= EventSet::IN;
                    }
                    if self.blocked_out {
                        want |= EventSet::OUT;
                    }
                }
            }
        }
        want
    }

    /// Brings the poller's interest in line with the state. A host fd
    /// with nothing to wait for is removed (an idle socket's HUP would
    /// otherwise keep the poller readable).
    pub(super) fn update_interest(&mut self, poller: &Poller, sock: Option<&tcp::Socket<'_>>, token: u64) {
        let Some(host) = self.host.as_ref() else {
            return;
        };
        let fd = host.as_raw_fd();
        let want = self.wanted(sock);
        let result = match (self.watched, want.is_empty()) {
            (None, true) => return,
            (Some(_), true) => poller.ctl(ControlOperation::Delete, fd, EventSet::empty(), token),
            (None, false) => {
                // Newly watched for reads: try reading at once.
                self.readable |= want.contains(EventSet::IN);
                poller.ctl(ControlOperation::Add, fd, want, token)
            }
            (Some(w), false) if w == want => return,
            (Some(w), false) => {
                self.readable |= want.contains(EventSet::IN) && !w.contains(EventSet::IN);
                poller.ctl(ControlOperation::Modify, fd, want, token)
            }
        };
        match result {
            Ok(()) => self.watched = (!want.is_empty()).then_some(want),
            Err(e) => log::warn!("user net: cannot watch a host socket: {e}"),
        }
    }

    /// Whether a read attempt is due in this step (readiness, or a newly
    /// opened window).
    pub(super) fn wants_step(&self, sock: &tcp::Socket<'_>) -> bool {
        sock.can_recv() && !self.blocked_out || self.readable || (guest_closed(sock) && !self.shut_host_write)
    }
}
