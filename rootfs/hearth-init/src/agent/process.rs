//! The processes the agent started: their descriptors, stdin backlog,
//! kept output, state, and the table that bounds them (docs/AGENT.md,
//! "Processes"). The event loop (`reactor`, `pump`) moves bytes; this
//! module holds the per-process rules.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::Instant;

use hearth_agent_protocol::{ExitInfo, ProcessInfo, ProcessState, WinSize};
use serde_bytes::ByteBuf;

use super::command::Command;
use super::fd::{self, Fd};
use super::pty;
use super::ring::{Ring, Stream};
use super::spawn::{self, Stdio};

/// Processes running at once at most.
pub const MAX_RUNNING: usize = 1024;
/// Exited detached processes kept for an ATTACH at most.
pub const MAX_EXITED: usize = 256;
/// What is read from a process's pipes after it exited, at most.
pub const DRAIN_BUDGET: usize = 1 << 20;
/// The socket is read only while less stdin than this waits for the
/// process.
pub const STDIN_HIGH: usize = 64 << 10;

/// A connection's id.
pub type ConnId = u64;

/// Where a process is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Forked; the exec is not confirmed (the status pipe is open).
    Starting {
        /// The status pipe.
        status: Fd,
        /// For the failure message.
        cmd: Box<Command>,
    },
    /// Exec'd.
    Running,
    /// Reaped.
    Exited(ExitInfo),
}

/// One process.
#[derive(Debug)]
pub struct Process {
    /// The agent's id.
    pub id: u64,
    /// Its pid, also its process group id.
    pub pid: libc::pid_t,
    /// Its argv, for LIST.
    pub argv: Vec<ByteBuf>,
    /// Started with `detach`.
    pub detached: bool,
    /// Started with `release`: the spawning connection is let go right
    /// after STARTED (cleared then).
    pub release: bool,
    /// On a pseudo-terminal.
    pub is_tty: bool,
    /// Its user, for failure messages.
    pub user: Option<(u32, u32)>,
    /// Life.
    pub phase: Phase,
    /// Readable once it exited.
    pub pidfd: Option<Fd>,
    /// Stdin pipe (pipes mode).
    pub stdin: Option<Fd>,
    /// The terminal (tty mode): output, input, size.
    pub master: Option<Fd>,
    /// The terminal's output ended (every slave descriptor closed) while
    /// the process runs: the master is no longer polled.
    pub master_ended: bool,
    /// Stdout pipe.
    pub stdout: Option<Fd>,
    /// Stderr pipe.
    pub stderr: Option<Fd>,
    /// Stdin bytes not written yet.
    pub stdin_buf: Vec<u8>,
    /// STDIN frames are welcome (stdin asked for, STDIN_CLOSE not
    /// received), whether or not the process still reads them.
    pub stdin_open: bool,
    /// Close stdin once `stdin_buf` is written (pipes).
    pub stdin_close: bool,
    /// The timeout.
    pub deadline: Option<Instant>,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// The attached connection.
    pub client: Option<ConnId>,
    /// Output kept while no client reads.
    pub ring: Ring,
    /// Post-exit reading left.
    pub drain_left: usize,
    /// EXIT was queued to a client.
    pub exit_sent: bool,
    /// The attached client got STARTED (its output may go to it).
    pub announced: bool,
    /// In the table's list of kept exited processes.
    pub kept: bool,
}

/// A read of a process's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many bytes.
    Data(usize),
    /// Nothing now.
    Empty,
    /// End (EOF, or EIO of a terminal whose other side closed).
    End,
}

