//! One vsock stream between a guest port and a host Unix socket: the
//! connection state machine and its credit-based flow control.
//!
//! Flow control (virtio 1.2, 5.10.6.3): every packet carries the sender's
//! receive buffer size (`buf_alloc`) and how many bytes it has consumed
//! (`fwd_cnt`). The device never sends the guest more than the guest has
//! room for, and refuses (RST) a guest that sends more than the device
//! advertised. So what the device buffers per connection is bounded by
//! its `buf_alloc` (the VM's per-connection vsock buffer), however slowly
//! the host reads.
//!
//! A connection that must end with an RST (a protocol violation, a
//! timeout, a broken host stream) is **aborted**: the muxer drops it and
//! closes the host stream at once, and the RST waits in the muxer's bounded
//! control queue for a guest rx buffer. Nothing host-side waits on the
//! guest.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::defs::*;

/// How long a host-initiated connection waits for the guest's RESPONSE,
/// and a closing one for the guest's RST.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or pending), waiting for RESPONSE.
    LocalInit,
    Established,
    /// Waiting for the guest to finish (RST) after a full shutdown.
    Closing,
    /// Over; the guest is owed an RST (the muxer queues it).
    Aborted,
    /// Over; nothing more to say.
    Dead,
}

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    shutdown: bool,
    credit_update: bool,
}

fn would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// What the muxer does after a guest packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Ok,
    /// Protocol violation: answer RST and close.
    Reset,
    /// The guest reset the connection: close without answering.
    Closed,
}

/// A connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Host port (ours).
    pub local_port: u32,
    /// Guest port.
    pub peer_port: u32,
    guest_cid: u64,
    /// The receive buffer advertised to the guest.
    buf_alloc: u32,
    state: State,
    pending: Pending,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes from the guest written to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host stream did not take yet.
    tx_buf: VecDeque<u8>,
    /// Bytes of the `OK <port>\n` reply still to write to the host client.
    reply: Vec<u8>,
    /// The host stream may have data (it polled readable).
    host_readable: bool,
    host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    guest_shut: u32,
    deadline: Option<Instant>,
}

/// Where a connection runs: the guest's CID and the buffer it gets.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The receive buffer advertised per connection (buf_alloc).
    pub buf_alloc: u32,
}

impl Connection {
    fn new(stream: UnixStream, ep: Endpoint, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            guest_cid: ep.guest_cid,
            buf_alloc: ep.buf_alloc,
            state: State::Established,
            pending: Pending::default(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            reply: Vec::new(),
            host_readable: false,
            host_eof: false,
            guest_shut: 0,
            deadline: None,
        }
    }

    /// A host client asked, at `asked`, to connect to guest port
    /// `peer_port`: the guest must answer by `asked` + [`CONN_TIMEOUT`].
    pub fn new_local(
        stream: UnixStream,
        ep: Endpoint,
        local_port: u32,
        peer_port: u32,
        asked: Instant,
    ) -> Self {
        let mut c = Self::new(stream, ep, local_port, peer_port);
        c.state = State::LocalInit;
        c.pending.request = true;
        c.deadline = Some(asked + CONN_TIMEOUT);
        c
    }

    /// The guest connected to host port `local_port`, which a host socket
    /// accepted.
    pub fn new_peer(stream: UnixStream, ep: Endpoint, local_port: u32, hdr: &Header) -> Self {
        let mut c = Self::new(stream, ep, local_port, hdr.src_port);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        c.pending.response = true;
        c
    }

    /// True once the connection is over and can be dropped.
    pub fn is_dead(&self) -> bool {
        self.state == State::Dead
    }

    /// True once the connection is over and the guest is owed an RST.
    pub fn is_aborted(&self) -> bool {
        self.state == State::Aborted
    }

    /// Ends the connection with an RST to the guest; nothing buffered is
    /// kept.
    pub fn abort(&mut self) {
        self.state = State::Aborted;
        self.pending = Pending::default();
        self.host_readable = false;
        self.tx_buf = VecDeque::new();
        self.reply = Vec::new();
        self.deadline = None;
    }

