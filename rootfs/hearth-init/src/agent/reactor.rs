//! The event loop: one thread, one `poll(2)` per turn over the listener,
//! every connection, every process's pipes (or terminal), status pipe and
//! pidfd, and the signal descriptor. A turn:
//!
//! 1. `poll`, with a timeout to the nearest deadline (a handshake, a
//!    process's timeout, a closing connection, the idle generation check);
//! 2. handle what is ready: accept, read and handle frames, read process
//!    output, write stdin, reap exits;
//! 3. deadlines;
//! 4. pump (`pump.rs`): replay kept output, drain exited processes, queue
//!    EXITs, produce download and listing chunks, flush every connection
//!    that is not blocked, close finished ones;
//! 5. build the next poll set: a descriptor is polled only when its
//!    bytes have somewhere to go (a process's pipes only while its client
//!    has less than 256 KiB queued; a socket only while its process's
//!    stdin backlog is small).
//!
//! Every descriptor is non-blocking (regular files aside), so a spurious
//! wake-up costs one EAGAIN. No timer ticks when nothing is due.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

use super::fd::{self, Fd};
use super::generation::Watch;
use super::listener::Listener;
use super::process::{ConnId, Phase, Table, STDIN_HIGH};
use super::ring::Stream;
use super::session::{Conn, State};
use crate::console;

/// Connections at once at most; more are accepted and closed at once.
pub const MAX_CONNS: usize = 512;
/// Pause after accept fails for lack of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Bytes read from a socket at a time (two data frames).
const READ_SIZE: usize = 128 << 10;

/// Settings the loop needs.
#[derive(Debug)]
pub struct Config {
    /// A connection must complete HELLO (then send its request) within.
    pub hello_timeout: Duration,
    /// The agent's environment, for SPAWNs without one.
    pub agent_env: Vec<CString>,
    /// The descriptor limit children get back (the agent raised its own).
    pub nofile: Option<libc::rlimit>,
    /// The agent's umask.
    pub umask: u32,
}

/// What a poll entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Listener,
    Signals,
    Conn(ConnId),
    Status(u64),
    Exit(u64),
    Out(u64, Stream),
    Stdin(u64),
    /// A terminal's master: output and stdin.
    Pty(u64),
}

/// The agent's state.
#[derive(Debug)]
pub struct Agent {
    pub(super) listener: Listener,
    pub(super) conns: BTreeMap<ConnId, Conn>,
    pub(super) procs: Table,
    pub(super) watch: Watch,
    pub(super) cfg: Config,
    /// Read buffer shared by every read.
    pub(super) scratch: Vec<u8>,
    /// The generation was checked during this turn.
    pub(super) checked: bool,
    /// Temporary upload names.
    pub(super) upload_seq: u64,
    /// Work is left that needs no event (poll without waiting).
    pub(super) busy: bool,
    signals: Option<Fd>,
    next_conn: ConnId,
    accept_after: Option<Instant>,
    pollfds: Vec<libc::pollfd>,
    tokens: Vec<Token>,
}