impl Process {
    /// A process just forked.
    pub fn new(id: u64, child: spawn::Child, cmd: Command, argv: Vec<ByteBuf>, detached: bool) -> Self {
        let (stdin, master, stdout, stderr) = match child.stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => (stdin, None, Some(stdout), Some(stderr)),
            Stdio::Pty { master } => (None, Some(master), None, None),
        };
        let is_tty = master.is_some();
        let stdin_open = stdin.is_some();
        Self {
            id,
            pid: child.pid,
            argv,
            detached,
            release: false,
            is_tty,
            user: None,
            phase: Phase::Starting {
                status: child.status,
                cmd: Box::new(cmd),
            },
            pidfd: child.pidfd,
            stdin,
            master,
            master_ended: false,
            stdout,
            stderr,
            stdin_buf: Vec::new(),
            stdin_open,
            stdin_close: false,
            deadline: None,
            timed_out: false,
            client: None,
            ring: Ring::default(),
            drain_left: DRAIN_BUDGET,
            exit_sent: false,
            announced: false,
            kept: false,
        }
    }

    /// Not reaped yet.
    pub fn alive(&self) -> bool {
        !matches!(self.phase, Phase::Exited(_))
    }

    /// How it ended, once reaped.
    pub fn exit(&self) -> Option<ExitInfo> {
        match self.phase {
            Phase::Exited(info) => Some(info),
            _ => None,
        }
    }

    /// The descriptor carrying `stream`.
    pub fn out_fd(&self, stream: Stream) -> Option<&Fd> {
        match (stream, &self.master) {
            (Stream::Stdout, Some(master)) => Some(master),
            (Stream::Stdout, None) => self.stdout.as_ref(),
            (Stream::Stderr, _) => self.stderr.as_ref(),
        }
    }

    /// Stops reading `stream`, closing its descriptor. A terminal's master
    /// is kept open while the process runs: closing it hangs the terminal
    /// up, which sends SIGHUP to the session, and a program that closed
    /// its terminal descriptors just before exiting (GNU cat does) would
    /// die of it. It is only no longer polled, and closed after the exit.
    pub fn close_out(&mut self, stream: Stream) {
        match (stream, self.master.is_some()) {
            (Stream::Stdout, true) if self.alive() => {
                self.master_ended = true;
                self.stdin_buf = Vec::new();
            }
            (Stream::Stdout, true) => {
                self.master = None;
                self.stdin_buf = Vec::new();
            }
            (Stream::Stdout, false) => self.stdout = None,
            (Stream::Stderr, _) => self.stderr = None,
        }
    }

    /// Whether any output descriptor is open.
    pub fn outputs_open(&self) -> bool {
        self.master.is_some() || self.stdout.is_some() || self.stderr.is_some()
    }

    /// Reads one chunk of `stream` into `buf`.
    pub fn read_out(&self, stream: Stream, buf: &mut [u8]) -> Read {
        let Some(fd) = self.out_fd(stream) else {
            return Read::End;
        };
        match fd.read(buf) {
            Ok(0) => Read::End,
            Ok(n) => Read::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::Empty,
            // EIO: a terminal whose slave side is closed by everyone.
            Err(_) => Read::End,
        }
    }

    /// The descriptor stdin is written to.
    pub fn stdin_fd(&self) -> Option<&Fd> {
        self.master.as_ref().or(self.stdin.as_ref())
    }

    /// Queues STDIN bytes (dropped once the process cannot take them).
    pub fn push_stdin(&mut self, data: &[u8]) {
        if self.stdin_fd().is_some() && self.alive() {
            self.stdin_buf.extend_from_slice(data);
        }
    }

    /// STDIN_CLOSE: a pipe is closed once what is queued is written; a
    /// terminal gets its EOF character.
    pub fn close_stdin(&mut self) {
        self.stdin_open = false;
        match &self.master {
            Some(master) => {
                let eof = pty::eof_char(master);
                self.push_stdin(&[eof]);
            }
            None => {
                self.stdin_close = true;
                if self.stdin_buf.is_empty() {
                    self.stdin = None;
                }
            }
        }
    }

    /// Writes queued stdin (one write). A process that closed its stdin
    /// gets no more; the bytes are dropped.
    pub fn write_stdin(&mut self) {
        let Some(fd) = self.stdin_fd() else {
            self.stdin_buf = Vec::new();
            return;
        };
        if !self.stdin_buf.is_empty() {
            match fd.write(&self.stdin_buf) {
                Ok(n) => {
                    self.stdin_buf.drain(..n.min(self.stdin_buf.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // EPIPE: the reader is gone. A terminal keeps its
                    // master (output may still come).
                    self.stdin_buf = Vec::new();
                    if self.master.is_none() {
                        self.stdin = None;
                    }
                    return;
                }
            }
        }
        if self.stdin_buf.is_empty() {
            // Give back a large buffer's memory.
            if self.stdin_buf.capacity() > 2 * STDIN_HIGH {
                self.stdin_buf = Vec::new();
            }
            if self.stdin_close {
                self.stdin = None;
            }
        }
    }

    /// A signal to the process group (while it runs; the pid is ours and
    /// unreaped, so the group id cannot have been reused).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if !self.alive() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        fd::kill_group(self.pid, signal)
    }

    /// RESIZE.
    pub fn resize(&self, size: WinSize) {
        if let Some(master) = &self.master {
            let _ = pty::resize(master, size);
        }
    }

    /// Reaps it if it exited: true then.
    pub fn try_reap(&mut self) -> bool {
        if !self.alive() {
            return true;
        }
        let Some(status) = spawn::try_reap(self.pid) else {
            return false;
        };
        let (code, signal) = spawn::decode_wait(status);
        self.phase = Phase::Exited(ExitInfo {
            code,
            signal,
            timed_out: self.timed_out,
        });
        self.pidfd = None;
        self.stdin = None;
        self.stdin_buf = Vec::new();
        self.deadline = None;
        true
    }

    /// Exited and all its output read.
    pub fn finished(&self) -> bool {
        !self.alive() && !self.outputs_open()
    }

    /// Its LIST entry.
    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            id: self.id,
            pid: self.pid,
            argv: self.argv.clone(),
            state: match self.exit() {
                Some(info) => ProcessState::Exited(info),
                None => ProcessState::Running,
            },
            detached: self.detached,
            attached: self.client.is_some(),
            tty: self.is_tty,
            buffered: self.ring.len() as u64,
            dropped: self.ring.dropped(),
        }
    }
}

