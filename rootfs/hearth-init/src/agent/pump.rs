//! Moving bytes between processes and connections, and the work each
//! turn of the loop ends with (see `reactor`):
//!
//! - process events: the status pipe (exec confirmed or failed), the
//!   pidfd (exit), output ready, stdin writable;
//! - a process's output goes to its client's queue once the client got
//!   STARTED and the kept output was replayed, else to its ring (so order
//!   is kept across ATTACH);
//! - after the exit, what is left in the pipes is read without waiting
//!   (at most 1 MiB), then EXIT is queued and the connection closes;
//! - connections produce (download, listing) while they have room, flush,
//!   and close when done.

use std::time::Instant;

use hearth_agent_protocol::{frame, kind, Message, Started, MAX_CHUNK};

use super::command;
use super::outq::Flushed;
use super::process::{ConnId, Phase, Process, Read};
use super::reactor::Agent;
use super::ring::Stream;
use super::session::{Conn, State, CLOSE_IDLE, LINGER};
use super::spawn::{self, Status};

/// Flush rounds per connection per turn (a fast reader of a big download
/// must not starve the others).
const ROUNDS: usize = 4;

fn frame_kind(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => kind::STDOUT,
        Stream::Stderr => kind::STDERR,
    }
}

/// Whether output of `p` may go to `conn` now (else it waits or goes to
/// the ring).
fn direct(p: &Process, conn: &Conn) -> bool {
    p.announced && p.ring.is_empty() && conn.out.has_room()
}

/// Sends or keeps a chunk of output.
fn route(p: &mut Process, conn: Option<&mut Conn>, stream: Stream, data: &[u8]) {
    match conn {
        Some(conn) if p.announced && p.ring.is_empty() => {
            conn.out.push_frame(frame::encode(frame_kind(stream), data))
        }
        _ => p.ring.push(stream, data),
    }
}

impl Agent {
    /// The status pipe of a starting process is readable.
    pub(super) fn on_status(&mut self, id: u64, now: Instant) {
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        let Phase::Starting { status, .. } = &p.phase else {
            return;
        };
        match spawn::read_status(status) {
            Status::Pending => {}
            Status::Started => {
                p.phase = Phase::Running;
                let no_pidfd = p.pidfd.is_none();
                self.announce(id, now);
                if no_pidfd {
                    // Its SIGCHLD may have come while it was starting.
                    self.on_exit(id, now);
                }
            }
            Status::Failed(stage, errno) => {
                let Phase::Starting { cmd, .. } = std::mem::replace(&mut p.phase, Phase::Running) else {
                    return;
                };
                let error = command::failure(&cmd, p.user, stage, errno);
                // It exits right after reporting.
                spawn::reap_blocking(p.pid);
                let client = p.client;
                self.procs.remove(id);
                // Its client and its waiters get the error.
                for (&cid, conn) in &mut self.conns {
                    if Some(cid) == client || matches!(conn.state, State::Wait(w) if w == id) {
                        conn.finish(&Message::Error(error.clone()), now);
                    }
                }
            }
        }
    }

    /// STARTED (and OUTPUT_DROPPED) to the attached client, once the exec
    /// is confirmed. A spawn with `release` then lets go of its client:
    /// from the first byte, output goes to the ring and the exit is kept.
    pub(super) fn announce(&mut self, id: u64, now: Instant) {
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        if p.announced || matches!(p.phase, Phase::Starting { .. }) {
            return;
        }
        let Some(conn) = p.client.and_then(|c| self.conns.get_mut(&c)) else {
            return;
        };
        conn.out.push(&Message::Started(Started { id, pid: p.pid }));
        let dropped = p.ring.take_dropped();
        if dropped > 0 {
            conn.out.push(&Message::OutputDropped(dropped));
        }
        if p.release {
            p.release = false;
            p.client = None;
            conn.close(now);
        } else {
            p.announced = true;
        }
    }

