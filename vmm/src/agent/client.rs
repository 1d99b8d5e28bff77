//! [`AgentClient`]: every request of protocol version 2, each on a
//! connection of its own (docs/AGENT.md).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hearth_agent_protocol::{
    Attach, Chmod, DirEntry, FileStat, Message, Mkdir, PathReq, ProcessInfo, Refreshed, Remove, Rename,
    Signal, Started, Upload, Wait, DEFAULT_PORT, MAX_CHUNK,
};
use serde_bytes::ByteBuf;

use super::audit::{Reporter, Trail};
use super::conn::{read_chunk, unexpected, Conn, Endpoint};
use super::error::AgentError;
use super::process::{Command, ExecOutput, ExitStatus, GuestMount, Process};

/// What `exec` collects per stream at most, by default.
pub const DEFAULT_OUTPUT_CAP: usize = 64 << 20;
/// Entries `list_dir` collects at most.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// A client of the agent in one VM. Cheap to clone, usable from any
/// thread; every call opens its own connection.
#[derive(Clone, Debug)]
pub struct AgentClient {
    endpoint: Endpoint,
    timeout: Option<Duration>,
    output_cap: usize,
    /// The VM it counts requests and audits processes for (clients from
    /// [`Vm::agent`](crate::Vm::agent)).
    reporter: Option<Reporter>,
}

fn bytes(s: impl AsRef<[u8]>) -> ByteBuf {
    ByteBuf::from(s.as_ref().to_vec())
}

impl AgentClient {
    /// A client for the agent on guest vsock `port`, through the VM's
    /// socket `uds_path` (what `hearth run --vsock cid=N,uds=PATH` made).
    pub fn vsock(uds_path: impl Into<PathBuf>, port: u32) -> Self {
        Self::with_endpoint(Endpoint::Vsock {
            uds_path: uds_path.into(),
            port,
        })
    }

