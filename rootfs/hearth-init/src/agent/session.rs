//! One connection: the handshake, one request, then the request's own
//! exchange (docs/AGENT.md). Bytes come in through [`FrameBuf`]; every
//! frame is checked against the connection's state, and anything
//! malformed, oversized or out of order ends the connection with an ERROR
//! (`BadRequest`). Frames out go through the connection's [`OutQueue`].
//!
//! A connection ends in [`State::Closing`]: its last frames are flushed,
//! its sending side shut down, and what the peer still sends is read and
//! dropped until the peer closes or [`LINGER`] passes (so that a peer
//! still writing gets our ERROR, not a reset).

use std::time::{Duration, Instant};

use hearth_agent_protocol::{
    kind, v1_error_frame, ErrorInfo, Frame, FrameBuf, Hello, HelloOk, Message, MIN_VERSION, VERSION,
};

use super::errors;
use super::fd::Fd;
use super::outq::OutQueue;
use super::process::ConnId;
use super::reactor::Agent;
use super::transfer::{Download, ListDir, Upload};

/// How long a closing connection waits for the peer to close.
pub const LINGER: Duration = Duration::from_secs(2);
/// A closing connection whose peer takes nothing for this long is dropped.
pub const CLOSE_IDLE: Duration = Duration::from_secs(30);
/// What a version-1 host is told.
pub const V1_TEXT: &str = "this agent speaks protocol 2 (hearth-agent-protocol); update the host's hearth";

/// Where a connection is.
#[derive(Debug)]
pub enum State {
    /// Waiting for HELLO; the first 5 bytes are kept to recognise a
    /// version-1 host.
    Hello {
        /// The first bytes received.
        head: [u8; 5],
        /// How many of them.
        seen: usize,
    },
    /// Waiting for the request.
    Request,
    /// Attached to a process (SPAWN, ATTACH).
    Process(u64),
    /// WAIT for a process.
    Wait(u64),
    /// Receiving a file.
    Upload(Box<Upload>),
    /// Sending a file.
    Download(Box<Download>),
    /// Sending a directory listing.
    ListDir(Box<ListDir>),
    /// Done: flushing, then lingering.
    Closing {
        /// The EXIT of this detached process is queued: once sent, the
        /// process is forgotten.
        exit_of: Option<u64>,
        /// The sending side is shut down.
        shut: bool,
    },
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket, non-blocking.
    pub sock: Fd,
    /// Bytes received, cut into frames.
    pub inbuf: FrameBuf,
    /// Frames to send.
    pub out: OutQueue,
    /// Where it is.
    pub state: State,
    /// The handshake's or the request's deadline, or the closing one.
    pub deadline: Option<Instant>,
    /// The peer sent end of file (it may still receive).
    pub read_closed: bool,
    /// POLLRDHUP came while the socket was not read and the peer still
    /// receives (it only half-closed): no longer asked for, it would stay
    /// set; its end of file is read once reading resumes (and a Unix
    /// peer's close then still polls POLLHUP).
    pub rdhup_seen: bool,
    /// The socket took less than offered: wait for POLLOUT.
    pub write_blocked: bool,
    /// To be dropped.
    pub dead: bool,
}

impl Conn {
    /// A new connection, which must say HELLO by `deadline`.
    pub fn new(sock: Fd, deadline: Instant) -> Self {
        Self {
            sock,
            inbuf: FrameBuf::new(),
            out: OutQueue::default(),
            state: State::Hello {
                head: [0; 5],
                seen: 0,
            },
            deadline: Some(deadline),
            read_closed: false,
            rdhup_seen: false,
            write_blocked: false,
            dead: false,
        }
    }

    /// Whether it is closing.
    pub fn closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// Queues `message` and closes after it.
    pub fn finish(&mut self, message: &Message, now: Instant) {
        self.out.push(message);
        self.close(now);
    }

    /// Closes after what is queued (nothing more will be queued).
    pub fn close(&mut self, now: Instant) {
        if !self.closing() {
            // Dropping the old state ends it (an upload's temporary file
            // is removed).
            self.state = State::Closing {
                exit_of: None,
                shut: false,
            };
            self.deadline = Some(now + CLOSE_IDLE);
        }
    }
}

