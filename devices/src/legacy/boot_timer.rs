//! The boot-timer port: a guest writes [`BOOT_TIMER_MAGIC`] to I/O port
//! [`BOOT_TIMER_PORT`] when it is ready, and the VMM records how long that
//! took since the VM's creation began, in wall-clock and VMM CPU time.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The I/O port the guest writes to.
pub const BOOT_TIMER_PORT: u64 = 0x440;
/// The byte value that marks "guest ready".
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Time from the start of VM creation to the guest's ready marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTime {
    /// Wall-clock time.
    pub wall: Duration,
    /// CPU time used by the VMM process over the same interval.
    pub cpu: Duration,
}

/// Called once, on the vCPU thread, when the marker arrives.
pub type BootTimeSink = Arc<dyn Fn(BootTime) + Send + Sync>;

/// The boot-timer device.
pub struct BootTimer {
    start_wall: Instant,
    start_cpu: Duration,
    recorded: OnceLock<BootTime>,
    sink: BootTimeSink,
}

impl fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootTimer")
            .field("recorded", &self.recorded.get())
            .finish()
    }
}

impl BootTimer {
    /// Creates the device; times are measured from `start_wall` and
    /// `start_cpu` (the process CPU time at that instant).
    pub fn new(start_wall: Instant, start_cpu: Duration, sink: BootTimeSink) -> Self {
        Self {
            start_wall,
            start_cpu,
            recorded: OnceLock::new(),
            sink,
        }
    }

    /// The recorded boot time, if the guest wrote the marker.
    pub fn boot_time(&self) -> Option<BootTime> {
        self.recorded.get().copied()
    }
}

/// CPU time consumed by this process so far.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the kernel always supports; the call has no other effects.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl BusDevice for BootTimer {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [BOOT_TIMER_MAGIC] {
            return;
        }
        let now = BootTime {
            wall: self.start_wall.elapsed(),
            cpu: process_cpu_time().saturating_sub(self.start_cpu),
        };
        if self.recorded.set(now).is_ok() {
            log::info!(
                "guest ready: {} us wall, {} us VMM CPU",
                now.wall.as_micros(),
                now.cpu.as_micros()
            );
            (self.sink)(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn records_first_magic_write_only() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let t = BootTimer::new(
            Instant::now(),
            process_cpu_time(),
            Arc::new(move |bt| s.lock().unwrap().push(bt)),
        );
        t.write(0, &[1]);
        t.write(0, &[BOOT_TIMER_MAGIC, 0]);
        t.write(1, &[BOOT_TIMER_MAGIC]);
        assert!(t.boot_time().is_none());
        std::thread::sleep(Duration::from_millis(2));
        t.write(0, &[BOOT_TIMER_MAGIC]);
        let first = t.boot_time().unwrap();
        assert!(first.wall >= Duration::from_millis(2));
        t.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(t.boot_time(), Some(first));
        assert_eq!(*seen.lock().unwrap(), vec![first]);
    }
}