    /// A client for an agent listening on a Unix socket directly (the
    /// agent's native mode, `hearth-init agent --unix PATH`).
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::with_endpoint(Endpoint::Unix(path.into()))
    }

    /// A client for `endpoint`.
    pub fn with_endpoint(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            timeout: Some(Duration::from_secs(600)),
            output_cap: DEFAULT_OUTPUT_CAP,
            reporter: None,
        }
    }

    /// Through `uds_path` on the agent's default port.
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        Self::vsock(uds_path, DEFAULT_PORT)
    }

    /// Gives up when the agent is silent this long during a request
    /// (`None`: never). A process's streams are never timed out.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most `exec` collects per stream before failing with
    /// [`AgentError::OutputTooLarge`].
    pub fn output_cap(mut self, cap: usize) -> Self {
        self.output_cap = cap;
        self
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Reports requests and processes to `reporter`'s VM.
    pub(crate) fn reporting(mut self, reporter: Reporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Runs one request of `kind`, counting it (and whether it failed).
    fn tracked<T>(&self, kind: &str, f: impl FnOnce() -> Result<T, AgentError>) -> Result<T, AgentError> {
        let result = f();
        if let Some(r) = &self.reporter {
            r.count(kind, &result);
        }
        result
    }

    fn open(&self, request: &Message) -> Result<Conn, AgentError> {
        let mut conn = Conn::open(&self.endpoint, self.timeout)?;
        conn.send(request)?;
        Ok(conn)
    }

    /// Starts a process; its streams are read and written through the
    /// returned handle.
    pub fn spawn(&self, command: &Command) -> Result<Process, AgentError> {
        let trail = self.trail(command, &command.spec);
        let result = self.tracked("spawn", || {
            let conn = self.open(&Message::Spawn(command.spec.clone()))?;
            Process::start(
                conn,
                command.spec.stdin,
                Some(command.spec.tty.is_some()),
                trail.clone(),
            )
        });
        if let (Err(e), Some(t)) = (&result, &trail) {
            t.end(Err(e.to_string()));
        }
        result
    }

    /// Starts a process detached and lets go of it at once: everything it
    /// writes (up to the agent's 1 MiB ring) and its exit are kept for
    /// [`attach`](Self::attach), however soon they come. Needs an agent
    /// that knows spawn options (older ones refuse the request).
    pub fn start_detached(&self, command: &Command) -> Result<Started, AgentError> {
        let mut spec = command.spec.clone();
        spec.detach = true;
        spec.extra.release = true;
        let trail = self.trail(command, &spec);
        let result = self.tracked("spawn", || {
            let mut conn = self.open(&Message::Spawn(spec))?;
            match conn.recv()? {
                Message::Started(s) => Ok(s),
                other => Err(unexpected("STARTED", &other)),
            }
        });
        if let Some(t) = &trail {
            match &result {
                Ok(s) => {
                    t.started(s.id);
                    t.end(Err("started detached: the exit goes to whoever attaches".into()));
                }
                Err(e) => t.end(Err(e.to_string())),
            }
        }
        result
    }

    fn trail(&self, command: &Command, spec: &hearth_agent_protocol::Spawn) -> Option<Arc<Trail>> {
        self.reporter.as_ref()?.trail(spec, &command.secret)
    }

    /// Runs a command to its end (stdin is /dev/null) and collects its
    /// output, at most [`output_cap`](Self::output_cap) bytes per stream.
    pub fn exec(&self, command: &Command) -> Result<ExecOutput, AgentError> {
        let mut spec = command.spec.clone();
        spec.stdin = false;
        let trail = self.trail(command, &spec);
        let result = self.tracked("exec", || self.exec_spec(spec, trail.as_deref()));
        if let Some(t) = &trail {
            t.end(result.as_ref().map(|o| o.status).map_err(ToString::to_string));
        }
        result
    }

    fn exec_spec(
        &self,
        spec: hearth_agent_protocol::Spawn,
        trail: Option<&Trail>,
    ) -> Result<ExecOutput, AgentError> {
        let mut conn = self.open(&Message::Spawn(spec))?;
        match conn.recv()? {
            Message::Started(s) => {
                if let Some(t) = trail {
                    t.started(s.id);
                }
            }
            other => return Err(unexpected("STARTED", &other)),
        }
        let mut out = ExecOutput::default();
        loop {
            // A command may be silent for long: no timeout between frames.
            let (sink, chunk, is_out) = match conn.recv_patiently()? {
                Message::Stdout(b) => (&mut out.stdout, b, true),
                Message::Stderr(b) => (&mut out.stderr, b, false),
                Message::Exit(e) => {
                    out.status = ExitStatus::from(e);
                    return Ok(out);
                }
                other => return Err(unexpected("process output", &other)),
            };
            if sink.len() + chunk.len() > self.output_cap {
                return Err(AgentError::OutputTooLarge(self.output_cap));
            }
            if let Some(t) = trail {
                Trail::add(if is_out { &t.stdout } else { &t.stderr }, chunk.len());
            }
            sink.extend_from_slice(&chunk);
        }
    }

    /// Attaches to a running (or exited, unreaped) process started with
    /// [`Command::detach`]: its kept output comes first. Its stdin is not
    /// connected (see [`attach_with_stdin`](Self::attach_with_stdin)).
    pub fn attach(&self, id: u64) -> Result<Process, AgentError> {
        self.tracked("attach", || {
            let conn = self.open(&Message::Attach(Attach { id }))?;
            Process::start(conn, false, None, None)
        })
    }

    /// Like [`attach`](Self::attach), with the process's stdin, for a
    /// process started with [`Command::stdin`] whose stdin is still open
    /// (otherwise the agent ends the attachment at the first write; the
    /// process goes on).
    pub fn attach_with_stdin(&self, id: u64) -> Result<Process, AgentError> {
        self.tracked("attach", || {
            let conn = self.open(&Message::Attach(Attach { id }))?;
            Process::start(conn, true, None, None)
        })
    }

    /// The processes the agent runs or keeps.
    pub fn list(&self) -> Result<Vec<ProcessInfo>, AgentError> {
        self.tracked("list", || {
            let mut conn = self.open(&Message::List)?;
            match conn.recv()? {
                Message::Processes(list) => Ok(list),
                other => Err(unexpected("PROCESSES", &other)),
            }
        })
    }

    /// Sends `signal` to process `id`'s group.
    pub fn signal(&self, id: u64, signal: i32) -> Result<(), AgentError> {
        self.tracked("signal", || {
            self.open(&Message::Signal(Signal { id, signal }))?.expect_ok()
        })
    }

    /// Waits for process `id` to end.
    pub fn wait(&self, id: u64) -> Result<ExitStatus, AgentError> {
        self.tracked("wait", || {
            let mut conn = self.open(&Message::Wait(Wait { id }))?;
            match conn.recv_patiently()? {
                Message::Exit(e) => Ok(e.into()),
                other => Err(unexpected("EXIT", &other)),
            }
        })
    }

    /// Writes `data` from a reader to `path` (created or replaced
    /// atomically, `mode`), streaming; returns the bytes written.
    pub fn upload(
        &self,
        path: &str,
        mode: u32,
        parents: bool,
        mut data: impl Read,
    ) -> Result<u64, AgentError> {
        self.tracked("upload", || {
            let mut conn = self.open(&Message::Upload(Upload {
                path: bytes(path),
                mode,
                parents,
            }))?;
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let n = read_chunk(&mut data, &mut buf)?;
                if n == 0 {
                    break;
                }
                if let Err(e) = conn.send(&Message::Data(buf[..n].to_vec())) {
                    // The agent may have refused (e.g. the directory does not
                    // exist) and closed: its reason beats the write error.
                    return Err(conn.recv().err().unwrap_or(e));
                }
            }
            conn.send(&Message::DataEnd)?;
            match conn.recv()? {
                Message::Uploaded(n) => Ok(n),
                other => Err(unexpected("UPLOADED", &other)),
            }
        })
    }

    /// Streams `path` into `out`; returns the bytes read.
    pub fn download(&self, path: &str, mut out: impl Write) -> Result<u64, AgentError> {
        self.tracked("download", || {
            let mut conn = self.open(&Message::Download(PathReq { path: bytes(path) }))?;
            match conn.recv()? {
                Message::FileInfo(_) => {}
                other => return Err(unexpected("FILE_INFO", &other)),
            }
            let mut total = 0u64;
            loop {
                match conn.recv()? {
                    Message::Data(chunk) => {
                        out.write_all(&chunk)?;
                        total += chunk.len() as u64;
                    }
                    Message::DataEnd => return Ok(total),
                    other => return Err(unexpected("DATA", &other)),
                }
            }
        })
    }

    /// Creates or replaces `path` with `data`.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<(), AgentError> {
        self.upload(path, mode, false, data).map(drop)
    }

    /// Reads `path` whole (at most the output cap).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        struct Capped {
            data: Vec<u8>,
            cap: usize,
            over: bool,
        }
        impl Write for Capped {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.data.len() + b.len() > self.cap {
                    self.over = true;
                    return Err(std::io::Error::other("file larger than the client's cap"));
                }
                self.data.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Capped {
            data: Vec::new(),
            cap: self.output_cap,
            over: false,
        };
        match self.download(path, &mut out) {
            Ok(_) => Ok(out.data),
            Err(_) if out.over => Err(AgentError::OutputTooLarge(self.output_cap)),
            Err(e) => Err(e),
        }
    }

    /// `path`'s metadata (not following a final symlink).
    pub fn stat(&self, path: &str) -> Result<FileStat, AgentError> {
        self.tracked("stat", || {
            match self.open(&Message::Stat(PathReq { path: bytes(path) }))?.recv()? {
                Message::StatResult(s) => Ok(s),
                other => Err(unexpected("STAT_RESULT", &other)),
            }
        })
    }

    /// The entries of directory `path`.
    pub fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, AgentError> {
        self.tracked("list_dir", || {
            let mut conn = self.open(&Message::ListDir(PathReq { path: bytes(path) }))?;
            let mut all = Vec::new();
            loop {
                match conn.recv()? {
                    Message::DirEntries(chunk) => {
                        if all.len() + chunk.entries.len() > MAX_DIR_ENTRIES {
                            return Err(AgentError::OutputTooLarge(MAX_DIR_ENTRIES));
                        }
                        all.extend(chunk.entries);
                        if !chunk.more {
                            return Ok(all);
                        }
                    }
                    other => return Err(unexpected("DIR_ENTRIES", &other)),
                }
            }
        })
    }

    /// Creates directory `path` (`parents`: like `mkdir -p`).
    pub fn mkdir(&self, path: &str, mode: u32, parents: bool) -> Result<(), AgentError> {
        self.tracked("mkdir", || {
            self.open(&Message::Mkdir(Mkdir {
                path: bytes(path),
                mode,
                parents,
            }))?
            .expect_ok()
        })
    }

    /// Removes `path` (`recursive`: a whole tree).
    pub fn remove(&self, path: &str, recursive: bool) -> Result<(), AgentError> {
        self.tracked("remove", || {
            self.open(&Message::Remove(Remove {
                path: bytes(path),
                recursive,
            }))?
            .expect_ok()
        })
    }

    /// Renames `from` to `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), AgentError> {
        self.tracked("rename", || {
            self.open(&Message::Rename(Rename {
                from: bytes(from),
                to: bytes(to),
            }))?
            .expect_ok()
        })
    }

    /// Sets `path`'s permission bits.
    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), AgentError> {
        self.tracked("chmod", || {
            self.open(&Message::Chmod(Chmod {
                path: bytes(path),
                mode,
            }))?
            .expect_ok()
        })
    }

    /// Flushes the guest's file systems (before a snapshot).
    pub fn sync(&self) -> Result<(), AgentError> {
        self.tracked("sync", || self.open(&Message::Sync)?.expect_ok())
    }

    /// Mounts a file system in the guest (mount(2) as the agent, root).
    /// A block device is flushed from the guest's buffer cache first, so
    /// a disk swapped in at restore is read afresh.
    pub fn mount(&self, mount: &GuestMount) -> Result<(), AgentError> {
        self.tracked("mount", || {
            self.open(&Message::Mount(mount.spec.clone()))?.expect_ok()
        })
    }

    /// Makes the agent check the VM generation now: after a restore it
    /// reseeds the guest's RNG and sets its clock; otherwise it sets the
    /// clock only (after a long pause; docs/AGENT.md).
    pub fn refresh(&self) -> Result<Refreshed, AgentError> {
        self.tracked("refresh", || match self.open(&Message::Refresh)?.recv()? {
            Message::Refreshed(r) => Ok(r),
            other => Err(unexpected("REFRESHED", &other)),
        })
    }
}
