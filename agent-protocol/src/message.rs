//! The messages of protocol version 2 (docs/AGENT.md) and their encoding:
//! one frame each, the kind byte naming the message. Data chunks (stdin,
//! stdout, stderr, file data) are raw bytes; every other body is the
//! message's fields in postcard.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::frame::{self, Frame, MAX_CHUNK};

/// The protocol version this crate speaks.
pub const VERSION: u32 = 2;
/// The oldest version it accepts from the other side.
pub const MIN_VERSION: u32 = 2;
/// The vsock port the agent listens on by default.
pub const DEFAULT_PORT: u32 = 52;

/// Frame kinds. Version 1 used 0x01-0x03 and 0x81-0x86; version 2 uses
/// none of them, so each side can tell the other's version from its first
/// frame.
pub mod kind {
    #![allow(missing_docs)]
    pub const HELLO: u8 = 0x10;
    pub const HELLO_OK: u8 = 0x11;
    pub const ERROR: u8 = 0x1f;

    pub const SPAWN: u8 = 0x20;
    pub const ATTACH: u8 = 0x21;
    pub const LIST: u8 = 0x22;
    pub const SIGNAL: u8 = 0x23;
    pub const WAIT: u8 = 0x24;

    pub const UPLOAD: u8 = 0x30;
    pub const DOWNLOAD: u8 = 0x31;
    pub const STAT: u8 = 0x32;
    pub const LIST_DIR: u8 = 0x33;
    pub const MKDIR: u8 = 0x34;
    pub const REMOVE: u8 = 0x35;
    pub const RENAME: u8 = 0x36;
    pub const CHMOD: u8 = 0x37;

    pub const SYNC: u8 = 0x40;
    pub const REFRESH: u8 = 0x41;
    pub const MOUNT: u8 = 0x42;

    pub const STDIN: u8 = 0x50;
    pub const STDIN_CLOSE: u8 = 0x51;
    pub const RESIZE: u8 = 0x52;
    pub const KILL: u8 = 0x53;
    pub const STDOUT: u8 = 0x58;
    pub const STDERR: u8 = 0x59;
    pub const EXIT: u8 = 0x5a;
    pub const STARTED: u8 = 0x5b;
    pub const OUTPUT_DROPPED: u8 = 0x5c;

    pub const DATA: u8 = 0x60;
    pub const DATA_END: u8 = 0x61;

    pub const OK: u8 = 0x70;
    pub const PROCESSES: u8 = 0x71;
    pub const STAT_RESULT: u8 = 0x72;
    pub const DIR_ENTRIES: u8 = 0x73;
    pub const UPLOADED: u8 = 0x74;
    pub const FILE_INFO: u8 = 0x75;
    pub const REFRESHED: u8 = 0x76;

    /// Version 1's error response (kind + u32 LE length + UTF-8 text).
    pub const V1_ERROR: u8 = 0x84;
    /// Version 1's first request kinds (EXEC, WRITE_FILE, READ_FILE).
    pub const V1_REQUESTS: std::ops::RangeInclusive<u8> = 0x01..=0x03;
}

/// The first frame of every connection, host to agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The newest version the host speaks.
    pub version: u32,
    /// The oldest it accepts.
    pub min_version: u32,
    /// Who is asking (free text, for logs).
    pub client: String,
}

/// The agent's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The version both now speak.
    pub version: u32,
    /// The agent's own version (free text).
    pub agent: String,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No such file, directory or program.
    NotFound,
    /// Not permitted.
    PermissionDenied,
    /// The target exists.
    AlreadyExists,
    /// A path component is not a directory.
    NotADirectory,
    /// The path is a directory.
    IsADirectory,
    /// The directory is not empty.
    DirectoryNotEmpty,
    /// An argument is invalid.
    InvalidInput,
    /// No process with that id.
    NoSuchProcess,
    /// The agent runs as many processes as it allows.
    TooManyProcesses,
    /// The request is malformed or out of order.
    BadRequest,
    /// The versions do not overlap.
    Version,
    /// Anything else (the errno says more).
    Other,
}

