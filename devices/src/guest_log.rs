//! Rate-limited logging of what a guest provokes.
//!
//! A guest can make a device complain as often as it likes, so nothing it
//! triggers may reach the log unbounded. Each device owns one
//! [`GuestLog`], shared with its transport: the first
//! [`LINES_PER_INTERVAL`] messages of an interval are logged, the rest are
//! only counted, and the next message after the interval ends is preceded
//! by one summary line with the count. The counters stay readable for the
//! VM's metrics.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages logged per interval before the rest are only counted.
pub const LINES_PER_INTERVAL: u32 = 5;
/// The interval.
pub const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// One device's log of guest-triggered problems.
#[derive(Debug)]
pub struct GuestLog {
    device: &'static str,
    window: Mutex<Option<Window>>,
    total: AtomicU64,
    suppressed: AtomicU64,
}

/// A copy of a [`GuestLog`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestLogCounters {
    /// Problems the guest provoked.
    pub warnings: u64,
    /// Of those, how many were counted but not logged.
    pub suppressed: u64,
}

impl GuestLog {
    /// A log for `device` (e.g. "virtio-blk"), the prefix of every line.
    pub fn new(device: &'static str) -> Self {
        Self {
            device,
            window: Mutex::new(None),
            total: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Records one problem; logs it at warn level unless this interval's
    /// quota is used up.
    pub fn warn(&self, msg: fmt::Arguments) {
        self.warn_at(Instant::now(), msg);
    }

    fn warn_at(&self, now: Instant, msg: fmt::Arguments) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let window = guard.get_or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.start) >= INTERVAL {
            if window.suppressed > 0 {
                log::warn!(
                    "{}: {} more guest-triggered problems in the last {} s were not logged",
                    self.device,
                    window.suppressed,
                    now.saturating_duration_since(window.start).as_secs()
                );
            }
            *window = Window {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if window.logged < LINES_PER_INTERVAL {
            window.logged += 1;
            let last = window.logged == LINES_PER_INTERVAL;
            drop(guard);
            if last {
                log::warn!(
                    "{}: {msg} (further problems this minute are only counted)",
                    self.device
                );
            } else {
                log::warn!("{}: {msg}", self.device);
            }
        } else {
            window.suppressed += 1;
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn counters(&self) -> GuestLogCounters {
        GuestLogCounters {
            warnings: self.total.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_few_lines_per_interval_and_counts_the_rest() {
        let log = GuestLog::new("test-device");
        let t0 = Instant::now();
        for i in 0..1000 {
            log.warn_at(t0 + Duration::from_millis(i), format_args!("problem {i}"));
        }
        assert_eq!(
            log.counters(),
            GuestLogCounters {
                warnings: 1000,
                suppressed: 1000 - u64::from(LINES_PER_INTERVAL)
            }
        );
        let window = log.window.lock().unwrap();
        assert_eq!(window.as_ref().map(|w| w.logged), Some(LINES_PER_INTERVAL));
        drop(window);
        // A new interval logs again (after its summary line).
        log.warn_at(t0 + INTERVAL + Duration::from_secs(1), format_args!("later"));
        let window = log.window.lock().unwrap();
        assert_eq!(window.as_ref().map(|w| (w.logged, w.suppressed)), Some((1, 0)));
        assert_eq!(log.counters().warnings, 1001);
    }
}
