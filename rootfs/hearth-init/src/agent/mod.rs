//! The guest agent, protocol version 2 (docs/AGENT.md): one
//! single-threaded `poll(2)` loop serving every connection, process and
//! transfer at once.
//!
//! In the guest it runs as a child of PID 1 (see `supervisor` in the
//! binary), which restarts it if it dies, on a vsock port, with the VM
//! generation read from /dev/port. In native mode (`hearth-init agent
//! --unix PATH`) the same loop serves a Unix socket, for tests on a host;
//! the generation then comes from a file and the host's RNG and clock are
//! never touched.
//!
//! Console lines: `AGENT-READY port=<p> pid=<pid>` (or `unix=<path>`)
//! once listening, `AGENT-REFRESHED generation=<hex>` after a restore, and
//! `hearth-init: agent: ...` for the agent's own failures.
//!
//! Modules, one job each:
//! - `reactor`: the loop, the poll set, deadlines;
//! - `session`: a connection's state machine (handshake, frame checks);
//! - `requests`: the request after the handshake;
//! - `pump`: bytes between processes and connections, end-of-turn work;
//! - `process`, `spawn`, `command`, `pty`, `ring`: processes;
//! - `files`, `transfer`: file requests; `mount`: MOUNT;
//! - `generation`: the restore hook;
//! - `outq`, `listener`, `fd`, `errors`: plumbing.

mod command;
mod errors;
mod fd;
mod files;
pub mod generation;
mod listener;
mod mount;
mod outq;
mod process;
mod pty;
mod pump;
mod reactor;
mod requests;
mod ring;
mod session;
mod spawn;
mod transfer;

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::console;

pub use spawn::exit_status;

/// A connection must complete its HELLO within this (docs/AGENT.md).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffers up to this size come from the heap, not from their own mmap.
const HEAP_ALLOC_MAX: libc::c_int = 4 << 20;
/// Free memory at the top of the heap kept for the next request.
const HEAP_KEEP: libc::c_int = 8 << 20;
/// The descriptor limit the agent asks for itself (a process costs up to
/// five descriptors, and 1024 may run).
const NOFILE_WANTED: libc::rlim_t = 16 << 10;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A vsock port (the guest).
    Vsock(u32),
    /// A Unix socket path (native mode).
    Unix(PathBuf),
}

/// Where the VM generation comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationSource {
    /// None: REFRESH reports generation 0, never restored.
    None,
    /// The guest's /dev/port; a change reseeds the CRNG and sets the
    /// clock.
    DevPort,
    /// A 48-byte file (native mode): a change is logged, nothing touched.
    File(PathBuf),
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct Options {
    /// The listening socket.
    pub listen: Listen,
    /// The generation source.
    pub generation: GenerationSource,
    /// The handshake's (and then the request's) deadline.
    pub hello_timeout: Duration,
    /// Stop on SIGTERM and SIGINT, killing every process group (the
    /// signals are blocked and read through a signalfd: only for a
    /// process whose only thread is the agent's).
    pub stop_on_signals: bool,
}

impl Options {
    /// The guest's agent on vsock `port`.
    pub fn guest(port: u32) -> Self {
        Self {
            listen: Listen::Vsock(port),
            generation: GenerationSource::DevPort,
            hello_timeout: HELLO_TIMEOUT,
            stop_on_signals: true,
        }
    }
}

/// Serves forever; returns only if the agent cannot be set up (or its
/// loop fails).
pub fn serve(opts: Options) -> Result<Infallible, String> {
    keep_heap();
    let nofile = raise_nofile();
    let umask = read_umask();
    let signals = signal_fd(opts.stop_on_signals).map_err(|e| format!("signalfd: {}", fd::error_text(&e)))?;
    let (listener, where_) = match &opts.listen {
        Listen::Vsock(port) => (
            listener::Listener::vsock(*port).map_err(|e| format!("vsock port {port}: {e}"))?,
            format!("port={port}"),
        ),
        Listen::Unix(path) => (
            listener::Listener::unix(path).map_err(|e| format!("unix socket {}: {e}", path.display()))?,
            format!("unix={}", path.display()),
        ),
    };
    let (source, live): (Option<Box<dyn generation::Source>>, bool) = match &opts.generation {
        GenerationSource::None => (None, false),
        GenerationSource::DevPort => match generation::DevPort::open() {
            Ok(port) => (Some(Box::new(port)), true),
            Err(e) => {
                console::line(&format!("hearth-init: agent: /dev/port: {}", fd::error_text(&e)));
                (None, false)
            }
        },
        GenerationSource::File(path) => (
            Some(Box::new(generation::GenerationFile::new(path.clone()))),
            false,
        ),
    };
    let watch = generation::Watch::new(source, live, Instant::now());
    let cfg = reactor::Config {
        hello_timeout: opts.hello_timeout,
        agent_env: agent_env(),
        nofile,
        umask,
    };
    let mut agent = reactor::Agent::new(listener, watch, cfg, signals);
    console::line(&format!("AGENT-READY {where_} pid={}", std::process::id()));
    match agent.run() {
        Ok(never) => match never {},
        Err(e) => Err(format!("poll: {}", fd::error_text(&e))),
    }
}

/// Keeps the memory of one request's buffers for the next. With guest
/// kernel code emulated, a fresh page costs ~3 ms; glibc would otherwise
/// give buffers over 128 KiB back to the kernel after every use. The cost
/// is at most [`HEAP_KEEP`] of idle memory.
fn keep_heap() {
    // SAFETY: mallopt(3) only changes malloc's tuning; no memory is passed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_ALLOC_MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP);
    }
}

/// Raises the agent's descriptor limit (root may raise the hard one);
/// returns the original, which children get back.
fn raise_nofile() -> Option<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) } != 0 || old.rlim_cur >= NOFILE_WANTED {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: NOFILE_WANTED,
        rlim_max: old.rlim_max.max(NOFILE_WANTED),
    };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Some(old);
    }
    let soft = libc::rlimit {
        rlim_cur: old.rlim_max.min(NOFILE_WANTED),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0).then_some(old)
}

fn read_umask() -> u32 {
    // SAFETY: umask(2) has no memory effects; the old mask is put back.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}

/// The agent's environment, for SPAWNs that give none.
fn agent_env() -> Vec<CString> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut entry = k.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            CString::new(entry).ok()
        })
        .collect()
}

/// A signalfd for SIGTERM and SIGINT (when asked) and, on kernels without
/// pidfds, SIGCHLD; the signals are blocked (children unblock them).
fn signal_fd(stop_on_signals: bool) -> std::io::Result<Option<fd::Fd>> {
    let pidfds = match fd::pidfd_open(std::process::id() as libc::pid_t) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::ENOSYS),
    };
    let mut signals = Vec::new();
    if stop_on_signals {
        signals.extend([libc::SIGTERM, libc::SIGINT]);
    }
    if !pidfds {
        signals.push(libc::SIGCHLD);
    }
    if signals.is_empty() {
        return Ok(None);
    }
    // SAFETY: sigset_t is plain old data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset for these calls; the mask change
    // applies to this (the agent's only) thread.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    // SAFETY: signalfd reads a valid sigset.
    let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    fd::Fd::from_new(raw).map(Some)
}