/// A failed request: what kind of failure, the errno if there was one,
/// and a message naming what failed (a path, a program) and the errno's
/// text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The kind.
    pub kind: ErrorKind,
    /// The errno, or 0.
    pub errno: i32,
    /// What happened.
    pub message: String,
}

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Who a process runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id (supplementary groups are cleared).
    pub gid: u32,
}

/// A process to start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spawn {
    /// Program and arguments; `argv[0]` is looked up in PATH if it has no
    /// `/`.
    pub argv: Vec<ByteBuf>,
    /// Environment, `KEY=VALUE` each (the agent's own otherwise).
    pub env: Vec<ByteBuf>,
    /// Working directory (`/` if none).
    pub cwd: Option<ByteBuf>,
    /// Run as this user (the agent's, root, if none).
    pub user: Option<User>,
    /// Kill the process group with SIGKILL after this long.
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal of this size (stdout and stderr merge).
    pub tty: Option<WinSize>,
    /// Survive the client's disconnect (output is then kept, up to a cap,
    /// for a later ATTACH); otherwise a disconnect kills the process group.
    pub detach: bool,
    /// Whether STDIN frames follow; if not, stdin is /dev/null.
    pub stdin: bool,
    /// Options added to protocol 2 later ([`SpawnExtra`]): sent after
    /// the fields above, and only when not all default, so a SPAWN that
    /// does not use them is byte for byte what every version-2 agent
    /// reads (and an agent that predates them refuses one that does,
    /// with `BadRequest`, rather than ignoring them).
    /// (Boxed: most spawns have none, and every [`Message`] is as large
    /// as its largest variant.)
    #[serde(skip)]
    pub extra: Box<SpawnExtra>,
}

/// The later, optional part of a [`Spawn`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnExtra {
    /// chroot(2) into this directory (a path in the agent's root) before
    /// `user` and `cwd` apply; PATH is then searched inside it.
    pub root: Option<ByteBuf>,
    /// setrlimit(2) in the child, after the agent's own defaults.
    pub rlimits: Vec<Rlimit>,
    /// With [`Spawn::detach`]: the agent lets go of the connection right
    /// after STARTED (then closes it), so everything the process writes,
    /// and its exit, is kept for an ATTACH, however soon it comes.
    pub release: bool,
}

impl SpawnExtra {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// A resource limit for a spawned process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The resource, as Linux numbers it (`RLIMIT_NOFILE` = 7, ...).
    pub resource: u32,
    /// Soft limit (`u64::MAX`: unlimited).
    pub soft: u64,
    /// Hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// Mount a file system in the guest (mount(2)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The source: a block device, a directory (bind mounts) or a name.
    pub source: ByteBuf,
    /// Where (absolute path).
    pub target: ByteBuf,
    /// File system type (`ext4`, `proc`, ...; empty for bind mounts).
    pub fstype: ByteBuf,
    /// mount(2) flags (`MS_RDONLY`, `MS_BIND`, ...).
    pub flags: u64,
    /// File-system-specific options (`mode=755`); may be empty.
    pub data: ByteBuf,
    /// Create `target` (and its parents) first if missing.
    pub mkdir: bool,
}

/// Attach to a process (detached or not, if no client is attached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// The process id ([`Started::id`]).
    pub id: u64,
}

/// Signal a process's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// The process id ([`Started::id`]).
    pub id: u64,
    /// The signal number.
    pub signal: i32,
}

/// Wait for a process to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    /// The process id ([`Started::id`]).
    pub id: u64,
}

/// Write a file from the DATA frames that follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Absolute path.
    pub path: ByteBuf,
    /// Permission bits.
    pub mode: u32,
    /// Create missing parent directories.
    pub parents: bool,
}

/// A request about one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReq {
    /// Absolute path.
    pub path: ByteBuf,
}