    /// Bytes of guest data buffered for the host.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// When the connection times out, if it can.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Space the guest has for our data.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established && self.guest_shut & SHUTDOWN_RCV == 0 && !self.host_eof
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        let p = &self.pending;
        p.request
            || p.response
            || p.shutdown
            || p.credit_update
            || (self.host_readable && self.can_send_data() && self.peer_credit() > 0)
    }

    /// Whether to watch the host stream for reading and writing.
    pub fn interest(&self) -> (bool, bool) {
        let read = !self.host_readable && self.can_send_data();
        let write = !self.tx_buf.is_empty() || !self.reply.is_empty();
        let live = !matches!(self.state, State::Dead | State::Aborted);
        (read && live, write && live)
    }

    /// Applies a packet from the guest.
    pub fn on_guest<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Verdict {
        if hdr.op == op::RST {
            self.state = State::Dead;
            return Verdict::Closed;
        }
        // The guest can only have consumed what we sent: a fwd_cnt beyond
        // that (which is also what one going backwards looks like) is a lie.
        let consumed = Wrapping(hdr.fwd_cnt) - self.peer_fwd_cnt;
        if consumed.0 > (self.rx_cnt - self.peer_fwd_cnt).0 {
            return Verdict::Reset;
        }
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.peer_buf_alloc = hdr.buf_alloc;

        match (hdr.op, self.state) {
            (op::RESPONSE, State::LocalInit) => {
                self.state = State::Established;
                self.deadline = None;
                self.reply = super::handshake::ok_reply(self.local_port);
                if !self.flush_host() {
                    self.abort();
                }
                Verdict::Ok
            }
            (op::RW, State::Established) if self.guest_shut & SHUTDOWN_SEND == 0 => self.on_data(data),
            (op::CREDIT_UPDATE, _) => Verdict::Ok,
            (op::CREDIT_REQUEST, _) => {
                self.pending.credit_update = true;
                Verdict::Ok
            }
            (op::SHUTDOWN, State::Established | State::Closing) => {
                self.guest_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if !self.flush_host() {
                    self.abort();
                    return Verdict::Ok;
                }
                if self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // The guest closed: finish writing what it sent, then RST.
                    self.state = State::Closing;
                    self.deadline.get_or_insert(Instant::now() + CONN_TIMEOUT);
                    if self.tx_buf.is_empty() {
                        self.abort();
                    }
                }
                Verdict::Ok
            }
            _ => Verdict::Reset,
        }
    }

    fn on_data<B: vm_memory::bitmap::BitmapSlice>(&mut self, data: Option<&VolatileSlice<'_, B>>) -> Verdict {
        let Some(data) = data else { return Verdict::Ok };
        if self.tx_buf.len() + data.len() > self.buf_alloc as usize {
            // More than the credit we gave.
            return Verdict::Reset;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() && self.reply.is_empty() {
            match self.stream.write_volatile(data) {
                Ok(n) => written = n,
                Err(e) if would_block(&e) => {}
                Err(_) => return Verdict::Reset,
            }
        }
        if written < data.len() {
            let mut rest = vec![0u8; data.len() - written];
            match data.offset(written).map(|s| s.copy_to(&mut rest[..])) {
                Ok(n) if n == rest.len() => self.tx_buf.extend(rest),
                _ => return Verdict::Reset,
            }
        }
        self.forwarded(written);
        Verdict::Ok
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= self.buf_alloc / 4 {
            self.pending.credit_update = true;
        }
    }

    /// Writes what is buffered to the host stream. Returns false on a
    /// broken stream.
    fn flush_host(&mut self) -> bool {
        while !self.reply.is_empty() {
            match self.stream.write(&self.reply) {
                Ok(n) => {
                    self.reply.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.state == State::Closing && self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // Everything the guest sent before closing was written.
            self.abort();
        }
        true
    }

    /// The host stream polled readable and/or writable. A stream that
    /// fails a write (the host closed it) aborts the connection: its
    /// buffered data can never be delivered.
    pub fn on_host_event(&mut self, readable: bool, writable: bool) {
        if readable {
            self.host_readable = true;
        }
        if writable && !self.flush_host() {
            self.abort();
        }
    }

    /// Time passed; returns true when the deadline expired (the muxer then
    /// aborts the connection).
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// The RST an aborted connection owes the guest.
    pub fn rst(&self) -> Header {
        self.header(op::RST, 0, 0)
    }

    fn header(&self, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Produces the next packet for the guest; data goes into `buf`.
    pub fn next_rx<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        buf: Option<&VolatileSlice<'_, B>>,
    ) -> Option<Header> {
        let hdr = self.next_rx_inner(buf)?;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        Some(hdr)
    }

    fn next_rx_inner<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        buf: Option<&VolatileSlice<'_, B>>,
    ) -> Option<Header> {
        if matches!(self.state, State::Dead | State::Aborted) {
            return None;
        }
        if std::mem::take(&mut self.pending.request) {
            return Some(self.header(op::REQUEST, 0, 0));
        }
        if std::mem::take(&mut self.pending.response) {
            return Some(self.header(op::RESPONSE, 0, 0));
        }
        if std::mem::take(&mut self.pending.shutdown) {
            return Some(self.header(op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0));
        }
        if self.host_readable && self.can_send_data() {
            let credit = self.peer_credit() as usize;
            if let Some(buf) = buf.filter(|_| credit > 0) {
                let n = credit.min(buf.len());
                match buf.subslice(0, n).map(|mut s| self.stream.read_volatile(&mut s)) {
                    Ok(Ok(0)) => {
                        // The host closed: tell the guest, then wait for its RST.
                        self.host_eof = true;
                        self.host_readable = false;
                        self.state = State::Closing;
                        self.deadline = Some(Instant::now() + CONN_TIMEOUT);
                        return Some(self.header(op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0));
                    }
                    Ok(Ok(read)) => {
                        self.rx_cnt += Wrapping(read as u32);
                        return Some(self.header(op::RW, 0, read as u32));
                    }
                    Ok(Err(e)) if would_block(&e) => self.host_readable = false,
                    _ => {
                        self.state = State::Dead;
                        return Some(self.header(op::RST, 0, 0));
                    }
                }
            }
        }
        if self.pending.credit_update {
            return Some(self.header(op::CREDIT_UPDATE, 0, 0));
        }
        None
    }
}