    /// The pidfd of a process is readable (or SIGCHLD came): reap it and
    /// answer its WAITs.
    pub(super) fn on_exit(&mut self, id: u64, now: Instant) {
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        if !p.alive() || !p.try_reap() {
            return;
        }
        let Some(info) = p.exit() else {
            return;
        };
        for conn in self.conns.values_mut() {
            if matches!(conn.state, State::Wait(w) if w == id) {
                conn.finish(&Message::Exit(info), now);
            }
        }
    }

    /// A process's stdout or stderr (or terminal) is readable.
    pub(super) fn on_output(&mut self, id: u64, stream: Stream) {
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        let conn = p.client.and_then(|c| self.conns.get_mut(&c));
        if conn.as_deref().is_some_and(|c| !direct(p, c)) {
            return;
        }
        let buf = self.scratch.get_mut(..MAX_CHUNK).unwrap_or_default();
        match p.read_out(stream, buf) {
            Read::Data(n) => route(p, conn, stream, buf.get(..n).unwrap_or_default()),
            Read::Empty => {}
            Read::End => p.close_out(stream),
        }
    }

    /// A process's stdin (or terminal) is writable.
    pub(super) fn on_stdin(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(id) {
            p.write_stdin();
        }
    }

    /// The end of every turn.
    pub(super) fn pump(&mut self, now: Instant) {
        self.busy = false;
        for id in self.procs.ids() {
            self.pump_unattached(id);
        }
        let cids: Vec<ConnId> = self.conns.keys().copied().collect();
        for cid in cids {
            self.pump_conn(cid, now);
        }
    }

    /// A process nobody reads: after its exit, drains its pipes into its
    /// ring, then forgets it (or, detached, keeps it for an ATTACH).
    /// Attached ones are pumped by their connection ([`Agent::fill`]).
    fn pump_unattached(&mut self, id: u64) {
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        if p.client.is_some_and(|c| self.conns.contains_key(&c)) {
            return;
        }
        drain(p, None, &mut self.scratch);
        if !p.finished() {
            return;
        }
        if !p.detached {
            self.procs.remove(id);
        } else if !p.kept && !p.exit_sent {
            self.procs.keep(id);
        }
    }

    /// Moves what an attached process has for `conn`: kept output, then
    /// after the exit what is left in its pipes, then EXIT (which closes
    /// the connection). Returns whether more waits for room.
    fn fill(&mut self, id: u64, conn: &mut Conn, now: Instant) -> bool {
        let Some(p) = self.procs.get_mut(id) else {
            return false;
        };
        if !p.announced {
            return false;
        }
        while conn.out.has_room() {
            let Some((stream, data)) = p.ring.pop(MAX_CHUNK.min(conn.out.room())) else {
                break;
            };
            conn.out.push_frame(frame::encode(frame_kind(stream), &data));
        }
        drain(p, Some(&mut *conn), &mut self.scratch);
        if !p.finished() {
            return !p.ring.is_empty() || (!p.alive() && p.outputs_open());
        }
        if !p.ring.is_empty() || p.exit_sent {
            return !p.ring.is_empty();
        }
        let Some(info) = p.exit() else {
            return false;
        };
        conn.out.push(&Message::Exit(info));
        p.exit_sent = true;
        p.client = None;
        p.announced = false;
        let detached = p.detached;
        conn.close(now);
        if let State::Closing { exit_of, .. } = &mut conn.state {
            // A detached process is forgotten once this is sent.
            *exit_of = detached.then_some(id);
        }
        if !detached {
            self.procs.remove(id);
        }
        false
    }

    /// Produces, flushes and closes one connection.
    fn pump_conn(&mut self, cid: ConnId, now: Instant) {
        let Some(mut conn) = self.conns.remove(&cid) else {
            return;
        };
        if !conn.dead {
            self.pump_conn_inner(cid, &mut conn, now);
        }
        self.conns.insert(cid, conn);
    }