/// Make a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    /// Absolute path.
    pub path: ByteBuf,
    /// Permission bits.
    pub mode: u32,
    /// Create parents, and succeed if it exists (`mkdir -p`).
    pub parents: bool,
}

/// Remove a file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remove {
    /// Absolute path.
    pub path: ByteBuf,
    /// Remove a directory and everything under it.
    pub recursive: bool,
}

/// Rename a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    /// From.
    pub from: ByteBuf,
    /// To.
    pub to: ByteBuf,
}

/// Change a path's permission bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chmod {
    /// Absolute path.
    pub path: ByteBuf,
    /// Permission bits.
    pub mode: u32,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Killed because its timeout passed.
    pub timed_out: bool,
}

/// A process started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The agent's id for it (never reused while the agent runs).
    pub id: u64,
    /// Its pid in the guest.
    pub pid: i32,
}

/// A process's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessState {
    /// Still running.
    Running,
    /// Ended.
    Exited(ExitInfo),
}

/// One process the agent knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its id.
    pub id: u64,
    /// Its pid.
    pub pid: i32,
    /// Its argv.
    pub argv: Vec<ByteBuf>,
    /// Running or ended.
    pub state: ProcessState,
    /// Started with [`Spawn::detach`].
    pub detached: bool,
    /// A client is attached.
    pub attached: bool,
    /// On a pseudo-terminal.
    pub tty: bool,
    /// Output kept for the next attach, in bytes.
    pub buffered: u64,
    /// Output dropped because the buffer was full, in bytes.
    pub dropped: u64,
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else.
    Other,
}

/// A path's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Its name.
    pub name: ByteBuf,
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// Some entries of a directory; more chunks follow while `more`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirChunk {
    /// The entries (at most [`DIR_CHUNK`]).
    pub entries: Vec<DirEntry>,
    /// Whether another chunk follows.
    pub more: bool,
}

/// Most entries in one [`DirChunk`].
pub const DIR_CHUNK: usize = 512;

/// A file about to be downloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Its size when opened.
    pub size: u64,
    /// Its permission bits.
    pub mode: u32,
}

/// The answer to REFRESH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refreshed {
    /// The VM was restored (or forked) since the agent last looked: the
    /// guest's random number generator was reseeded and its clock set.
    pub restored: bool,
    /// The VM generation the agent now runs under.
    pub generation: u64,
}

/// Every frame of protocol version 2.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Message {
    Hello(Hello),
    HelloOk(HelloOk),
    Error(ErrorInfo),
    Spawn(Spawn),
    Attach(Attach),
    List,
    Signal(Signal),
    Wait(Wait),
    Upload(Upload),
    Download(PathReq),
    Stat(PathReq),
    ListDir(PathReq),
    Mkdir(Mkdir),
    Remove(Remove),
    Rename(Rename),
    Chmod(Chmod),
    Sync,
    Refresh,
    Mount(Mount),
    Stdin(Vec<u8>),
    StdinClose,
    Resize(WinSize),
    Kill(i32),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitInfo),
    Started(Started),
    OutputDropped(u64),
    Data(Vec<u8>),
    DataEnd,
    Ok,
    Processes(Vec<ProcessInfo>),
    StatResult(FileStat),
    DirEntries(DirChunk),
    Uploaded(u64),
    FileInfo(FileInfo),
    Refreshed(Refreshed),
}

/// A frame that is not a valid version-2 message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A kind this version does not know (a version-1 peer sends these).
    UnknownKind(u8),
    /// The body does not decode as the kind's fields, or is too long.
    BadBody {
        /// The kind.
        kind: u8,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k:#04x}"),
            Self::BadBody { kind, reason } => write!(f, "malformed frame kind {kind:#04x}: {reason}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn body<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

fn fields<'a, T: Deserialize<'a>>(kind: u8, bytes: &'a [u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(DecodeError::BadBody {
            kind,
            reason: format!("{} bytes left over", rest.len()),
        }),
        Err(e) => Err(DecodeError::BadBody {
            kind,
            reason: e.to_string(),
        }),
    }
}

