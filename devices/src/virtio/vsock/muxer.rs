//! The host side of the vsock device, compatible with Firecracker's hybrid
//! vsock: it owns the VM's Unix socket, the host clients still in their
//! `CONNECT` handshake, and every connection, and it routes packets
//! between the guest and host sockets.
//!
//! The muxer never touches epoll itself: it records which host fds it
//! wants watched ([`Watch`]) and the event handler applies that.
//!
//! Bounds, whatever the guest does ([`VsockLimits`]): at most
//! `max_connections` connections (a guest REQUEST past that gets an RST),
//! each buffering at most `conn_buffer` bytes of guest data, so the muxer
//! holds at most their product plus [`MAX_CONTROL_PACKETS`] headers. A
//! host client gets `OK` or a closed socket within [`CONN_TIMEOUT`] of
//! its `CONNECT` line: a connection the guest does not answer is dropped
//! host-side at once, and its RST waits for the guest in the control
//! queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, Endpoint, Verdict, CONN_TIMEOUT};
use super::defs::*;
use super::handshake::{self, Handshake, MAX_HANDSHAKE_LEN};
use crate::guest_log::GuestLog;
use crate::unix_socket::clear_stale_socket;

/// Most host clients in their handshake at once.
pub const MAX_PENDING_CLIENTS: usize = 64;
/// Most host clients accepted per listener event (the listener is
/// level-triggered: the rest wait for the next turn).
pub const ACCEPTS_PER_TURN: usize = 16;
/// How long a host client may take to send its `CONNECT` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most control packets (RSTs to unknown ports) waiting for rx buffers.
pub const MAX_CONTROL_PACKETS: usize = 256;
/// After a transport reset, host clients wait at most this long for the
/// guest to finish handling it before their REQUEST goes out anyway; the
/// guest then has the rest of [`CONN_TIMEOUT`] to answer.
pub const RESET_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// How much one VM's vsock device may hold on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockLimits {
    /// Live connections (each one host socket).
    pub max_connections: usize,
    /// Guest data buffered per connection: the buf_alloc the guest is told.
    pub conn_buffer: u32,
}

impl Default for VsockLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            conn_buffer: DEFAULT_CONN_BUFFER,
        }
    }
}

/// Errors setting the muxer up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Another process listens on the path.
    #[error("vsock socket {} is in use by another process", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Binding failed.
    #[error("cannot listen on vsock socket {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An epoll interest change for the event handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// Watch `fd` for these events (add or modify).
    Set(RawFd, EventSet),
    /// Stop watching `fd`.
    Remove(RawFd),
}

type Key = (u32, u32); // (host port, guest port)

/// What went through a vsock device since it was created (a snapshot
/// does not carry them over).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockTraffic {
    /// Payload bytes the guest sent to host sockets.
    pub tx_bytes: u64,
    /// Payload bytes host sockets sent to the guest.
    pub rx_bytes: u64,
    /// Data packets the guest sent.
    pub tx_packets: u64,
    /// Data packets delivered to the guest.
    pub rx_packets: u64,
    /// Connections opened, either way.
    pub connections_opened: u64,
    /// Connections refused: no host listener, the connection limit, or
    /// a host client the guest did not answer.
    pub connections_refused: u64,
}

#[derive(Debug)]
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
    /// When its `CONNECT` line was complete.
    asked: Option<Instant>,
}

/// The vsock connection multiplexer.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    limits: VsockLimits,
    log: std::sync::Arc<GuestLog>,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    clients: HashMap<RawFd, Client>,
    ready: VecDeque<Key>,
    in_ready: HashSet<Key>,
    control: VecDeque<Header>,
    next_local_port: u32,
    watched: HashMap<RawFd, EventSet>,
    changes: Vec<Watch>,
    /// Closed streams, kept until their fds are unwatched.
    graveyard: Vec<UnixStream>,
    /// Until when host clients wait for the guest to handle a transport
    /// reset: a REQUEST the guest takes before the reset event would
    /// become a connection the reset then kills.
    held_until: Option<Instant>,
    /// Host clients done with their handshake, waiting: (fd, guest port).
    waiting: Vec<(RawFd, u32)>,
    traffic: VsockTraffic,
}

