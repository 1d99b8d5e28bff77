//! Why a VM stopped, and the shared state every thread uses to report it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hearth_devices::legacy::BootTime;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::kvm::kick;
use crate::observe::event::EventKind;
use crate::observe::observer::Observer;

/// Why a VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The guest reset the machine (a reboot through the i8042, or a KVM
    /// reset event). This is how a microVM guest normally ends.
    Reset,
    /// The guest powered off (a KVM shutdown event, or HLT with no
    /// interrupt controller to wake it).
    Shutdown,
    /// The guest crashed: a triple fault, an instruction KVM could not
    /// emulate, a failed VM entry. The text says which.
    Crash(String),
    /// [`Vm::stop`](crate::Vm::stop) (or dropping the `Vm`) ended it.
    Stopped,
    /// The VMM itself failed (an ioctl error, a dead thread).
    Error(String),
    /// The VM's time to live ran out ([`VmConfig::ttl`](crate::VmConfig)).
    TtlExpired,
    /// The VM was idle for its idle timeout, and was snapshotted into this
    /// directory and stopped ([`IdleAction::Snapshot`](crate::IdleAction)).
    /// Restoring the snapshot continues it.
    IdleSnapshot(PathBuf),
}

impl ExitReason {
    /// True for the orderly ends: reset, shutdown, stop, TTL and idle
    /// snapshot.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            Self::Reset | Self::Shutdown | Self::Stopped | Self::TtlExpired | Self::IdleSnapshot(_)
        )
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reset => f.write_str("guest reset"),
            Self::Shutdown => f.write_str("guest shut down"),
            Self::Crash(why) => write!(f, "guest crashed: {why}"),
            Self::Stopped => f.write_str("stopped"),
            Self::Error(why) => write!(f, "VMM error: {why}"),
            Self::TtlExpired => f.write_str("time to live expired"),
            Self::IdleSnapshot(dir) => write!(f, "idle: snapshotted into {} and stopped", dir.display()),
        }
    }
}

#[derive(Debug, Default)]
struct Status {
    exit: Option<ExitReason>,
    boot: Option<BootTime>,
}

/// Shared by the `Vm` handle, the vCPU threads and the devices.
///
/// Lock order: `status` and `kick_list` are never held together.
#[derive(Debug)]
pub(crate) struct RunState {
    status: Mutex<Status>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Readable once the VM has exited; lets callers poll instead of block.
    exit_evt: EventFd,
    /// Threads to kick on exit. `None` once teardown began: from then on
    /// the threads may be joined, and kicking them would be unsound.
    kick_list: Mutex<Option<Vec<libc::pthread_t>>>,
    /// Identity, events, counters and deadlines.
    pub obs: Observer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RunState {
    pub fn new(obs: Observer) -> std::io::Result<Self> {
        Ok(Self {
            obs,
            status: Mutex::new(Status::default()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            exit_evt: EventFd::new(EFD_NONBLOCK)?,
            kick_list: Mutex::new(Some(Vec::new())),
        })
    }

    /// Records the exit reason (the first one wins) and kicks every vCPU.
    pub fn request_exit(&self, reason: ExitReason) {
        {
            let mut status = lock(&self.status);
            if status.exit.is_none() {
                log::debug!("VM exit: {reason}");
                status.exit = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        self.obs.update(|l| l.exited = true);
        let _ = self.exit_evt.write(1);
        self.kick_all();
    }

    /// True once an exit was requested: vCPUs must stop running the guest.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.status).exit.clone()
    }

    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }

    /// Blocks until the VM exited or `timeout` passed.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<ExitReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut status = lock(&self.status);
        loop {
            if let Some(reason) = &status.exit {
                return Some(reason.clone());
            }
            status = match deadline {
                None => self.changed.wait(status).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.changed
                        .wait_timeout(status, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    pub fn record_boot(&self, time: BootTime) {
        let first = lock(&self.status).boot.replace(time).is_none();
        self.changed.notify_all();
        // Only the first marker is an event: the guest may write more.
        if !first {
            return;
        }
        self.obs.emit(EventKind::Booted {
            boot_us: u64::try_from(time.wall.as_micros()).unwrap_or(u64::MAX),
        });
    }

    /// Blocks until the guest wrote its boot-ready marker, the VM exited, or
    /// `timeout` passed. Returns the boot time if it was recorded.
    pub fn wait_boot(&self, timeout: Option<Duration>) -> Option<BootTime> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut status = lock(&self.status);
        loop {
            if status.boot.is_some() || status.exit.is_some() {
                return status.boot;
            }
            status = match deadline {
                None => self.changed.wait(status).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.changed
                        .wait_timeout(status, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Adds a vCPU thread to the kick list. Returns false if teardown began.
    pub fn add_kick_target(&self, thread: libc::pthread_t) -> bool {
        match lock(&self.kick_list).as_mut() {
            Some(list) => {
                list.push(thread);
                true
            }
            None => false,
        }
    }

    /// Kicks every registered vCPU thread.
    pub fn kick_all(&self) {
        if let Some(list) = lock(&self.kick_list).as_ref() {
            for &thread in list {
                kick::kick(thread);
            }
        }
    }

    /// Ends kicking; after this the vCPU threads may be joined.
    pub fn close_kick_list(&self) {
        *lock(&self.kick_list) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_exit_wins_and_wakes_waiters() {
        let rs = Arc::new(RunState::new(Observer::new(Default::default(), 1)).unwrap());
        assert_eq!(rs.wait_exit(Some(Duration::from_millis(5))), None);
        let r2 = rs.clone();
        let waiter = std::thread::spawn(move || r2.wait_exit(None));
        rs.request_exit(ExitReason::Reset);
        rs.request_exit(ExitReason::Stopped);
        assert_eq!(waiter.join().unwrap(), Some(ExitReason::Reset));
        assert!(rs.is_stopping());
        assert_eq!(rs.exit_evt().read().unwrap(), 2);
        // No boot marker was written: wait_boot returns at once with None.
        assert_eq!(rs.wait_boot(None), None);
    }

    #[test]
    fn kick_list_closes() {
        let rs = RunState::new(Observer::new(Default::default(), 1)).unwrap();
        rs.close_kick_list();
        assert!(!rs.add_kick_target(0));
        rs.kick_all();
    }
}
