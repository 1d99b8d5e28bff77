//! Hooks for Hearth's own tests (feature `test-hooks`, never in a
//! release build): they make a VMM thread misbehave on purpose. Each hook
//! is process-wide, so a test binary that sets one runs its VMs one at a
//! time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

static VIOLATE_ON_VCPU_START: AtomicBool = AtomicBool::new(false);

/// From now on, every vCPU thread makes a system call outside its seccomp
/// list (`getppid`) right after installing its filter.
pub fn violate_seccomp_on_vcpu_start() {
    VIOLATE_ON_VCPU_START.store(true, Ordering::SeqCst);
}

pub(crate) fn on_vcpu_start() {
    if VIOLATE_ON_VCPU_START.load(Ordering::SeqCst) {
        log::warn!("test hook: calling getppid from a vCPU thread");
        // SAFETY: getppid has no arguments and cannot fail.
        let ppid = unsafe { libc::getppid() };
        log::warn!("test hook: getppid returned {ppid}");
    }
}

/// No delay set.
const NONE: u64 = u64::MAX;

static ANSWER_TIMEOUT_MS: AtomicU64 = AtomicU64::new(NONE);
static SLOW_VCPU: AtomicU64 = AtomicU64::new(NONE);
static SLOW_VCPU_MS: AtomicU64 = AtomicU64::new(0);
static SLOW_EVENT_LOOP_MS: AtomicU64 = AtomicU64::new(NONE);

/// Wakes sleeping hooks early when the hooks are cleared. (A futex wait
/// with a timeout is in every thread's seccomp list; nanosleep is not.)
static WAKE: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// Sets how long a vCPU or the event loop may take to answer a pause,
/// resume or save request (normally a few seconds).
pub fn set_answer_timeout(timeout: Duration) {
    ANSWER_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::SeqCst);
}

pub(crate) fn answer_timeout() -> Option<Duration> {
    match ANSWER_TIMEOUT_MS.load(Ordering::SeqCst) {
        NONE => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// vCPU `index` of every VM waits `delay` before it answers a pause
/// request (it then parks as asked).
pub fn slow_vcpu_pause(index: u8, delay: Duration) {
    SLOW_VCPU_MS.store(delay.as_millis() as u64, Ordering::SeqCst);
    SLOW_VCPU.store(u64::from(index), Ordering::SeqCst);
}

/// Every event loop waits `delay` before it parks for a pause.
pub fn slow_event_loop_park(delay: Duration) {
    SLOW_EVENT_LOOP_MS.store(delay.as_millis() as u64, Ordering::SeqCst);
}

/// Clears every delay and the answer bound (sleeping hooks return at once).
pub fn clear() {
    SLOW_VCPU.store(NONE, Ordering::SeqCst);
    SLOW_EVENT_LOOP_MS.store(NONE, Ordering::SeqCst);
    ANSWER_TIMEOUT_MS.store(NONE, Ordering::SeqCst);
    let mut generation = WAKE.0.lock().unwrap_or_else(|p| p.into_inner());
    *generation += 1;
    WAKE.1.notify_all();
}

fn sleep(ms: u64) {
    let mut generation = WAKE.0.lock().unwrap_or_else(|p| p.into_inner());
    let start = *generation;
    let deadline = std::time::Instant::now() + Duration::from_millis(ms);
    while *generation == start {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        generation = WAKE
            .1
            .wait_timeout(generation, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

pub(crate) fn before_vcpu_pause(index: u8) {
    if SLOW_VCPU.load(Ordering::SeqCst) == u64::from(index) {
        let ms = SLOW_VCPU_MS.load(Ordering::SeqCst);
        log::warn!("test hook: vCPU {index} answers its pause request in {ms} ms");
        sleep(ms);
    }
}

pub(crate) fn before_event_loop_park() {
    match SLOW_EVENT_LOOP_MS.load(Ordering::SeqCst) {
        NONE => {}
        ms => {
            log::warn!("test hook: the event loop parks in {ms} ms");
            sleep(ms);
        }
    }
}
