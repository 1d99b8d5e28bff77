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

/// Compiled programs, built once per process.
struct Programs {
    /// The allow-lists: index kind * MODES + mode.
    lists: Vec<Result<BpfProgram, String>>,
    /// Makes `open`/`openat` fail with EACCES instead of killing.
    refuse_open: Result<BpfProgram, String>,
}

static PROGRAMS: OnceLock<Programs> = OnceLock::new();

fn kind_index(kind: ThreadKind) -> usize {
    match kind {
        ThreadKind::Vcpu => 0,
        ThreadKind::EventLoop => 1,
        ThreadKind::Api => 2,
    }
}

fn compile(
    rules: rules::Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

fn programs() -> &'static Programs {
    PROGRAMS.get_or_init(|| {
        let mut lists = Vec::with_capacity(KINDS * MODES);
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Api] {
            for mismatch in [SeccompAction::KillProcess, SeccompAction::Log] {
                lists.push(compile(rules::rules(kind), mismatch, SeccompAction::Allow));
            }
        }
        let refuse_open = compile(
            rules::refused_opens(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
        );
        Programs { lists, refuse_open }
    })
}

/// A compiled filter, ready to install on a thread.
#[derive(Clone, Copy, Debug)]
pub struct Filter {
    kind: ThreadKind,
    /// Installed in order; the kernel applies the strictest answer.
    programs: [Option<&'static BpfProgram>; 2],
}

fn built(
    kind: ThreadKind,
    p: Option<&'static Result<BpfProgram, String>>,
) -> Result<&'static BpfProgram, SeccompError> {
    match p {
        Some(Ok(p)) => Ok(p),
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

impl Filter {
    /// The filter for `kind` under `mode`: checks that it compiles, so a
    /// thread can install it without failing for that reason.
    ///
    /// Under `Enforce`, vCPU and event-loop threads also get a filter that
    /// makes opening files fail with EACCES rather than kill: glibc's
    /// malloc reads files under /proc and /sys the first time it trims or
    /// adds an arena, and copes when it cannot.
    pub fn new(kind: ThreadKind, mode: SeccompMode) -> Result<Self, SeccompError> {
        let mode_index = match mode {
            SeccompMode::Off => {
                return Ok(Self {
                    kind,
                    programs: [None, None],
                })
            }
            SeccompMode::Enforce => 0,
            SeccompMode::Log => 1,
        };
        let all = programs();
        let list = built(kind, all.lists.get(kind_index(kind) * MODES + mode_index))?;
        let refuse_open = match (mode, kind) {
            (SeccompMode::Enforce, ThreadKind::Vcpu | ThreadKind::EventLoop) => {
                Some(built(kind, Some(&all.refuse_open))?)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            programs: [refuse_open, Some(list)],
        })
    }

    /// How many filters [`Filter::install`] installs.
    pub fn filter_count(&self) -> usize {
        self.programs.iter().flatten().count()
    }

    /// Installs the filter on the calling thread (for good).
    pub fn install(&self) -> Result<(), SeccompError> {
        if self.filter_count() == 0 {
            return Ok(());
        }
        // The thread's first allocation sets up its malloc arena, which
        // may read /sys: make it while that still works.
        std::hint::black_box(Box::new([0u8; 64]));
        for program in self.programs.iter().flatten() {
            seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
                kind: self.kind,
                why: e.to_string(),
            })?;
        }
        Ok(())
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
                let want = match (mode, kind) {
                    (SeccompMode::Off, _) => 0,
                    (SeccompMode::Enforce, ThreadKind::Vcpu | ThreadKind::EventLoop) => 2,
                    _ => 1,
                };
                assert_eq!(f.filter_count(), want, "{kind:?} {mode:?}");
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
            // As under Enforce: opens refused first, then the list.
            let refuse = programs().refuse_open.as_ref().unwrap();
            seccompiler::apply_filter(refuse).unwrap();
            seccompiler::apply_filter(&program).unwrap();
            let open = std::fs::File::open("/proc/sys/vm/overcommit_memory").map_err(|e| e.raw_os_error());
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
            (pid > 0, ppid, errno, sock, ioctl, mapped, open.err())
        })
        .join()
        .unwrap();
        assert_eq!(
            result,
            (
                true,
                -1,
                Some(libc::EPERM),
                -1,
                -1,
                false,
                Some(Some(libc::EACCES))
            )
        );
    }
}