/// A SPAWN body: the fields, then [`SpawnExtra`] only if it is not all
/// default.
fn spawn_body(spawn: &Spawn) -> Vec<u8> {
    let mut out = body(spawn);
    if !spawn.extra.is_default() {
        out.extend(body(&spawn.extra));
    }
    out
}

/// Decodes a SPAWN body with or without its [`SpawnExtra`].
fn spawn_fields(bytes: &[u8]) -> Result<Spawn, DecodeError> {
    let bad = |reason: String| DecodeError::BadBody {
        kind: kind::SPAWN,
        reason,
    };
    let (mut spawn, rest) = postcard::take_from_bytes::<Spawn>(bytes).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        spawn.extra = Box::new(fields(kind::SPAWN, rest)?);
        if spawn.extra.is_default() {
            // Never sent that way: one encoding per message.
            return Err(bad("default spawn options sent".into()));
        }
    }
    Ok(spawn)
}

fn empty(kind: u8, bytes: &[u8], m: Message) -> Result<Message, DecodeError> {
    if bytes.is_empty() {
        Ok(m)
    } else {
        Err(DecodeError::BadBody {
            kind,
            reason: "expected no body".into(),
        })
    }
}

fn chunk(kind: u8, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if bytes.len() > MAX_CHUNK {
        return Err(DecodeError::BadBody {
            kind,
            reason: format!("a {}-byte chunk (at most {MAX_CHUNK})", bytes.len()),
        });
    }
    Ok(bytes.to_vec())
}

impl Message {
    /// The frame kind and body.
    pub fn to_frame(&self) -> (u8, Vec<u8>) {
        use kind::*;
        match self {
            Self::Hello(m) => (HELLO, body(m)),
            Self::HelloOk(m) => (HELLO_OK, body(m)),
            Self::Error(m) => (ERROR, body(m)),
            Self::Spawn(m) => (SPAWN, spawn_body(m)),
            Self::Attach(m) => (ATTACH, body(m)),
            Self::List => (LIST, Vec::new()),
            Self::Signal(m) => (SIGNAL, body(m)),
            Self::Wait(m) => (WAIT, body(m)),
            Self::Upload(m) => (UPLOAD, body(m)),
            Self::Download(m) => (DOWNLOAD, body(m)),
            Self::Stat(m) => (STAT, body(m)),
            Self::ListDir(m) => (LIST_DIR, body(m)),
            Self::Mkdir(m) => (MKDIR, body(m)),
            Self::Remove(m) => (REMOVE, body(m)),
            Self::Rename(m) => (RENAME, body(m)),
            Self::Chmod(m) => (CHMOD, body(m)),
            Self::Sync => (SYNC, Vec::new()),
            Self::Refresh => (REFRESH, Vec::new()),
            Self::Mount(m) => (MOUNT, body(m)),
            Self::Stdin(b) => (STDIN, b.clone()),
            Self::StdinClose => (STDIN_CLOSE, Vec::new()),
            Self::Resize(m) => (RESIZE, body(m)),
            Self::Kill(s) => (KILL, body(s)),
            Self::Stdout(b) => (STDOUT, b.clone()),
            Self::Stderr(b) => (STDERR, b.clone()),
            Self::Exit(m) => (EXIT, body(m)),
            Self::Started(m) => (STARTED, body(m)),
            Self::OutputDropped(n) => (OUTPUT_DROPPED, body(n)),
            Self::Data(b) => (DATA, b.clone()),
            Self::DataEnd => (DATA_END, Vec::new()),
            Self::Ok => (OK, Vec::new()),
            Self::Processes(m) => (PROCESSES, body(m)),
            Self::StatResult(m) => (STAT_RESULT, body(m)),
            Self::DirEntries(m) => (DIR_ENTRIES, body(m)),
            Self::Uploaded(n) => (UPLOADED, body(n)),
            Self::FileInfo(m) => (FILE_INFO, body(m)),
            Self::Refreshed(m) => (REFRESHED, body(m)),
        }
    }

