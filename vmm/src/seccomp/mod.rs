//! seccomp filters, one per kind of thread Hearth runs (vCPU, event loop,
//! API), installed by each thread on itself once its setup is done. Only
//! Hearth's own threads are filtered: the embedding program's are not.
//!
//! With [`SeccompMode::Enforce`] (the default) a call outside the list
//! kills the whole process with SIGSYS: a VMM thread that makes one has
//! been subverted. [`SeccompMode::Log`] allows the call and has the kernel
//! log it (`dmesg`, audit), which is how one finds what a new code path
//! needs; [`SeccompMode::Off`] installs nothing.
//!
//! Serial callbacks and the `log` backend run on these threads too: under
//! `Enforce` they may lock, allocate, read the clock and write to
//! descriptors, but not open files or sockets.

mod rules;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde::{Deserialize, Serialize};

/// What a filter does with a call outside its list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Kill the process (SIGSYS).
    #[default]
    Enforce,
    /// Allow the call; the kernel logs it.
    Log,
    /// No filter.
    Off,
}

/// The kinds of thread, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The device event loop.
    EventLoop,
    /// A control thread serving pause/snapshot/stop requests (the
    /// launcher's API socket).
    Api,
}

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// The rules did not compile (a bug in Hearth).
    #[error("cannot build the {kind:?} seccomp filter: {why}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's message.
        why: String,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind:?} seccomp filter: {why}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's message.
        why: String,
    },
}

const KINDS: usize = 3;
const MODES: usize = 2;

/// Compiled programs, built once per process: index kind * MODES + mode.
static PROGRAMS: OnceLock<Vec<Result<BpfProgram, String>>> = OnceLock::new();

fn kind_index(kind: ThreadKind) -> usize {
    match kind {
        ThreadKind::Vcpu => 0,
        ThreadKind::EventLoop => 1,
        ThreadKind::Api => 2,
    }
}

fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(rules::rules(kind), mismatch, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

fn programs() -> &'static [Result<BpfProgram, String>] {
    PROGRAMS.get_or_init(|| {
        let mut v = Vec::with_capacity(KINDS * MODES);
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Api] {
            v.push(compile(kind, SeccompAction::KillProcess));
            v.push(compile(kind, SeccompAction::Log));
        }
        v
    })
}

/// A compiled filter, ready to install on a thread.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    kind: ThreadKind,
    program: Option<&'static BpfProgram>,
}

impl Filter {
    /// The filter for `kind` under `mode`: checks that it compiles, so a
    /// thread can install it without failing for that reason.
    pub fn new(kind: ThreadKind, mode: SeccompMode) -> Result<Self, SeccompError> {
        let mode_index = match mode {
            SeccompMode::Off => return Ok(Self { kind, program: None }),
            SeccompMode::Enforce => 0,
            SeccompMode::Log => 1,
        };
        match programs().get(kind_index(kind) * MODES + mode_index) {
            Some(Ok(p)) => Ok(Self {
                kind,
                program: Some(p),
            }),
            Some(Err(why)) => Err(SeccompError::Build {
                kind,
                why: why.clone(),
            }),
            None => Err(SeccompError::Build {
                kind,
                why: "no such filter".into(),
            }),
        }
    }

    /// Installs the filter on the calling thread (for good).
    pub fn install(&self) -> Result<(), SeccompError> {
        let Some(program) = self.program else {
            return Ok(());
        };
        // The thread's first allocation sets up its malloc arena, which
        // reads /sys (openat): make it before the filter forbids that.
        std::hint::black_box(Box::new([0u8; 64]));
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
            kind: self.kind,
            why: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Api] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
                let f = Filter::new(kind, mode).unwrap();
                assert_eq!(f.program.is_none(), mode == SeccompMode::Off);
            }
        }
    }

    #[test]
    fn a_filtered_thread_gets_only_its_list() {
        // Errno instead of kill, so the test can look at the result.
        let filter = SeccompFilter::new(
            rules::rules(ThreadKind::Vcpu),
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            TargetArch::try_from(std::env::consts::ARCH).unwrap(),
        )
        .unwrap();
        let program = BpfProgram::try_from(filter).unwrap();
        let result = std::thread::spawn(move || {
            seccompiler::apply_filter(&program).unwrap();
            // SAFETY: plain syscalls without pointers.
            let (pid, ppid) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_getppid)) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: socket() with constant arguments; the result is closed
            // if it is a descriptor.
            let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: an ioctl outside the list, on an invalid descriptor.
            let ioctl = unsafe { libc::ioctl(-1, libc::TIOCGWINSZ, 0) };
            let mapped = {
                // SAFETY: an anonymous executable mapping; unmapped if made.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                p != libc::MAP_FAILED
            };
            (pid > 0, ppid, errno, sock, ioctl, mapped)
        })
        .join()
        .unwrap();
        assert_eq!(result, (true, -1, Some(libc::EPERM), -1, -1, false));
    }
}