/// The version both speak, or the Version error.
pub fn handshake(hello: &Hello) -> Result<HelloOk, ErrorInfo> {
    let newest = hello.version.min(VERSION);
    let oldest = hello.min_version.max(MIN_VERSION);
    if newest < oldest || hello.min_version > hello.version {
        return Err(errors::plain(
            hearth_agent_protocol::ErrorKind::Version,
            format!(
                "the host speaks protocol versions {} to {}, this agent {MIN_VERSION} to {VERSION}",
                hello.min_version, hello.version
            ),
        ));
    }
    Ok(HelloOk {
        version: newest,
        agent: format!("hearth-init {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Version 1's largest frame.
const V1_MAX_FRAME: u32 = 64 << 20;

/// Whether a connection's first bytes (fewer than a frame header) may
/// still be a version-1 request's.
pub fn may_be_v1(head: &[u8]) -> bool {
    match head.first_chunk::<4>() {
        Some(len) => (1..=V1_MAX_FRAME).contains(&u32::from_le_bytes(*len)),
        None => true,
    }
}

/// Whether the first bytes of a connection are a version-1 request.
pub fn is_v1_request(head: &[u8]) -> bool {
    head.get(4).is_some_and(|k| kind::V1_REQUESTS.contains(k))
}

impl Agent {
    /// Reads what the socket has and handles the frames.
    pub(super) fn conn_read(&mut self, cid: ConnId, conn: &mut Conn, now: Instant) {
        let got = conn.sock.read(&mut self.scratch);
        let n = match got {
            Ok(0) => return self.conn_eof(cid, conn),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => return self.conn_gone(cid, conn),
        };
        if conn.closing() {
            // Lingering: dropped.
            return;
        }
        let bytes = self.scratch.get(..n).unwrap_or_default();
        if let State::Hello { head, seen } = &mut conn.state {
            for (slot, b) in head.iter_mut().skip(*seen).zip(bytes) {
                *slot = *b;
                *seen += 1;
            }
            if is_v1_request(head.get(..*seen).unwrap_or_default()) {
                conn.out.push_frame(v1_error_frame(V1_TEXT));
                conn.close(now);
                return;
            }
            if *seen < head.len() && may_be_v1(head.get(..*seen).unwrap_or_default()) {
                // Not a whole frame header yet, and its length may be a
                // version-1 one: the kind byte tells.
                conn.inbuf.extend(bytes);
                return;
            }
        }
        conn.inbuf.extend(bytes);
        self.conn_frames(cid, conn, now);
    }

    /// Handles the whole frames received.
    pub(super) fn conn_frames(&mut self, cid: ConnId, conn: &mut Conn, now: Instant) {
        while !conn.closing() && !conn.dead {
            match conn.inbuf.next_frame() {
                Ok(Some(frame)) => self.conn_frame(cid, conn, &frame, now),
                Ok(None) => break,
                Err(bad) => self.conn_fail(cid, conn, errors::bad_request(bad), now),
            }
        }
        if conn.closing() {
            // Nothing more is read as frames: give the memory back.
            conn.inbuf = FrameBuf::new();
        }
    }

    fn conn_frame(&mut self, cid: ConnId, conn: &mut Conn, frame: &Frame, now: Instant) {
        let message = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => return self.conn_fail(cid, conn, errors::bad_request(e), now),
        };
        match (&mut conn.state, message) {
            (State::Hello { .. }, Message::Hello(hello)) => match handshake(&hello) {
                Ok(ok) => {
                    conn.out.push(&Message::HelloOk(ok));
                    conn.state = State::Request;
                    conn.deadline = Some(now + self.cfg.hello_timeout);
                }
                Err(e) => conn.finish(&Message::Error(e), now),
            },
            (State::Hello { .. }, m) => {
                let e =
                    errors::bad_request(format!("expected HELLO, got frame kind {:#04x}", m.to_frame().0));
                self.conn_fail(cid, conn, e, now);
            }
            (State::Request, m) if m.is_request() => {
                conn.deadline = None;
                self.request(cid, conn, m, now);
            }
            (State::Process(id), m) => {
                let id = *id;
                if let Err(e) = self.process_frame(id, m) {
                    self.conn_fail(cid, conn, e, now);
                }
            }
            (State::Upload(_), Message::Data(data)) => {
                let State::Upload(up) = &mut conn.state else {
                    return;
                };
                if let Err(e) = up.write(&data) {
                    self.conn_fail(cid, conn, e, now);
                }
            }
            (State::Upload(_), Message::DataEnd) => {
                let state = std::mem::replace(&mut conn.state, State::Request);
                let State::Upload(up) = state else {
                    return;
                };
                match up.finish() {
                    Ok(bytes) => conn.finish(&Message::Uploaded(bytes), now),
                    Err(e) => conn.finish(&Message::Error(e), now),
                }
            }
            (_, m) => {
                let e = errors::bad_request(format!("unexpected frame kind {:#04x} here", m.to_frame().0));
                self.conn_fail(cid, conn, e, now);
            }
        }
    }

    /// Frames from a process's client: stdin, resize, kill.
    fn process_frame(&mut self, id: u64, message: Message) -> Result<(), ErrorInfo> {
        let Some(p) = self.procs.get_mut(id) else {
            return Ok(());
        };
        match message {
            Message::Stdin(data) if p.stdin_open => {
                p.push_stdin(&data);
                p.write_stdin();
            }
            Message::StdinClose if p.stdin_open => {
                p.close_stdin();
                p.write_stdin();
            }
            // Closing what is closed (or was never open) is harmless: a
            // client attaching to a detached process cannot know whether
            // it has a stdin, and closes it when its own input ends.
            Message::StdinClose => {}
            Message::Stdin(_) => {
                return Err(errors::bad_request("STDIN without stdin, or after STDIN_CLOSE"));
            }
            Message::Resize(size) if p.is_tty => p.resize(size),
            Message::Resize(_) => return Err(errors::bad_request("RESIZE of a process without a terminal")),
            Message::Kill(signal) => match p.signal(signal) {
                Ok(()) => {}
                // It has exited: nothing to kill.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(errors::io("kill", format!("process {id}").as_bytes(), &e)),
            },
            m => {
                return Err(errors::bad_request(format!(
                    "unexpected frame kind {:#04x} in a process's stream",
                    m.to_frame().0
                )))
            }
        }
        Ok(())
    }

    /// Ends the connection with `error`.
    pub(super) fn conn_fail(&mut self, cid: ConnId, conn: &mut Conn, error: ErrorInfo, now: Instant) {
        self.conn_detach(cid, conn);
        conn.finish(&Message::Error(error), now);
    }

    /// The peer sent end of file.
    fn conn_eof(&mut self, cid: ConnId, conn: &mut Conn) {
        conn.read_closed = true;
        // A peer that only half-closed still receives what we send.
        let sending = match conn.state {
            State::Process(_) | State::Wait(_) | State::Download(_) | State::ListDir(_) => true,
            State::Closing { .. } => !conn.out.is_empty(),
            // It owes us frames: over.
            State::Hello { .. } | State::Request | State::Upload(_) => false,
        };
        if !sending || conn.sock.peer_gone() {
            self.conn_gone(cid, conn);
        }
    }

    /// The peer is gone: drop the connection (a process attached to it is
    /// killed unless detached).
    pub(super) fn conn_gone(&mut self, cid: ConnId, conn: &mut Conn) {
        self.conn_detach(cid, conn);
        conn.out.clear();
        conn.dead = true;
    }

    /// Unhooks the connection from its process, if any: the process is
    /// killed unless detached; a detached one keeps its output in its
    /// ring until the next ATTACH. A queued EXIT is delivered once the
    /// queue is empty (it is the last frame); otherwise the process is
    /// kept for another ATTACH.
    pub(super) fn conn_detach(&mut self, cid: ConnId, conn: &mut Conn) {
        let id = match &mut conn.state {
            State::Process(id) => *id,
            State::Closing { exit_of, .. } => {
                let Some(id) = exit_of.take() else {
                    return;
                };
                if conn.out.is_empty() {
                    if self.procs.get(id).is_some_and(|p| p.exit_sent) {
                        self.procs.remove(id);
                    }
                } else if let Some(p) = self.procs.get_mut(id) {
                    p.exit_sent = false;
                    self.procs.keep(id);
                }
                return;
            }
            _ => return,
        };
        conn.state = State::Closing {
            exit_of: None,
            shut: false,
        };
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        if p.client != Some(cid) {
            return;
        }
        p.client = None;
        p.announced = false;
        if p.detached {
            if p.finished() {
                self.procs.keep(id);
            }
        } else if p.alive() {
            let _ = p.signal(libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_agent_protocol::ErrorKind;

    fn hello(version: u32, min_version: u32) -> Hello {
        Hello {
            version,
            min_version,
            client: "test".into(),
        }
    }

    #[test]
    fn versions_must_overlap() {
        assert_eq!(handshake(&hello(2, 2)).unwrap().version, 2);
        assert_eq!(handshake(&hello(5, 1)).unwrap().version, 2);
        assert!(handshake(&hello(2, 0)).is_ok());
        for (v, min) in [(1, 1), (3, 3), (9, 4), (1, 3)] {
            let e = handshake(&hello(v, min)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Version, "{v} {min}");
        }
        assert_eq!(
            handshake(&hello(3, 3)).unwrap_err().message,
            "the host speaks protocol versions 3 to 3, this agent 2 to 2"
        );
    }

    #[test]
    fn version_1_requests_are_recognised_by_their_kind() {
        // A version-1 EXEC of 64 MiB: the length alone would be refused.
        let mut head = (64u32 << 20).to_le_bytes().to_vec();
        head.push(0x01);
        assert!(is_v1_request(&head));
        head[4] = 0x03;
        assert!(is_v1_request(&head));
        head[4] = kind::HELLO;
        assert!(!is_v1_request(&head));
        assert!(!is_v1_request(&head[..4]));
        // Undecided until the kind byte, unless no version-1 frame has
        // such a length.
        assert!(may_be_v1(&head[..3]));
        assert!(may_be_v1(&head[..4]));
        assert!(!may_be_v1(&[0, 0, 0, 0]));
        assert!(!may_be_v1(&(V1_MAX_FRAME + 1).to_le_bytes()));
    }
}
