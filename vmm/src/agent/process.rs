//! Processes in the guest: what to run ([`Command`]), a running one's
//! handle ([`Process`], with `stdin` to write and `stdout`/`stderr` to
//! read), and how it ended ([`ExitStatus`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use hearth_agent_protocol::{ExitInfo, Message, Rlimit, Spawn, User, WinSize, MAX_CHUNK};
use serde_bytes::ByteBuf;

use super::audit::Trail;
use super::conn::{guest, map_read_err, read_frame_patiently, unexpected, Conn};
use super::error::AgentError;

/// Output buffered per stream in the client before its reader thread
/// stops reading (and so the guest process stalls), in bytes (plus
/// [`CHUNK_COST`] per chunk held).
const OUTPUT_BUFFER: usize = 1 << 20;
/// A chunk shorter than this joins the previous one when that has room
/// (a process writing many small lines costs its bytes, not a chunk each).
const SMALL_CHUNK: usize = 4 << 10;
/// What a buffered chunk costs beyond its bytes.
const CHUNK_COST: usize = 64;

/// A process to start in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub(crate) spec: Spawn,
    /// Arguments the VM's audit records as `[redacted]`.
    pub(crate) secret: Vec<usize>,
}

impl Command {
    /// Runs `argv` (`argv[0]` is looked up in the guest's PATH).
    pub fn new<S: AsRef<[u8]>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            spec: Spawn {
                argv: argv
                    .into_iter()
                    .map(|a| ByteBuf::from(a.as_ref().to_vec()))
                    .collect(),
                ..Spawn::default()
            },
            secret: Vec::new(),
        }
    }

    /// Adds an argument the VM's audit records as `[redacted]` (a token,
    /// a password); the guest gets it as is.
    pub fn secret_arg(mut self, arg: impl AsRef<[u8]>) -> Self {
        self.secret.push(self.spec.argv.len());
        self.spec.argv.push(ByteBuf::from(arg.as_ref().to_vec()));
        self
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<[u8]>) -> Self {
        self.spec.argv.push(ByteBuf::from(arg.as_ref().to_vec()));
        self
    }
    /// Adds `KEY=VALUE` to the environment (which then replaces the
    /// agent's).
    pub fn env(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        let mut kv = key.as_ref().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(value.as_ref());
        self.spec.env.push(ByteBuf::from(kv));
        self
    }
    /// The working directory (default `/`).
    pub fn cwd(mut self, dir: impl AsRef<[u8]>) -> Self {
        self.spec.cwd = Some(ByteBuf::from(dir.as_ref().to_vec()));
        self
    }
    /// Runs as `uid`:`gid` (supplementary groups cleared).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.spec.user = Some(User { uid, gid });
        self
    }
    /// Kills the process group with SIGKILL after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.spec.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }
    /// Runs on a pseudo-terminal of `rows` × `cols` (stderr merges into
    /// stdout).
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.spec.tty = Some(WinSize { rows, cols });
        self
    }
    /// Lets the process outlive this client's connection (see
    /// [`AgentClient::attach`](super::AgentClient::attach)).
    pub fn detach(mut self, detach: bool) -> Self {
        self.spec.detach = detach;
        self
    }
    /// Streams stdin (otherwise it is `/dev/null`).
    pub fn stdin(mut self, stdin: bool) -> Self {
        self.spec.stdin = stdin;
        self
    }
    /// Runs chrooted into `dir` (a guest path, e.g. where
    /// [`AgentClient::mount`](super::AgentClient::mount) mounted a
    /// container's root disk): `cwd` and the PATH search are then inside
    /// it. Needs an agent that knows spawn options (older ones refuse the
    /// request).
    pub fn root(mut self, dir: impl AsRef<[u8]>) -> Self {
        self.spec.extra.root = Some(ByteBuf::from(dir.as_ref().to_vec()));
        self
    }
    /// Sets resource limit `resource` (Linux's number, e.g. 7 for
    /// `RLIMIT_NOFILE`) to `soft`/`hard` (`u64::MAX`: unlimited) in the
    /// process.
    pub fn rlimit(mut self, resource: u32, soft: u64, hard: u64) -> Self {
        self.spec.extra.rlimits.push(Rlimit { resource, soft, hard });
        self
    }
}