    fn pump_conn_inner(&mut self, cid: ConnId, conn: &mut Conn, now: Instant) {
        for round in 0..ROUNDS {
            let more = self.produce(conn, now);
            if conn.out.is_empty() || conn.write_blocked {
                break;
            }
            let before = conn.out.len();
            match conn.out.flush(&conn.sock) {
                Ok(Flushed::All) => {}
                Ok(Flushed::Blocked) => conn.write_blocked = true,
                Err(_) => return self.conn_gone(cid, conn),
            }
            if matches!(conn.state, State::Closing { shut: false, .. }) && conn.out.len() < before {
                // Progress: the closing connection's peer is reading.
                conn.deadline = Some(now + CLOSE_IDLE);
            }
            if conn.write_blocked || !more {
                break;
            }
            if round + 1 == ROUNDS {
                // More to move and the socket takes it: come back at once.
                self.busy = true;
            }
        }
        if let State::Closing { exit_of, shut } = &mut conn.state {
            if conn.out.is_empty() {
                if let Some(id) = exit_of.take() {
                    // Delivered: the process is forgotten.
                    if self.procs.get(id).is_some_and(|p| p.exit_sent) {
                        self.procs.remove(id);
                    }
                }
                if !*shut {
                    *shut = true;
                    let _ = conn.sock.shutdown_write();
                    conn.deadline = Some(now + LINGER);
                    if conn.read_closed {
                        conn.dead = true;
                    }
                }
            }
        }
    }

    /// Queues what the connection's request produces (a process's kept
    /// or drained output and EXIT, download or listing chunks) while it
    /// has room. Returns whether more waits for room.
    fn produce(&mut self, conn: &mut Conn, now: Instant) -> bool {
        if let State::Process(id) = conn.state {
            return self.fill(id, conn, now);
        }
        let mut done = false;
        match &mut conn.state {
            State::Download(d) => {
                while conn.out.has_room() && !done {
                    let buf = self.scratch.get_mut(..MAX_CHUNK).unwrap_or_default();
                    match d.read(buf) {
                        Ok(0) => {
                            conn.out.push(&Message::DataEnd);
                            done = true;
                        }
                        Ok(n) => conn
                            .out
                            .push_frame(frame::encode(kind::DATA, buf.get(..n).unwrap_or_default())),
                        Err(e) => {
                            conn.out.push(&Message::Error(e));
                            done = true;
                        }
                    }
                }
            }
            State::ListDir(l) => {
                while conn.out.has_room() && !done {
                    match l.next_chunk() {
                        Ok(chunk) => {
                            done = !chunk.more;
                            conn.out.push(&Message::DirEntries(chunk));
                        }
                        Err(e) => {
                            conn.out.push(&Message::Error(e));
                            done = true;
                        }
                    }
                }
            }
            _ => return false,
        }
        if done {
            conn.close(now);
        }
        !done
    }
}

/// After its exit, reads what is left in a process's pipes without
/// waiting (at most [`DRAIN_BUDGET`](super::process::DRAIN_BUDGET) in
/// all), to its client while it has room, else to its ring; a pipe empty
/// now, ended or over budget is closed: what background processes write
/// later is dropped.
fn drain(p: &mut Process, mut conn: Option<&mut Conn>, scratch: &mut [u8]) {
    if p.alive() {
        return;
    }
    for stream in [Stream::Stdout, Stream::Stderr] {
        while p.out_fd(stream).is_some() {
            if conn.as_deref().is_some_and(|c| !direct(p, c)) {
                // Waits for room.
                return;
            }
            let max = MAX_CHUNK.min(p.drain_left);
            let buf = scratch.get_mut(..max).unwrap_or_default();
            match p.read_out(stream, buf) {
                Read::Data(n) if max > 0 => {
                    p.drain_left -= n;
                    route(p, conn.as_deref_mut(), stream, buf.get(..n).unwrap_or_default());
                }
                _ => p.close_out(stream),
            }
        }
    }
}