fn bind(path: &Path) -> Result<UnixListener, MuxerError> {
    let bind_err = |source| MuxerError::Bind {
        path: path.into(),
        source,
    };
    // A live listener means another VM owns it; a dead one is stale.
    match clear_stale_socket(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            return Err(MuxerError::InUse { path: path.into() })
        }
        r => r.map_err(bind_err)?,
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Connects to a host listener without blocking (a full backlog fails
/// instead of stalling the event loop).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::unix(path)?)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

impl Muxer {
    /// Listens on `uds_path` for a guest with `guest_cid`.
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        limits: VsockLimits,
        log: std::sync::Arc<GuestLog>,
    ) -> Result<Self, MuxerError> {
        Ok(Self {
            guest_cid,
            limits,
            log,
            uds_path: uds_path.into(),
            listener: bind(uds_path)?,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            clients: HashMap::new(),
            ready: VecDeque::new(),
            in_ready: HashSet::new(),
            control: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
            watched: HashMap::new(),
            changes: Vec::new(),
            graveyard: Vec::new(),
            held_until: None,
            waiting: Vec::new(),
            traffic: VsockTraffic::default(),
        })
    }

    /// The listening socket's fd.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The path clients connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Host clients still in their handshake.
    pub fn pending_client_count(&self) -> usize {
        self.clients.len()
    }

    /// Bytes of guest data buffered for host sockets, over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    /// Control packets (RSTs) waiting for guest rx buffers.
    pub fn control_backlog(&self) -> usize {
        self.control.len()
    }

    /// What went through the device so far.
    pub fn traffic(&self) -> VsockTraffic {
        self.traffic
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            guest_cid: self.guest_cid,
            buf_alloc: self.limits.conn_buffer,
        }
    }

    fn watch(&mut self, fd: RawFd, set: EventSet) {
        if set.is_empty() {
            self.unwatch(fd);
        } else if self.watched.get(&fd) != Some(&set) {
            self.watched.insert(fd, set);
            self.changes.push(Watch::Set(fd, set));
        }
    }

    fn unwatch(&mut self, fd: RawFd) {
        if self.watched.remove(&fd).is_some() {
            self.changes.push(Watch::Remove(fd));
        }
    }

    /// Interest changes to apply; the caller then calls
    /// [`release_closed`](Self::release_closed).
    pub fn take_watch_changes(&mut self) -> Vec<Watch> {
        std::mem::take(&mut self.changes)
    }

    /// Closes streams whose fds are no longer watched.
    pub fn release_closed(&mut self) {
        self.graveyard.clear();
    }

    /// After any change to a connection: schedule it, update its watch,
    /// or drop it when over (queueing the RST an aborted one owes).
    fn refresh(&mut self, key: Key) {
        let Some(conn) = self.conns.get(&key) else { return };
        let fd = conn.stream.as_raw_fd();
        if conn.is_dead() || conn.is_aborted() {
            if conn.is_aborted() {
                let rst = conn.rst();
                self.push_control(rst);
            }
            if let Some(conn) = self.conns.remove(&key) {
                self.by_fd.remove(&fd);
                self.unwatch(fd);
                self.graveyard.push(conn.stream);
            }
            return;
        }
        let (read, write) = conn.interest();
        let pending = conn.has_pending_rx();
        let mut set = EventSet::empty();
        if read {
            set |= EventSet::IN;
        }
        if write {
            set |= EventSet::OUT;
        }
        self.watch(fd, set);
        if pending && self.in_ready.insert(key) {
            self.ready.push_back(key);
        }
    }

    fn push_control(&mut self, hdr: Header) {
        if self.control.len() < MAX_CONTROL_PACKETS {
            self.control.push_back(hdr);
        } else {
            self.log.warn(format_args!(
                "control queue full (the guest posts no rx buffers); dropped an RST for port {}",
                hdr.dst_port
            ));
        }
    }

    fn rst_for(&self, hdr: &Header) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }

    /// Handles a packet the guest sent.
    pub fn on_guest_packet<B: BitmapSlice>(&mut self, hdr: &Header, data: Option<&VolatileSlice<'_, B>>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            self.log.warn(format_args!(
                "dropped a packet from cid {} to cid {} (guest cid is {})",
                hdr.src_cid, hdr.dst_cid, self.guest_cid
            ));
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                let rst = self.rst_for(hdr);
                self.push_control(rst);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            match conn.on_guest(hdr, data) {
                Verdict::Ok if hdr.op == op::RW => {
                    let t = &mut self.traffic;
                    t.tx_packets = t.tx_packets.saturating_add(1);
                    t.tx_bytes = t.tx_bytes.saturating_add(data.map_or(0, |d| d.len() as u64));
                }
                Verdict::Ok => {}
                Verdict::Reset => conn.abort(),
                Verdict::Closed => {}
            }
            self.refresh(key);
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(hdr),
            op::RST => {}
            _ => {
                let rst = self.rst_for(hdr);
                self.push_control(rst);
            }
        }
    }

    /// The guest connects to host port `hdr.dst_port`: forward to
    /// `<uds_path>_<port>` if something listens there.
    fn guest_connect(&mut self, hdr: &Header) {
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), hdr.dst_port));
        let stream = if self.conns.len() >= self.limits.max_connections {
            self.log.warn(format_args!(
                "refused a guest connection to port {}: the VM has {} vsock connections, its limit",
                hdr.dst_port, self.limits.max_connections
            ));
            None
        } else {
            connect_nonblocking(&path).ok()
        };
        let Some(stream) = stream else {
            self.traffic.connections_refused = self.traffic.connections_refused.saturating_add(1);
            let rst = self.rst_for(hdr);
            self.push_control(rst);
            return;
        };
        self.traffic.connections_opened = self.traffic.connections_opened.saturating_add(1);
        let key = (hdr.dst_port, hdr.src_port);
        let conn = Connection::new_peer(stream, self.endpoint(), hdr.dst_port, hdr);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// Whether a packet is waiting for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Writes the next packet for the guest; data goes into `buf`.
    pub fn next_rx<B: BitmapSlice>(&mut self, buf: Option<&VolatileSlice<'_, B>>) -> Option<Header> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(hdr);
        }
        while let Some(key) = self.ready.pop_front() {
            self.in_ready.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let hdr = conn.next_rx(buf);
            self.refresh(key);
            if let Some(h) = &hdr {
                if h.op == op::RW {
                    self.traffic.rx_packets = self.traffic.rx_packets.saturating_add(1);
                    self.traffic.rx_bytes = self.traffic.rx_bytes.saturating_add(u64::from(h.len));
                }
                return hdr;
            }
        }
        None
    }

    /// Handles readiness of a host fd the muxer asked to watch.
    pub fn on_fd_event(&mut self, fd: RawFd, set: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept_clients();
        } else if self.clients.contains_key(&fd) {
            self.read_handshake(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP);
                conn.on_host_event(set.contains(EventSet::IN) || hup, set.contains(EventSet::OUT));
            }
            self.refresh(key);
        }
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_PENDING_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: the client sees the close
                    }
                    let fd = stream.as_raw_fd();
                    self.clients.insert(
                        fd,
                        Client {
                            stream,
                            line: Vec::with_capacity(MAX_HANDSHAKE_LEN),
                            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                            asked: None,
                        },
                    );
                    self.watch(fd, EventSet::IN);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    break;
                }
            }
        }
    }

    fn drop_client(&mut self, fd: RawFd) {
        if let Some(c) = self.clients.remove(&fd) {
            self.unwatch(fd);
            self.waiting.retain(|&(f, _)| f != fd);
            self.graveyard.push(c.stream);
        }
    }

    /// Reads the handshake one byte at a time, so nothing after the
    /// newline (the client's first data) is consumed here.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let verdict = loop {
            let mut byte = [0u8; 1];
            match client.stream.read(&mut byte) {
                Ok(0) => break Handshake::Invalid("closed"),
                Ok(_) => {
                    client.line.push(byte[0]);
                    match handshake::parse(&client.line) {
                        Handshake::Incomplete => continue,
                        done => break done,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Handshake::Incomplete,
                Err(_) => break Handshake::Invalid("read error"),
            }
        };
        match verdict {
            Handshake::Incomplete => {}
            Handshake::Invalid(why) => {
                log::debug!("vsock: refused a host client: {why}");
                self.drop_client(fd);
            }
            Handshake::Connect { port, .. } => {
                let now = Instant::now();
                if let Some(c) = self.clients.get_mut(&fd) {
                    // The answer is due CONN_TIMEOUT after this, held or not.
                    c.asked = Some(now);
                    c.deadline = now + CONN_TIMEOUT;
                }
                if self.held_until.is_some() {
                    // Not read from until released: its first data stays
                    // in the socket.
                    self.unwatch(fd);
                    self.waiting.push((fd, port));
                } else {
                    self.host_connect(fd, port);
                }
            }
        }
    }

    /// Holds new host connections until [`Muxer::release_host_connects`]
    /// or `until`, whichever comes first (a transport reset is on its way
    /// to the guest).
    pub fn hold_host_connects(&mut self, until: Instant) {
        self.held_until = Some(until);
    }

    /// Sends the held host connections' REQUESTs.
    pub fn release_host_connects(&mut self) {
        self.held_until = None;
        for (fd, port) in std::mem::take(&mut self.waiting) {
            self.host_connect(fd, port);
        }
    }

    /// The next local port a host connection would get.
    pub fn next_local_port(&self) -> u32 {
        self.next_local_port
    }

    /// Continues local ports from `port` (a restored snapshot's), so that
    /// no new connection reuses the ports of ones the guest may still
    /// hold. Out-of-range values start over at the base.
    pub fn set_next_local_port(&mut self, port: u32) {
        self.next_local_port = if port >= LOCAL_PORT_BASE {
            port
        } else {
            LOCAL_PORT_BASE
        };
    }

    /// Whether host connections are being held.
    pub fn is_holding(&self) -> bool {
        self.held_until.is_some()
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(LOCAL_PORT_BASE);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// A host client asked for guest port `port`: send the guest a REQUEST.
    fn host_connect(&mut self, fd: RawFd, port: u32) {
        if self.conns.len() >= self.limits.max_connections {
            self.traffic.connections_refused = self.traffic.connections_refused.saturating_add(1);
            self.drop_client(fd);
            return;
        }
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let local_port = self.alloc_local_port(port);
        let key = (local_port, port);
        let asked = client.asked.unwrap_or_else(Instant::now);
        let conn = Connection::new_local(client.stream, self.endpoint(), local_port, port, asked);
        self.traffic.connections_opened = self.traffic.connections_opened.saturating_add(1);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// Expires handshakes and connections past their deadline: a late
    /// handshake is closed, a late connection aborted (its host socket
    /// closed now, its RST queued for the guest). No deadline survives
    /// this call in the past.
    pub fn on_timer(&mut self, now: Instant) {
        if self.held_until.is_some_and(|until| now >= until) {
            log::debug!("vsock: the guest did not acknowledge the transport reset; connecting anyway");
            self.release_host_connects();
        }
        let late: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            self.drop_client(fd);
        }
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now))
            .map(|(&k, _)| k)
            .collect();
        for key in expired {
            if let Some(c) = self.conns.get_mut(&key) {
                c.abort();
            }
            self.refresh(key);
        }
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.values().map(|c| c.deadline);
        let conns = self.conns.values().filter_map(Connection::deadline);
        clients.chain(conns).chain(self.held_until).min()
    }

    /// Every fd the muxer watches (tests drive them all).
    #[cfg(test)]
    pub(crate) fn watched_fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self.watched.keys().copied().collect();
        v.push(self.listener.as_raw_fd());
        v
    }

    /// Drops every connection and pending client (device reset).
    pub fn reset(&mut self) {
        self.held_until = None;
        self.waiting.clear();
        let fds: Vec<RawFd> = self.clients.keys().copied().collect();
        for fd in fds {
            self.drop_client(fd);
        }
        for (_, conn) in self.conns.drain() {
            let fd = conn.stream.as_raw_fd();
            if self.watched.remove(&fd).is_some() {
                self.changes.push(Watch::Remove(fd));
            }
            self.graveyard.push(conn.stream);
        }
        self.by_fd.clear();
        self.ready.clear();
        self.in_ready.clear();
        self.control.clear();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}