/// A file system for the agent to mount in the guest
/// ([`AgentClient::mount`](super::AgentClient::mount)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestMount {
    pub(crate) spec: hearth_agent_protocol::Mount,
}

impl GuestMount {
    /// Mounts `source` (a block device, a directory to bind, or a name
    /// such as `proc`) on `target`, an absolute guest path.
    pub fn new(source: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self {
            spec: hearth_agent_protocol::Mount {
                source: ByteBuf::from(source.as_ref().to_vec()),
                target: ByteBuf::from(target.as_ref().to_vec()),
                ..Default::default()
            },
        }
    }
    /// The file system type (`ext4`, `proc`, `tmpfs`; none for a bind).
    pub fn fstype(mut self, fstype: impl AsRef<[u8]>) -> Self {
        self.spec.fstype = ByteBuf::from(fstype.as_ref().to_vec());
        self
    }
    /// mount(2) flags (`libc::MS_RDONLY`, `libc::MS_BIND`, ...).
    pub fn flags(mut self, flags: u64) -> Self {
        self.spec.flags = flags;
        self
    }
    /// File-system options (`mode=755`).
    pub fn data(mut self, data: impl AsRef<[u8]>) -> Self {
        self.spec.data = ByteBuf::from(data.as_ref().to_vec());
        self
    }
    /// Creates the target directory (and parents) first if missing.
    pub fn mkdir(mut self, mkdir: bool) -> Self {
        self.spec.mkdir = mkdir;
        self
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitStatus {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// It was killed because its timeout passed.
    pub timed_out: bool,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The shell's convention: the exit code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

impl From<ExitInfo> for ExitStatus {
    fn from(e: ExitInfo) -> Self {
        Self {
            code: e.code,
            signal: e.signal,
            timed_out: e.timed_out,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}")?,
            (None, Some(s)) => write!(f, "killed by signal {s}")?,
            (None, None) => f.write_str("unknown status")?,
        }
        if self.timed_out {
            f.write_str(" (timed out)")?;
        }
        Ok(())
    }
}

/// What a command produced, collected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

impl ExecOutput {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Why the reader thread ended without an exit status.
#[derive(Clone, Debug)]
enum Ended {
    Disconnected,
    Timeout(Duration),
    Guest(hearth_agent_protocol::ErrorInfo),
    Protocol(String),
}

impl From<Ended> for AgentError {
    fn from(e: Ended) -> Self {
        match e {
            Ended::Disconnected => AgentError::Disconnected,
            Ended::Timeout(t) => AgentError::Timeout(t),
            Ended::Guest(info) => guest(info),
            Ended::Protocol(s) => AgentError::Protocol(s),
        }
    }
}

/// The exit (or the error) the reader thread saw.
#[derive(Debug, Default)]
struct Outcome {
    done: Mutex<Option<Result<ExitStatus, Ended>>>,
    changed: Condvar,
    dropped: Mutex<u64>,
}

/// A process running in the guest. Dropping it closes the connection:
/// the guest kills the process group unless it was started detached.
#[derive(Debug)]
pub struct Process {
    id: u64,
    pid: i32,
    /// Whether it has a terminal (`None`: not known, after `attach`).
    tty: Option<bool>,
    writer: Arc<Mutex<Link>>,
    /// The same socket, to shut down without waiting for the writer's
    /// lock (a stdin writer may hold it, blocked by flow control).
    control: UnixStream,
    stdin: Option<ProcessStdin>,
    stdout: Option<ProcessOutput>,
    stderr: Option<ProcessOutput>,
    outcome: Arc<Outcome>,
}

/// The sending side of a process's connection. Frames go out whole under
/// the lock; the client never sends a frame the agent would refuse
/// (which would end the connection and kill the process).
#[derive(Debug)]
struct Link {
    stream: UnixStream,
    /// STDIN frames are welcome: the process has stdin and STDIN_CLOSE
    /// was not sent.
    stdin_open: bool,
    /// The VM's audit of this process, if any.
    trail: Option<Arc<Trail>>,
}

/// The process's standard input. Dropping it closes it (the process reads
/// end of file), like [`close`](Self::close).
#[derive(Debug)]
pub struct ProcessStdin {
    writer: Arc<Mutex<Link>>,
    /// Close on drop (not when the whole connection is going away).
    close_on_drop: bool,
}

/// One of the process's output streams.
#[derive(Debug)]
pub struct ProcessOutput {
    pipe: Arc<Pipe>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn send(writer: &Mutex<Link>, m: &Message) -> io::Result<()> {
    lock(writer).stream.write_all(&m.encode())
}

/// Sends STDIN_CLOSE unless stdin is closed (or absent) already.
fn close_stdin(writer: &Mutex<Link>) -> io::Result<()> {
    let mut link = lock(writer);
    if !link.stdin_open {
        return Ok(());
    }
    link.stdin_open = false;
    link.stream.write_all(&Message::StdinClose.encode())
}

impl Write for ProcessStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        let mut link = lock(&self.writer);
        if !link.stdin_open {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the process's stdin is closed",
            ));
        }
        link.stream
            .write_all(&Message::Stdin(buf[..n].to_vec()).encode())?;
        if let Some(t) = &link.trail {
            Trail::add(&t.stdin, n);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ProcessStdin {
    /// Closes the process's stdin (it reads end of file).
    pub fn close(mut self) -> io::Result<()> {
        self.close_on_drop = false;
        close_stdin(&self.writer)
    }
}

impl Drop for ProcessStdin {
    fn drop(&mut self) {
        if self.close_on_drop {
            let _ = close_stdin(&self.writer);
        }
    }
}

/// A bounded buffer of one output stream, between the connection's reader
/// thread and the [`ProcessOutput`] reading it.
#[derive(Debug, Default)]
struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PipeState {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already read.
    front_at: usize,
    /// The chunks' bytes plus [`CHUNK_COST`] each.
    cost: usize,
    /// The stream ended (after the chunks held).
    ended: bool,
    /// Nobody reads it any more: drop what comes.
    reader_gone: bool,
}

impl Pipe {
    /// Adds a chunk, waiting while the buffer is full.
    fn push(&self, chunk: Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        let mut s = lock(&self.state);
        while s.cost >= OUTPUT_BUFFER && !s.reader_gone {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.reader_gone {
            return;
        }
        let s = &mut *s;
        match s.chunks.back_mut() {
            Some(back) if chunk.len() < SMALL_CHUNK && back.len() + chunk.len() <= MAX_CHUNK => {
                back.extend_from_slice(&chunk);
                s.cost += chunk.len();
            }
            _ => {
                s.cost += chunk.len() + CHUNK_COST;
                s.chunks.push_back(chunk);
            }
        }
        self.changed.notify_all();
    }

    /// The end of the stream.
    fn end(&self) {
        lock(&self.state).ended = true;
        self.changed.notify_all();
    }
}

impl Read for ProcessOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut guard = lock(&self.pipe.state);
        loop {
            let s = &mut *guard;
            if let Some(front) = s.chunks.front() {
                let left = &front[s.front_at..];
                let n = buf.len().min(left.len());
                buf[..n].copy_from_slice(&left[..n]);
                s.front_at += n;
                if s.front_at == front.len() {
                    s.cost -= front.len() + CHUNK_COST;
                    s.front_at = 0;
                    s.chunks.pop_front();
                    self.pipe.changed.notify_all();
                }
                return Ok(n);
            }
            if s.ended {
                return Ok(0);
            }
            guard = self.pipe.changed.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for ProcessOutput {
    fn drop(&mut self) {
        let mut s = lock(&self.pipe.state);
        s.reader_gone = true;
        s.chunks.clear();
        s.cost = 0;
        s.front_at = 0;
        drop(s);
        self.pipe.changed.notify_all();
    }
}

impl Process {
    /// Reads `STARTED` on `conn` and starts the thread that reads the
    /// streams. `stdin`: the process takes STDIN frames; `tty`: it has a
    /// terminal (`None`: not known).
    pub(crate) fn start(
        mut conn: Conn,
        stdin: bool,
        tty: Option<bool>,
        trail: Option<Arc<Trail>>,
    ) -> Result<Self, AgentError> {
        let started = match conn.recv()? {
            Message::Started(s) => s,
            other => return Err(unexpected("STARTED", &other)),
        };
        if let Some(t) = &trail {
            t.started(started.id);
        }
        // The process's output goes into bounded buffers; a full one stops
        // the reader (and so the guest process) until it is read.
        let (out, err) = (Arc::new(Pipe::default()), Arc::new(Pipe::default()));
        let outcome = Arc::new(Outcome::default());
        let reader = conn.stream.try_clone()?;
        let control = conn.stream.try_clone()?;
        let timeout = conn.timeout;
        let writer = Arc::new(Mutex::new(Link {
            stream: conn.stream,
            stdin_open: stdin,
            trail: trail.clone(),
        }));
        let (o, out_pipe, err_pipe) = (outcome.clone(), out.clone(), err.clone());
        std::thread::Builder::new()
            .name("hearth-agent-io".into())
            .spawn(move || read_streams(reader, timeout, &out_pipe, &err_pipe, &o, trail.as_deref()))?;
        Ok(Self {
            id: started.id,
            pid: started.pid,
            tty,
            stdin: stdin.then(|| ProcessStdin {
                writer: writer.clone(),
                close_on_drop: true,
            }),
            stdout: Some(ProcessOutput { pipe: out }),
            stderr: Some(ProcessOutput { pipe: err }),
            writer,
            control,
            outcome,
        })
    }

    /// The agent's id for the process (for `attach`, `signal`, `wait`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its pid in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its stdin, to write (once taken, `None`; `None` too for a process
    /// started without [`Command::stdin`], or attached without
    /// [`attach_with_stdin`](super::AgentClient::attach_with_stdin)).
    pub fn take_stdin(&mut self) -> Option<ProcessStdin> {
        self.stdin.take()
    }

    /// Its stdout, to read (once taken, `None`).
    pub fn take_stdout(&mut self) -> Option<ProcessOutput> {
        self.stdout.take()
    }

    /// Its stderr, to read (once taken, `None`).
    pub fn take_stderr(&mut self) -> Option<ProcessOutput> {
        self.stderr.take()
    }

    /// Writes to stdin (if not taken).
    pub fn stdin(&mut self) -> Option<&mut ProcessStdin> {
        self.stdin.as_mut()
    }

    /// Reads stdout (if not taken).
    pub fn stdout(&mut self) -> Option<&mut ProcessOutput> {
        self.stdout.as_mut()
    }

    /// Reads stderr (if not taken).
    pub fn stderr(&mut self) -> Option<&mut ProcessOutput> {
        self.stderr.as_mut()
    }

    /// Closes stdin (also when its handle was taken); closing it again,
    /// or a process without stdin, does nothing.
    pub fn close_stdin(&mut self) -> io::Result<()> {
        match self.stdin.take() {
            Some(stdin) => stdin.close(),
            None => close_stdin(&self.writer),
        }
    }

    /// Sends `signal` to the process's group. The frame follows the stdin
    /// written before it: while the process does not read its stdin, use
    /// [`AgentClient::signal`](super::AgentClient::signal) instead.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        send(&self.writer, &Message::Kill(signal))
    }

    /// Resizes its terminal (an error for a process started without one).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        if self.tty == Some(false) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the process has no terminal",
            ));
        }
        send(&self.writer, &Message::Resize(WinSize { rows, cols }))
    }

