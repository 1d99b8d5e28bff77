//! The per-VM observability state every thread can reach (it lives in
//! the VM's `RunState`): identity, the event queue, the pause clock, the
//! deadlines, and the counters the vCPUs and agent clients bump.
//!
//! Events are queued here and delivered by the VM's lifecycle thread
//! ([`super::life`]), so a vCPU never runs the caller's sink.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::audit::{AgentCounters, AuditConfig};
use super::event::{now_ms, EventKind, EventSink, Labels, VmEvent};
use super::exits::ExitCounters;
use super::idle::IdlePolicy;
use super::threads::ThreadSet;

/// Events waiting for the lifecycle thread at most; more are dropped and
/// counted (a sink that blocks cannot make the VMM hold unbounded memory).
pub(crate) const MAX_QUEUED_EVENTS: usize = 4096;

/// What the lifecycle thread waits on.
#[derive(Debug, Default)]
pub(crate) struct LifeState {
    pub queue: VecDeque<VmEvent>,
    /// When the TTL runs out.
    pub ttl_deadline: Option<Instant>,
    /// The TTL as set (for the event).
    pub ttl: Option<Duration>,
    pub idle: Option<IdlePolicy>,
    /// Bumped when the idle policy or the pause state changes: the
    /// lifecycle thread restarts its idle measurement.
    pub idle_epoch: u64,
    /// The VM has exited (the exit reason is in `RunState`).
    pub exited: bool,
    /// The `Vm` is being dropped: deliver what is queued and end.
    pub shutdown: bool,
    /// The exit was reported and every event delivered.
    pub drained: bool,
}

#[derive(Debug, Default)]
struct PauseClock {
    since: Option<Instant>,
    total: Duration,
}

/// See the module documentation.
///
/// Lock order: the runner's pause lock, then `life`; `pause` is a leaf.
#[derive(Debug)]
pub(crate) struct Observer {
    pub id: String,
    pub labels: Labels,
    pub sink: Option<EventSink>,
    pub audit: AuditConfig,
    pub started: Instant,
    pub threads: ThreadSet,
    pub exits: Vec<ExitCounters>,
    pub agent: AgentCounters,
    pub life: Mutex<LifeState>,
    pub wake: Condvar,
    pause: Mutex<PauseClock>,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh VM id: 16 hex digits from the kernel's random source.
pub(crate) fn fresh_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Unique enough within the process without randomness.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let t = now_ms() ^ (u64::from(std::process::id()) << 40);
        return format!("{:016x}", t ^ NEXT.fetch_add(1, Ordering::Relaxed));
    }
    format!("{:016x}", u64::from_le_bytes(b))
}

/// Who the VM is and where its events go, from the config.
#[derive(Clone, Debug, Default)]
pub(crate) struct Identity {
    pub id: String,
    pub labels: Labels,
    pub sink: Option<EventSink>,
    pub audit: AuditConfig,
    pub ttl: Option<Duration>,
    pub idle: Option<IdlePolicy>,
}

impl Identity {
    /// From `config`: its id or a fresh one.
    pub fn of(config: &crate::VmConfig) -> Self {
        Self {
            id: config.id.clone().unwrap_or_else(fresh_id),
            labels: config.labels.clone(),
            sink: config.events.clone(),
            audit: config.audit.clone(),
            ttl: config.ttl,
            idle: config.idle.clone(),
        }
    }
}

impl Observer {
    pub fn new(identity: Identity, vcpus: usize) -> Self {
        let started = Instant::now();
        Self {
            id: identity.id,
            labels: identity.labels,
            sink: identity.sink,
            audit: identity.audit,
            started,
            threads: ThreadSet::default(),
            exits: (0..vcpus).map(|_| ExitCounters::default()).collect(),
            agent: AgentCounters::default(),
            life: Mutex::new(LifeState {
                ttl_deadline: identity.ttl.map(|t| started + t),
                ttl: identity.ttl,
                idle: identity.idle,
                ..LifeState::default()
            }),
            wake: Condvar::new(),
            pause: Mutex::new(PauseClock::default()),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn life(&self) -> MutexGuard<'_, LifeState> {
        lock(&self.life)
    }

    /// Queues an event for the sink (nothing without one).
    pub fn emit(&self, kind: EventKind) {
        if self.sink.is_none() {
            return;
        }
        let event = VmEvent {
            time_ms: now_ms(),
            vm: self.id.clone(),
            labels: self.labels.clone(),
            kind,
        };
        let mut life = self.life();
        if life.queue.len() >= MAX_QUEUED_EVENTS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        life.queue.push_back(event);
        drop(life);
        self.wake.notify_all();
    }

    /// Events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wakes the lifecycle thread after a change to its state.
    pub fn update(&self, f: impl FnOnce(&mut LifeState)) {
        f(&mut self.life());
        self.wake.notify_all();
    }

    /// Records that the VM paused; false if it already was.
    pub fn mark_paused(&self) -> bool {
        let mut p = lock(&self.pause);
        if p.since.is_some() {
            return false;
        }
        p.since = Some(Instant::now());
        drop(p);
        self.update(|l| l.idle_epoch += 1);
        true
    }

    /// Records that the VM runs again; the pause's length if it was paused.
    pub fn mark_resumed(&self) -> Option<Duration> {
        let mut p = lock(&self.pause);
        let since = p.since.take()?;
        let d = since.elapsed();
        p.total += d;
        drop(p);
        self.update(|l| l.idle_epoch += 1);
        Some(d)
    }

    /// Whether the VM is paused, as recorded by `mark_paused` (a leaf
    /// lock: safe under the life lock, unlike the runner's).
    pub fn is_paused(&self) -> bool {
        lock(&self.pause).since.is_some()
    }

    /// Time spent paused so far, including a pause in progress.
    pub fn paused_time(&self) -> Duration {
        let p = lock(&self.pause);
        p.total + p.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// The TTL left now, if the VM has one.
    pub fn ttl_remaining(&self) -> Option<Duration> {
        self.life()
            .ttl_deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Sets (or with `None` clears) the TTL, counted from now.
    pub fn set_ttl(&self, ttl: Option<Duration>) {
        self.update(|l| {
            l.ttl = ttl;
            l.ttl_deadline = ttl.map(|t| Instant::now() + t);
        });
    }

    /// Sets (or clears) the idle policy.
    pub fn set_idle(&self, idle: Option<IdlePolicy>) {
        self.update(|l| {
            l.idle = idle;
            l.idle_epoch += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_queue_in_order_and_overflow_is_counted() {
        let obs = Observer::new(
            Identity {
                id: "v".into(),
                sink: Some(EventSink::new(|_| {})),
                ..Identity::default()
            },
            1,
        );
        for i in 0..MAX_QUEUED_EVENTS as u64 + 3 {
            obs.emit(EventKind::Booted { boot_us: i });
        }
        let life = obs.life();
        assert_eq!(life.queue.len(), MAX_QUEUED_EVENTS);
        assert_eq!(life.queue.front().unwrap().kind, EventKind::Booted { boot_us: 0 });
        drop(life);
        assert_eq!(obs.dropped_events(), 3);
    }

    #[test]
    fn pause_clock_counts_each_pause_once() {
        let obs = Observer::new(Identity::default(), 1);
        assert!(obs.mark_paused());
        assert!(!obs.mark_paused());
        std::thread::sleep(Duration::from_millis(20));
        let d = obs.mark_resumed().unwrap();
        assert!(d >= Duration::from_millis(20));
        assert_eq!(obs.mark_resumed(), None);
        assert!(obs.paused_time() >= d);
    }

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (fresh_id(), fresh_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
