//! Processes in the guest: what to run ([`Command`]), a running one's
//! handle ([`Process`], with `stdin` to write and `stdout`/`stderr` to
//! read), and how it ended ([`ExitStatus`]).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hearth_agent_protocol::{read_frame, ExitInfo, Message, Spawn, User, WinSize, MAX_CHUNK};
use serde_bytes::ByteBuf;

use super::conn::{guest, unexpected, Conn};
use super::error::AgentError;

/// Chunks of output buffered per stream in the client before its reader
/// thread stops reading (and so the guest process stalls): at most
/// `OUTPUT_CHUNKS` × 64 KiB per stream.
const OUTPUT_CHUNKS: usize = 64;

/// A process to start in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub(crate) spec: Spawn,
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
        }
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
    Guest(hearth_agent_protocol::ErrorInfo),
    Protocol(String),
}

impl From<Ended> for AgentError {
    fn from(e: Ended) -> Self {
        match e {
            Ended::Disconnected => AgentError::Disconnected,
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
    writer: Arc<Mutex<UnixStream>>,
    stdin: Option<ProcessStdin>,
    stdout: Option<ProcessOutput>,
    stderr: Option<ProcessOutput>,
    outcome: Arc<Outcome>,
}

/// The process's standard input.
#[derive(Debug)]
pub struct ProcessStdin {
    writer: Arc<Mutex<UnixStream>>,
}

/// One of the process's output streams.
#[derive(Debug)]
pub struct ProcessOutput {
    // A Mutex only so that `Process` is `Sync`; one reader at a time.
    chunks: Mutex<Receiver<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

fn lock(m: &Mutex<UnixStream>) -> std::sync::MutexGuard<'_, UnixStream> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn send(writer: &Mutex<UnixStream>, m: &Message) -> io::Result<()> {
    lock(writer).write_all(&m.encode())
}

impl Write for ProcessStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        send(&self.writer, &Message::Stdin(buf[..n].to_vec()))?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ProcessStdin {
    /// Closes the process's stdin (it reads end of file).
    pub fn close(self) -> io::Result<()> {
        send(&self.writer, &Message::StdinClose)
    }
}

impl Read for ProcessOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            let next = self.chunks.get_mut().unwrap_or_else(|p| p.into_inner()).recv();
            match next {
                Ok(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                // The reader thread ended: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Process {
    /// Reads `STARTED` on `conn` and starts the thread that reads the
    /// streams.
    pub(crate) fn start(mut conn: Conn) -> Result<Self, AgentError> {
        let started = match conn.recv()? {
            Message::Started(s) => s,
            other => return Err(unexpected("STARTED", &other)),
        };
        // The process's output goes into bounded channels; a full one stops
        // the reader (and so the guest process) until it is read.
        let (out_tx, out_rx) = sync_channel(OUTPUT_CHUNKS);
        let (err_tx, err_rx) = sync_channel(OUTPUT_CHUNKS);
        let outcome = Arc::new(Outcome::default());
        let reader = conn.stream.try_clone()?;
        // Reads block without a timeout: a process may be silent for long.
        reader.set_read_timeout(None)?;
        let writer = Arc::new(Mutex::new(conn.stream));
        let o = outcome.clone();
        std::thread::Builder::new()
            .name("hearth-agent-io".into())
            .spawn(move || read_streams(reader, out_tx, err_tx, &o))?;
        Ok(Self {
            id: started.id,
            pid: started.pid,
            stdin: Some(ProcessStdin {
                writer: writer.clone(),
            }),
            stdout: Some(ProcessOutput {
                chunks: Mutex::new(out_rx),
                current: Vec::new(),
                at: 0,
            }),
            stderr: Some(ProcessOutput {
                chunks: Mutex::new(err_rx),
                current: Vec::new(),
                at: 0,
            }),
            writer,
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

    /// Its stdin, to write (once taken, `None`).
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

    /// Closes stdin.
    pub fn close_stdin(&mut self) -> io::Result<()> {
        self.stdin = None;
        send(&self.writer, &Message::StdinClose)
    }

    /// Sends `signal` to the process's group.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        send(&self.writer, &Message::Kill(signal))
    }

    /// Resizes its terminal (tty processes).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
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

    /// Waits for the end, collecting what is left of stdout and stderr
    /// (each capped at `cap` bytes).
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
        // The guest sees the close: it kills the process (unless detached)
        // and the reader thread ends.
        let _ = lock(&self.writer).shutdown(Shutdown::Both);
    }
}

/// The reader thread: demultiplexes the process's frames until EXIT, an
/// error or the end of the connection.
fn read_streams(
    mut stream: UnixStream,
    out: SyncSender<Vec<u8>>,
    err: SyncSender<Vec<u8>>,
    outcome: &Outcome,
) {
    let result = loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(f)) => f,
            Ok(None) => break Err(Ended::Disconnected),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => break Err(Ended::Protocol(e.to_string())),
            Err(_) => break Err(Ended::Disconnected),
        };
        match Message::decode(&frame) {
            // A stream nobody reads any more is dropped, not waited for.
            Ok(Message::Stdout(b)) => drop(out.send(b)),
            Ok(Message::Stderr(b)) => drop(err.send(b)),
            Ok(Message::OutputDropped(n)) => {
                *outcome.dropped.lock().unwrap_or_else(|p| p.into_inner()) += n;
            }
            Ok(Message::Exit(e)) => break Ok(ExitStatus::from(e)),
            Ok(Message::Error(e)) => break Err(Ended::Guest(e)),
            Ok(other) => break Err(Ended::Protocol(unexpected("process output", &other).to_string())),
            Err(e) => break Err(Ended::Protocol(format!("malformed frame from the agent: {e}"))),
        }
    };
    drop(out);
    drop(err);
    *outcome.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    outcome.changed.notify_all();
}