    /// The whole frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, body) = self.to_frame();
        frame::encode(kind, &body)
    }

    /// Decodes one frame.
    pub fn decode(frame: &Frame) -> Result<Self, DecodeError> {
        Self::from_parts(frame.kind, &frame.body)
    }

    /// Decodes a frame given as kind and body.
    pub fn from_parts(k: u8, b: &[u8]) -> Result<Self, DecodeError> {
        use kind::*;
        Ok(match k {
            HELLO => Self::Hello(fields(k, b)?),
            HELLO_OK => Self::HelloOk(fields(k, b)?),
            ERROR => Self::Error(fields(k, b)?),
            SPAWN => Self::Spawn(spawn_fields(b)?),
            ATTACH => Self::Attach(fields(k, b)?),
            LIST => empty(k, b, Self::List)?,
            SIGNAL => Self::Signal(fields(k, b)?),
            WAIT => Self::Wait(fields(k, b)?),
            UPLOAD => Self::Upload(fields(k, b)?),
            DOWNLOAD => Self::Download(fields(k, b)?),
            STAT => Self::Stat(fields(k, b)?),
            LIST_DIR => Self::ListDir(fields(k, b)?),
            MKDIR => Self::Mkdir(fields(k, b)?),
            REMOVE => Self::Remove(fields(k, b)?),
            RENAME => Self::Rename(fields(k, b)?),
            CHMOD => Self::Chmod(fields(k, b)?),
            SYNC => empty(k, b, Self::Sync)?,
            REFRESH => empty(k, b, Self::Refresh)?,
            MOUNT => Self::Mount(fields(k, b)?),
            STDIN => Self::Stdin(chunk(k, b)?),
            STDIN_CLOSE => empty(k, b, Self::StdinClose)?,
            RESIZE => Self::Resize(fields(k, b)?),
            KILL => Self::Kill(fields(k, b)?),
            STDOUT => Self::Stdout(chunk(k, b)?),
            STDERR => Self::Stderr(chunk(k, b)?),
            EXIT => Self::Exit(fields(k, b)?),
            STARTED => Self::Started(fields(k, b)?),
            OUTPUT_DROPPED => Self::OutputDropped(fields(k, b)?),
            DATA => Self::Data(chunk(k, b)?),
            DATA_END => empty(k, b, Self::DataEnd)?,
            OK => empty(k, b, Self::Ok)?,
            PROCESSES => Self::Processes(fields(k, b)?),
            STAT_RESULT => Self::StatResult(fields(k, b)?),
            DIR_ENTRIES => Self::DirEntries(fields(k, b)?),
            UPLOADED => Self::Uploaded(fields(k, b)?),
            FILE_INFO => Self::FileInfo(fields(k, b)?),
            REFRESHED => Self::Refreshed(fields(k, b)?),
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }

    /// Whether this message may open a connection's work after the
    /// handshake (a request).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Self::Spawn(_)
                | Self::Attach(_)
                | Self::List
                | Self::Signal(_)
                | Self::Wait(_)
                | Self::Upload(_)
                | Self::Download(_)
                | Self::Stat(_)
                | Self::ListDir(_)
                | Self::Mkdir(_)
                | Self::Remove(_)
                | Self::Rename(_)
                | Self::Chmod(_)
                | Self::Sync
                | Self::Refresh
                | Self::Mount(_)
        )
    }
}

/// The version-1 ERROR frame an agent sends a version-1 host, which that
/// host prints: a clear error instead of a hang.
pub fn v1_error_frame(text: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + text.len());
    body.extend_from_slice(&(text.len() as u32).to_le_bytes());
    body.extend_from_slice(text.as_bytes());
    frame::encode(kind::V1_ERROR, &body)
}