    /// Output bytes the guest dropped while no client was attached (an
    /// attached detached process), as reported at attach.
    pub fn dropped_output(&self) -> u64 {
        *self.outcome.dropped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the process to end. Like `std::process::Child::wait`,
    /// read its output meanwhile (or drop the streams you do not want):
    /// output nobody reads stalls the process once the client's buffers
    /// are full.
    pub fn wait(&self) -> Result<ExitStatus, AgentError> {
        let mut done = self.outcome.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = done.as_ref() {
                return result.clone().map_err(AgentError::from);
            }
            done = self.outcome.changed.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Closes stdin (if not taken) and waits for the end, collecting what
    /// is left of stdout and stderr (each capped at `cap` bytes).
    pub fn wait_with_output(mut self, cap: usize) -> Result<ExecOutput, AgentError> {
        drop(self.stdin.take());
        let (out, err) = (self.stdout.take(), self.stderr.take());
        let err_reader = std::thread::spawn(move || collect(err, cap));
        let stdout = collect(out, cap);
        let stderr = err_reader.join().unwrap_or(Err(AgentError::Disconnected));
        let status = self.wait()?;
        Ok(ExecOutput {
            stdout: stdout?,
            stderr: stderr?,
            status,
        })
    }
}

fn collect(stream: Option<ProcessOutput>, cap: usize) -> Result<Vec<u8>, AgentError> {
    let mut out = Vec::new();
    if let Some(mut s) = stream {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if out.len() + n > cap {
                return Err(AgentError::OutputTooLarge(cap));
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
    Ok(out)
}

impl Drop for Process {
    fn drop(&mut self) {
        // The whole connection goes: no STDIN_CLOSE first.
        if let Some(stdin) = &mut self.stdin {
            stdin.close_on_drop = false;
        }
        // The guest sees the close: it kills the process (unless detached)
        // and the reader thread ends. Not under the writer's lock, which a
        // blocked stdin writer may hold.
        let _ = self.control.shutdown(Shutdown::Both);
    }
}

/// The reader thread: demultiplexes the process's frames until EXIT, an
/// error or the end of the connection.
fn read_streams(
    mut stream: UnixStream,
    timeout: Option<Duration>,
    out: &Pipe,
    err: &Pipe,
    outcome: &Outcome,
    trail: Option<&Trail>,
) {
    let result = loop {
        // A process may be silent for long: no timeout between frames.
        let frame = match read_frame_patiently(&mut stream, timeout) {
            Ok(Some(f)) => f,
            Ok(None) => break Err(Ended::Disconnected),
            Err(e) => {
                break Err(match map_read_err(e, timeout) {
                    AgentError::Timeout(t) => Ended::Timeout(t),
                    AgentError::Protocol(s) => Ended::Protocol(s),
                    _ => Ended::Disconnected,
                })
            }
        };
        match Message::decode(&frame) {
            // A stream nobody reads any more is dropped, not waited for.
            Ok(Message::Stdout(b)) => {
                if let Some(t) = trail {
                    Trail::add(&t.stdout, b.len());
                }
                out.push(b)
            }
            Ok(Message::Stderr(b)) => {
                if let Some(t) = trail {
                    Trail::add(&t.stderr, b.len());
                }
                err.push(b)
            }
            Ok(Message::OutputDropped(n)) => {
                *outcome.dropped.lock().unwrap_or_else(|p| p.into_inner()) += n;
            }
            Ok(Message::Exit(e)) => break Ok(ExitStatus::from(e)),
            Ok(Message::Error(e)) => break Err(Ended::Guest(e)),
            Ok(other) => break Err(Ended::Protocol(unexpected("process output", &other).to_string())),
            Err(e) => break Err(Ended::Protocol(format!("malformed frame from the agent: {e}"))),
        }
    };
    out.end();
    err.end();
    if let Some(t) = trail {
        t.end(result.as_ref().map(|s| *s).map_err(|e| format!("{e:?}")));
    }
    *outcome.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    outcome.changed.notify_all();
}