impl Agent {
    /// An agent on `listener`. `signals` is a signalfd for SIGTERM and
    /// SIGINT (shut down) and SIGCHLD (reap processes without a pidfd).
    pub fn new(listener: Listener, watch: Watch, cfg: Config, signals: Option<Fd>) -> Self {
        Self {
            listener,
            conns: BTreeMap::new(),
            procs: Table::default(),
            watch,
            cfg,
            scratch: vec![0; READ_SIZE],
            checked: false,
            upload_seq: 0,
            busy: false,
            signals,
            next_conn: 0,
            accept_after: None,
            pollfds: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// Serves forever.
    pub fn run(&mut self) -> io::Result<std::convert::Infallible> {
        loop {
            self.build();
            let timeout = self.timeout(Instant::now());
            let nfds = libc::nfds_t::try_from(self.pollfds.len()).unwrap_or(0);
            // SAFETY: `pollfds` is a valid array of `nfds` pollfd structs
            // that poll(2) may update for the duration of the call.
            let rc = unsafe { libc::poll(self.pollfds.as_mut_ptr(), nfds, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let now = Instant::now();
            self.checked = false;
            if rc > 0 {
                self.dispatch(now);
            }
            self.deadlines(now);
            self.pump(now);
            self.sweep();
        }
    }

    /// Drops the dead connections, unhooking them from their processes.
    fn sweep(&mut self) {
        let dead: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead)
            .map(|(&cid, _)| cid)
            .collect();
        for cid in dead {
            if let Some(mut conn) = self.conns.remove(&cid) {
                self.conn_detach(cid, &mut conn);
            }
        }
    }

    /// The generation check before answering a request (once per turn:
    /// requests of one turn were all received before it).
    pub(super) fn check_generation(&mut self, now: Instant) {
        if !self.checked {
            self.checked = true;
            self.watch.check(now);
        }
    }

    /// The poll set for the next turn.
    fn build(&mut self) {
        self.pollfds.clear();
        self.tokens.clear();
        let add = |pollfds: &mut Vec<libc::pollfd>, tokens: &mut Vec<Token>, fd: &Fd, events, token| {
            pollfds.push(libc::pollfd {
                fd: fd.raw(),
                events,
                revents: 0,
            });
            tokens.push(token);
        };
        let (pf, tk) = (&mut self.pollfds, &mut self.tokens);
        if self.accept_after.is_none() {
            add(pf, tk, self.listener.fd(), libc::POLLIN, Token::Listener);
        }
        if let Some(signals) = &self.signals {
            add(pf, tk, signals, libc::POLLIN, Token::Signals);
        }
        for (&cid, conn) in &self.conns {
            let mut events = 0;
            let wants_input = !conn.read_closed
                && match conn.state {
                    State::Process(id) => self.procs.get(id).is_none_or(|p| p.stdin_buf.len() < STDIN_HIGH),
                    _ => true,
                };
            if wants_input {
                events |= libc::POLLIN;
            }
            if conn.write_blocked {
                events |= libc::POLLOUT;
            }
            // The peer's close must be seen also while the socket is not
            // read (its process's stdin backlog is full), or a client that
            // went away would leave its process running. A Unix socket
            // then polls POLLHUP, but a vsock one does not (POLLHUP needs
            // our own shutdown too): it polls POLLIN, which cannot be
            // asked for here (it stays set while bytes wait unread), and
            // POLLRDHUP.
            if !conn.read_closed && !conn.rdhup_seen {
                events |= libc::POLLRDHUP;
            }
            // Even with no events: POLLHUP and POLLERR still come.
            add(pf, tk, &conn.sock, events, Token::Conn(cid));
        }
        for p in self.procs.iter() {
            let id = p.id;
            if let Phase::Starting { status, .. } = &p.phase {
                add(pf, tk, status, libc::POLLIN, Token::Status(id));
                continue;
            }
            if let Some(pidfd) = &p.pidfd {
                add(pf, tk, pidfd, libc::POLLIN, Token::Exit(id));
            }
            if !p.alive() {
                // Exited: its pipes are drained by the pump, not polled.
                continue;
            }
            // Output has somewhere to go: the ring, or a client with room
            // once the ring is replayed.
            let room = match p.client.and_then(|c| self.conns.get(&c)) {
                Some(conn) => p.announced && p.ring.is_empty() && conn.out.has_room(),
                None => p.client.is_none(),
            };
            let pending_in = !p.stdin_buf.is_empty();
            if let Some(master) = &p.master {
                // After EIO (every slave descriptor closed) it is not
                // read until the exit.
                let reading = room && !p.master_ended;
                let events =
                    (if reading { libc::POLLIN } else { 0 }) | (if pending_in { libc::POLLOUT } else { 0 });
                if events != 0 {
                    add(pf, tk, master, events, Token::Pty(id));
                }
                continue;
            }
            if room {
                if let Some(out) = &p.stdout {
                    add(pf, tk, out, libc::POLLIN, Token::Out(id, Stream::Stdout));
                }
                if let Some(err) = &p.stderr {
                    add(pf, tk, err, libc::POLLIN, Token::Out(id, Stream::Stderr));
                }
            }
            if let (true, Some(stdin)) = (pending_in, &p.stdin) {
                add(pf, tk, stdin, libc::POLLOUT, Token::Stdin(id));
            }
        }
    }

    /// Milliseconds to the nearest deadline (-1: none; 0: busy).
    fn timeout(&self, now: Instant) -> libc::c_int {
        if self.busy {
            return 0;
        }
        let deadlines = self
            .conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.procs.iter().filter_map(|p| p.deadline))
            .chain(self.watch.next_check())
            .chain(self.accept_after);
        match deadlines.min() {
            None => -1,
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                // Round up: waking early would only loop.
                let ms = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        }
    }

    /// Handles the ready entries.
    fn dispatch(&mut self, now: Instant) {
        for i in 0..self.pollfds.len() {
            let (Some(pfd), Some(&token)) = (self.pollfds.get(i), self.tokens.get(i)) else {
                break;
            };
            let revents = pfd.revents;
            if revents == 0 {
                continue;
            }
            let requested = pfd.events;
            match token {
                Token::Listener => self.accept(now),
                Token::Signals => self.on_signal(),
                Token::Conn(cid) => self.on_conn(cid, revents, requested, now),
                Token::Status(id) => self.on_status(id, now),
                Token::Exit(id) => self.on_exit(id, now),
                Token::Out(id, stream) => self.on_output(id, stream),
                Token::Stdin(id) => self.on_stdin(id),
                Token::Pty(id) => {
                    if revents & libc::POLLOUT != 0 {
                        self.on_stdin(id);
                    }
                    if revents & !libc::POLLOUT != 0 && requested & libc::POLLIN != 0 {
                        self.on_output(id, Stream::Stdout);
                    }
                }
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        // A few per turn, so a flood cannot starve the rest.
        for _ in 0..16 {
            match self.listener.accept() {
                Ok(Some(sock)) => {
                    if self.conns.len() >= MAX_CONNS {
                        // Over the limit: closed at once.
                        continue;
                    }
                    self.next_conn += 1;
                    let deadline = now + self.cfg.hello_timeout;
                    self.conns.insert(self.next_conn, Conn::new(sock, deadline));
                }
                Ok(None) => return,
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        self.accept_after = Some(now + ACCEPT_BACKOFF);
                    }
                    console::line(&format!("hearth-init: agent: accept: {}", fd::error_text(&e)));
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, cid: ConnId, revents: libc::c_short, requested: libc::c_short, now: Instant) {
        let Some(mut conn) = self.conns.remove(&cid) else {
            return;
        };
        if revents & libc::POLLOUT != 0 {
            conn.write_blocked = false;
        }
        let hangup = libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP;
        if requested & libc::POLLIN != 0 && revents & (libc::POLLIN | hangup) != 0 {
            self.conn_read(cid, &mut conn, now);
        } else if revents & hangup != 0 {
            if conn.sock.peer_gone() {
                self.conn_gone(cid, &mut conn);
            } else if revents & libc::POLLRDHUP != 0 {
                // Half-closed: its end of file is read once reading
                // resumes.
                conn.rdhup_seen = true;
            }
        }
        self.conns.insert(cid, conn);
    }

    fn on_signal(&mut self) {
        let Some(signals) = &self.signals else {
            return;
        };
        // SAFETY: `signalfd_siginfo` is plain old data; zeroes are valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: the buffer is a valid, writable signalfd_siginfo.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                std::ptr::addr_of_mut!(info).cast::<u8>(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
        if signals.read(buf).is_err() {
            return;
        }
        let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
        if signo == libc::SIGCHLD {
            let now = Instant::now();
            let waiting: Vec<u64> = self
                .procs
                .iter()
                .filter(|p| p.alive() && p.pidfd.is_none() && !matches!(p.phase, Phase::Starting { .. }))
                .map(|p| p.id)
                .collect();
            for id in waiting {
                self.on_exit(id, now);
            }
            return;
        }
        // SIGTERM, SIGINT: stop, taking every process group along.
        console::line(&format!("hearth-init: agent: signal {signo}: stopping"));
        for p in self.procs.iter() {
            let _ = p.signal(libc::SIGKILL);
        }
        self.listener.remove_socket_file();
        std::process::exit(0);
    }

    fn deadlines(&mut self, now: Instant) {
        for conn in self.conns.values_mut() {
            if conn.deadline.is_none_or(|d| d > now) {
                continue;
            }
            conn.deadline = None;
            match conn.state {
                State::Hello { .. } | State::Request => {
                    let what = if matches!(conn.state, State::Hello { .. }) {
                        "HELLO"
                    } else {
                        "request"
                    };
                    let e = super::errors::bad_request(format!(
                        "no {what} within {} ms",
                        self.cfg.hello_timeout.as_millis()
                    ));
                    conn.finish(&hearth_agent_protocol::Message::Error(e), now);
                }
                // Closing: time is up.
                _ => conn.dead = true,
            }
        }
        for p in self.procs.iter_mut() {
            if p.deadline.is_some_and(|d| d <= now) && p.alive() {
                p.deadline = None;
                p.timed_out = true;
                let _ = p.signal(libc::SIGKILL);
            }
        }
        if self.watch.next_check().is_some_and(|at| at <= now) {
            self.watch.check(now);
        }
        if self.accept_after.is_some_and(|at| at <= now) {
            self.accept_after = None;
        }
    }
}