/// Every process the agent knows: running ones, and exited ones whose
/// EXIT nobody has received yet.
#[derive(Debug, Default)]
pub struct Table {
    procs: BTreeMap<u64, Process>,
    last_id: u64,
    /// Exited detached processes kept for an ATTACH, oldest first.
    kept: VecDeque<u64>,
}

impl Table {
    /// The next id (never reused).
    pub fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// How many have not been reaped.
    pub fn running(&self) -> usize {
        self.procs.values().filter(|p| p.alive()).count()
    }

    /// Adds one.
    pub fn insert(&mut self, p: Process) {
        self.procs.insert(p.id, p);
    }

    /// One by id.
    pub fn get(&self, id: u64) -> Option<&Process> {
        self.procs.get(&id)
    }

    /// One by id.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Process> {
        self.procs.get_mut(&id)
    }

    /// Forgets one.
    pub fn remove(&mut self, id: u64) -> Option<Process> {
        let p = self.procs.remove(&id)?;
        if p.kept {
            if let Some(at) = self.kept.iter().position(|&k| k == id) {
                self.kept.remove(at);
            }
        }
        Some(p)
    }

    /// Ids of all.
    pub fn ids(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    /// All, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    /// All, in id order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.procs.values_mut()
    }

    /// A detached process finished with nobody attached: keep it for an
    /// ATTACH, dropping the oldest kept past [`MAX_EXITED`].
    pub fn keep(&mut self, id: u64) {
        match self.procs.get_mut(&id) {
            Some(p) if !p.kept => p.kept = true,
            _ => return,
        }
        self.kept.push_back(id);
        while self.kept.len() > MAX_EXITED {
            if let Some(old) = self.kept.pop_front() {
                self.procs.remove(&old);
            }
        }
    }

    /// An ATTACH took a kept process.
    pub fn unkeep(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            if p.kept {
                p.kept = false;
                if let Some(at) = self.kept.iter().position(|&k| k == id) {
                    self.kept.remove(at);
                }
            }
        }
    }

    /// LIST.
    pub fn list(&self) -> Vec<ProcessInfo> {
        self.procs.values().map(Process::info).collect()
    }
}
