//! A [`RateLimiter`] bound to a timer: when the limiter holds a device
//! back, the timer wakes the event loop once the tokens are there.
//!
//! While a throttle is blocked the device ignores queue notifications (the
//! guest may keep kicking; nothing is processed until the timer fires), so
//! a throttled device costs no CPU.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::rate_limiter::{RateLimit, RateLimiter};

/// A rate limiter with its wake-up timer.
pub struct Throttle {
    limiter: RateLimiter,
    config: RateLimit,
    timer: TimerFd,
    blocked: bool,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .field("blocked", &self.blocked)
            .finish()
    }
}

/// A timerfd whose read never blocks. The event loop may read a timer
/// after something in the same epoll batch re-armed or cleared it; a
/// blocking read would then stall every device on the loop until the new
/// deadline, or for ever.
pub(crate) fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    // SAFETY: fcntl on a descriptor we own, with plain integer flags.
    let flags = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

impl Throttle {
    /// A throttle enforcing `config`.
    pub fn new(config: RateLimit) -> io::Result<Self> {
        Self::with_limiter(RateLimiter::new(config), config)
    }

    /// A throttle around an existing limiter (tests pass a fake clock).
    pub fn with_limiter(limiter: RateLimiter, config: RateLimit) -> io::Result<Self> {
        let timer = nonblocking_timer()?;
        Ok(Self {
            limiter,
            config,
            timer,
            blocked: false,
        })
    }

    /// The limiter, to take tokens from.
    pub fn limiter(&mut self) -> &mut RateLimiter {
        &mut self.limiter
    }

    /// The settings in force.
    pub fn config(&self) -> RateLimit {
        self.config
    }

    /// Whether the device waits for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Blocks the device for `wait` (at least 1 µs so the timer is armed).
    pub fn block_for(&mut self, wait: Duration) {
        if self.blocked {
            return;
        }
        match self.timer.reset(wait.max(Duration::from_micros(1)), None) {
            Ok(()) => self.blocked = true,
            // Without a timer the device cannot wait: let it run unlimited
            // rather than stall the guest forever.
            Err(e) => log::error!("rate limiter: cannot arm the timer ({e}); not throttling"),
        }
    }

    /// Handles the timer firing. Returns whether the device may run again.
    pub fn on_timer(&mut self) -> bool {
        // Err(EAGAIN): it was re-armed since it fired; keep waiting.
        if self.timer.wait().is_ok() {
            self.blocked = false;
        }
        !self.blocked
    }

    /// Replaces the settings; a blocked device is retried at once.
    pub fn update(&mut self, config: RateLimit) {
        self.limiter.update(config);
        self.config = config;
        if self.blocked {
            self.blocked = false;
            self.block_for(Duration::ZERO);
        }
    }

    /// The timer descriptor, for the event loop.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::BucketConfig;

    #[test]
    fn reading_a_rearmed_or_cleared_timer_does_not_block() {
        let mut timer = nonblocking_timer().unwrap();
        timer.reset(Duration::from_micros(1), None).unwrap();
        assert!(wait_readable(timer.as_raw_fd(), 1000));
        // Something earlier in the same epoll batch re-arms it far away,
        // or clears it: the read must come back at once, empty-handed.
        timer.reset(Duration::from_secs(3600), None).unwrap();
        let t0 = std::time::Instant::now();
        assert!(timer.wait().is_err());
        timer.clear().unwrap();
        assert!(timer.wait().is_err());
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
    }

    #[test]
    fn blocks_until_the_timer_fires() {
        let mut t = Throttle::new(RateLimit {
            bandwidth: None,
            ops: Some(BucketConfig::per_second(1000)),
        })
        .unwrap();
        assert!(!t.is_blocked());
        let armed = std::time::Instant::now();
        t.block_for(Duration::from_millis(5));
        assert!(t.is_blocked());
        // A slow machine may get to the first read after the 5 ms: a read
        // that unblocks must come after the expiry.
        if t.on_timer() {
            assert!(
                armed.elapsed() >= Duration::from_millis(5),
                "a read before expiry does not unblock"
            );
        } else {
            assert!(wait_readable(t.timer_fd(), 1000));
            assert!(t.on_timer());
        }
        assert!(!t.is_blocked());
    }

    #[test]
    fn update_retries_a_blocked_device_at_once() {
        let mut t = Throttle::new(RateLimit {
            bandwidth: Some(BucketConfig::per_second(1)),
            ops: None,
        })
        .unwrap();
        t.block_for(Duration::from_secs(3600));
        t.update(RateLimit::default());
        assert_eq!(t.config(), RateLimit::default());
        assert!(
            wait_readable(t.timer_fd(), 1000),
            "the timer was re-armed to fire now"
        );
        assert!(t.on_timer());
        assert!(t.limiter().consume(u64::MAX));
    }
}
