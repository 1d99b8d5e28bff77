//! The backend's one pollable fd: an epoll set holding a wake-up eventfd,
//! smoltcp's timer, the upstream DNS socket and every host socket. The
//! device polls it (level-triggered); the backend reads it with a zero
//! timeout to learn which host socket is ready. Only interest that can
//! make progress is registered, so a ready fd never spins the loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// Token of the wake-up eventfd.
pub(super) const WAKE: u64 = 0;
/// Token of the timer.
pub(super) const TIMER: u64 = 1;
/// Token of the upstream DNS socket.
pub(super) const DNS: u64 = 2;
/// Host sockets' tokens are their flow ids, from here on.
pub(super) const FIRST_FLOW: u64 = 16;

#[derive(Debug)]
pub(super) struct Poller {
    epoll: Epoll,
    wake: EventFd,
    timer: TimerFd,
    armed: bool,
}

impl Poller {
    pub(super) fn new() -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let timer = crate::throttle::nonblocking_timer()?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TIMER),
        )?;
        Ok(Self {
            epoll,
            wake,
            timer,
            armed: false,
        })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// A clone of the wake-up eventfd, for the owner's handle.
    pub(super) fn waker(&self) -> io::Result<EventFd> {
        self.wake.try_clone()
    }

    /// Makes the fd readable until [`Poller::clear`].
    pub(super) fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Consumes the wake-up and the timer's expiry.
    pub(super) fn clear(&mut self) {
        let _ = self.wake.read();
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`, which is 8 bytes
        // long; the timerfd is ours and non-blocking.
        let _ = unsafe { libc::read(self.timer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed = false;
    }

    /// Fires the timer after `after` (replacing any earlier setting).
    pub(super) fn arm(&mut self, after: Duration) {
        let after = after.max(Duration::from_micros(50));
        if self.timer.reset(after, None).is_ok() {
            self.armed = true;
        }
    }

    /// Stops the timer.
    pub(super) fn disarm(&mut self) {
        if self.armed {
            let _ = self.timer.clear();
            self.armed = false;
        }
    }

    /// Watches `fd` for `events` under `token` (`Add`, `Modify` or
    /// `Delete`).
    pub(super) fn ctl(
        &self,
        op: ControlOperation,
        fd: RawFd,
        events: EventSet,
        token: u64,
    ) -> io::Result<()> {
        self.epoll.ctl(op, fd, EpollEvent::new(events, token))
    }

    /// Ready tokens and their events, without waiting.
    pub(super) fn ready(&self, out: &mut [EpollEvent]) -> usize {
        self.epoll.wait(0, out).unwrap_or(0)
    }
}