/// The text of a version-1 ERROR frame's body (what an old agent says).
pub fn v1_error_text(body: &[u8]) -> Option<String> {
    let (len, text) = body.split_first_chunk::<4>()?;
    (u32::from_le_bytes(*len) as usize == text.len()).then(|| String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, MAX_FRAME};

    fn b(s: &str) -> ByteBuf {
        ByteBuf::from(s.as_bytes().to_vec())
    }

    fn samples() -> Vec<Message> {
        let exit = ExitInfo {
            code: None,
            signal: Some(9),
            timed_out: true,
        };
        vec![
            Message::Hello(Hello {
                version: VERSION,
                min_version: MIN_VERSION,
                client: "hearth 0.1".into(),
            }),
            Message::HelloOk(HelloOk {
                version: 2,
                agent: "hearth-init".into(),
            }),
            Message::Error(ErrorInfo {
                kind: ErrorKind::NotFound,
                errno: 2,
                message: "open /x: No such file or directory".into(),
            }),
            Message::Spawn(Spawn {
                argv: vec![b("sh"), b("-c"), ByteBuf::from(vec![0xff, 0])],
                env: vec![b("A=1")],
                cwd: Some(b("/tmp")),
                user: Some(User { uid: 1000, gid: 100 }),
                timeout_ms: Some(5000),
                tty: Some(WinSize { rows: 24, cols: 80 }),
                detach: true,
                stdin: true,
                extra: Box::default(),
            }),
            Message::Spawn(Spawn {
                argv: vec![b("/bin/busybox"), b("echo")],
                extra: Box::new(SpawnExtra {
                    root: Some(b("/run/task/rootfs")),
                    rlimits: vec![Rlimit {
                        resource: 7,
                        soft: 1024,
                        hard: u64::MAX,
                    }],
                    release: false,
                }),
                ..Spawn::default()
            }),
            Message::Spawn(Spawn {
                argv: vec![b("true")],
                detach: true,
                extra: Box::new(SpawnExtra {
                    release: true,
                    ..SpawnExtra::default()
                }),
                ..Spawn::default()
            }),
            Message::Attach(Attach { id: 7 }),
            Message::List,
            Message::Signal(Signal { id: 7, signal: 15 }),
            Message::Wait(Wait { id: u64::MAX }),
            Message::Upload(Upload {
                path: b("/a"),
                mode: 0o644,
                parents: true,
            }),
            Message::Download(PathReq { path: b("/a") }),
            Message::Stat(PathReq { path: b("/") }),
            Message::ListDir(PathReq { path: b("/") }),
            Message::Mkdir(Mkdir {
                path: b("/a/b"),
                mode: 0o755,
                parents: true,
            }),
            Message::Remove(Remove {
                path: b("/a"),
                recursive: true,
            }),
            Message::Rename(Rename {
                from: b("/a"),
                to: b("/b"),
            }),
            Message::Chmod(Chmod {
                path: b("/b"),
                mode: 0o600,
            }),
            Message::Sync,
            Message::Refresh,
            Message::Mount(Mount {
                source: b("/dev/vdb"),
                target: b("/run/task"),
                fstype: b("ext4"),
                flags: 0,
                data: b(""),
                mkdir: true,
            }),
            Message::Stdin(vec![1, 2, 3]),
            Message::StdinClose,
            Message::Resize(WinSize { rows: 50, cols: 132 }),
            Message::Kill(2),
            Message::Stdout(vec![0; MAX_CHUNK]),
            Message::Stderr(Vec::new()),
            Message::Exit(exit),
            Message::Started(Started { id: 1, pid: 42 }),
            Message::OutputDropped(12345),
            Message::Data(vec![9; 10]),
            Message::DataEnd,
            Message::Ok,
            Message::Processes(vec![ProcessInfo {
                id: 1,
                pid: 2,
                argv: vec![b("sleep")],
                state: ProcessState::Exited(exit),
                detached: true,
                attached: false,
                tty: false,
                buffered: 10,
                dropped: 3,
            }]),
            Message::StatResult(FileStat {
                kind: FileKind::Dir,
                size: 4096,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_ns: -1,
            }),
            Message::DirEntries(DirChunk {
                entries: vec![DirEntry {
                    name: b("x"),
                    kind: FileKind::File,
                    size: 1,
                    mode: 0o644,
                }],
                more: false,
            }),
            Message::Uploaded(1 << 30),
            Message::FileInfo(FileInfo { size: 5, mode: 0o644 }),
            Message::Refreshed(Refreshed {
                restored: true,
                generation: 99,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        let all = samples();
        let mut stream = Vec::new();
        for m in &all {
            stream.extend(m.encode());
        }
        let mut r = &stream[..];
        for m in &all {
            let f = read_frame(&mut r).unwrap().unwrap();
            assert!(f.body.len() < MAX_FRAME);
            assert_eq!(&Message::decode(&f).unwrap(), m);
        }
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn malformed_bodies_and_unknown_kinds_are_errors() {
        assert_eq!(
            Message::from_parts(0x01, b"x"),
            Err(DecodeError::UnknownKind(0x01))
        );
        assert!(matches!(
            Message::from_parts(kind::LIST, b"x"),
            Err(DecodeError::BadBody { .. })
        ));
        assert!(matches!(
            Message::from_parts(kind::SPAWN, &[0xff; 3]),
            Err(DecodeError::BadBody { .. })
        ));
        // Trailing bytes are refused.
        let (k, mut body) = Message::Started(Started { id: 1, pid: 1 }).to_frame();
        body.push(0);
        assert!(matches!(
            Message::from_parts(k, &body),
            Err(DecodeError::BadBody { .. })
        ));
        // A chunk over the limit.
        assert!(matches!(
            Message::from_parts(kind::STDOUT, &vec![0; MAX_CHUNK + 1]),
            Err(DecodeError::BadBody { .. })
        ));
    }

    #[test]
    fn version_1_errors_are_recognised_both_ways() {
        let f = v1_error_frame("this agent speaks protocol 2");
        let mut r = &f[..];
        let frame = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(frame.kind, kind::V1_ERROR);
        assert_eq!(
            v1_error_text(&frame.body).as_deref(),
            Some("this agent speaks protocol 2")
        );
        assert_eq!(v1_error_text(&[1, 0]), None);
    }

    #[test]
    fn requests_are_told_apart() {
        let requests = samples().into_iter().filter(Message::is_request).count();
        assert_eq!(requests, 18);
    }

    #[test]
    fn spawn_options_are_sent_only_when_used() {
        // Without options a SPAWN body is exactly protocol 2's first
        // encoding (an older agent reads it).
        let plain = Spawn {
            argv: vec![b("true")],
            ..Spawn::default()
        };
        let (_, body) = Message::Spawn(plain.clone()).to_frame();
        assert_eq!(body, postcard::to_allocvec(&plain).unwrap());
        // With them, the options follow; decoding gives them back.
        let mut rooted = plain.clone();
        rooted.extra.root = Some(b("/mnt"));
        let (k, body) = Message::Spawn(rooted.clone()).to_frame();
        assert!(body.starts_with(&postcard::to_allocvec(&plain).unwrap()));
        assert_eq!(Message::from_parts(k, &body), Ok(Message::Spawn(rooted)));
        // Default options sent explicitly, or garbage after the fields,
        // are refused.
        let mut explicit = postcard::to_allocvec(&plain).unwrap();
        explicit.extend(postcard::to_allocvec(&SpawnExtra::default()).unwrap());
        assert!(matches!(
            Message::from_parts(k, &explicit),
            Err(DecodeError::BadBody { .. })
        ));
        let mut garbage = postcard::to_allocvec(&plain).unwrap();
        garbage.extend([1, 0xff]);
        assert!(matches!(
            Message::from_parts(k, &garbage),
            Err(DecodeError::BadBody { .. })
        ));
    }
}
