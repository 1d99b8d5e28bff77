//! Idle detection: the policy, and a pure tracker fed with activity
//! samples (vCPU CPU time and I/O operation counts) that says when a VM
//! has been idle for its timeout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The vCPU load under which a VM counts as idle, by default: 2% of one
/// CPU (a guest's timer ticks, not its work).
pub const DEFAULT_IDLE_CPU_THRESHOLD: f64 = 0.02;

/// What happens to a VM idle for its timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleAction {
    /// Pause it (`"pause"`); it stays paused until resumed.
    Pause,
    /// Snapshot it into the directory and stop it
    /// (`{"snapshot": "DIR"}`), with
    /// [`ExitReason::IdleSnapshot`](crate::ExitReason::IdleSnapshot). A
    /// restore of that snapshot continues it.
    Snapshot(PathBuf),
}

/// When a VM counts as idle, and what then happens to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdlePolicy {
    /// How long the VM must be idle.
    #[serde(rename = "timeout_ms", with = "super::millis")]
    pub timeout: Duration,
    /// What then happens.
    pub action: IdleAction,
    /// The vCPU load (CPU time of all vCPU threads per wall-clock second,
    /// 1.0 is one CPU) at or under which the VM counts as idle.
    #[serde(default = "default_threshold")]
    pub cpu_threshold: f64,
}

fn default_threshold() -> f64 {
    DEFAULT_IDLE_CPU_THRESHOLD
}

impl IdlePolicy {
    /// Idle for `timeout`, then `action`, with the default CPU threshold.
    pub fn new(timeout: Duration, action: IdleAction) -> Self {
        Self {
            timeout,
            action,
            cpu_threshold: DEFAULT_IDLE_CPU_THRESHOLD,
        }
    }

    /// How often activity is sampled: a quarter of the timeout, between
    /// 10 ms and 1 s.
    pub fn check_interval(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// What a VM has done so far: compared between samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Activity {
    /// CPU time of the vCPU threads, microseconds.
    pub vcpu_cpu_us: u64,
    /// Disk requests, network frames, vsock packets and agent requests.
    pub io_ops: u64,
}

/// Follows one VM's activity.
#[derive(Debug)]
pub(crate) struct IdleTracker {
    last: Option<(Instant, Activity)>,
    idle_since: Option<Instant>,
}

impl IdleTracker {
    pub fn new() -> Self {
        Self {
            last: None,
            idle_since: None,
        }
    }

    /// Starts over (after a pause, a resume or a new policy).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Feeds a sample taken at `now`; returns how long the VM has been
    /// idle if that reached the policy's timeout.
    pub fn sample(&mut self, policy: &IdlePolicy, now: Instant, a: Activity) -> Option<Duration> {
        let Some((then, before)) = self.last.replace((now, a)) else {
            self.idle_since = Some(now);
            return None;
        };
        let wall_us = now.saturating_duration_since(then).as_micros() as f64;
        let cpu_us = a.vcpu_cpu_us.saturating_sub(before.vcpu_cpu_us) as f64;
        let busy = a.io_ops != before.io_ops || (wall_us > 0.0 && cpu_us / wall_us > policy.cpu_threshold);
        if busy {
            self.idle_since = Some(now);
            return None;
        }
        let idle = now.saturating_duration_since(self.idle_since.unwrap_or(now));
        (idle >= policy.timeout).then_some(idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn idle_after_the_timeout_without_cpu_or_io() {
        let p = IdlePolicy::new(Duration::from_millis(400), IdleAction::Pause);
        let t0 = Instant::now();
        let mut t = IdleTracker::new();
        let a = Activity::default();
        assert_eq!(t.sample(&p, t0, a), None);
        assert_eq!(t.sample(&p, at(t0, 200), a), None);
        // 1% of a CPU is under the 2% threshold.
        let a2 = Activity {
            vcpu_cpu_us: 2_000,
            ..a
        };
        assert_eq!(t.sample(&p, at(t0, 400), a2), Some(Duration::from_millis(400)));
    }

    #[test]
    fn cpu_or_io_restarts_the_clock() {
        let p = IdlePolicy::new(Duration::from_millis(400), IdleAction::Pause);
        let t0 = Instant::now();
        let mut t = IdleTracker::new();
        t.sample(&p, t0, Activity::default());
        // 10% of a CPU: busy.
        let busy = Activity {
            vcpu_cpu_us: 20_000,
            io_ops: 0,
        };
        assert_eq!(t.sample(&p, at(t0, 200), busy), None);
        assert_eq!(t.sample(&p, at(t0, 400), busy), None);
        // One disk request: busy.
        let io = Activity { io_ops: 1, ..busy };
        assert_eq!(t.sample(&p, at(t0, 600), io), None);
        assert_eq!(t.sample(&p, at(t0, 800), io), None);
        assert_eq!(t.sample(&p, at(t0, 1000), io), Some(Duration::from_millis(400)));
        t.reset();
        assert_eq!(t.sample(&p, at(t0, 1200), io), None);
    }

    #[test]
    fn policy_json() {
        let p: IdlePolicy =
            serde_json::from_str(r#"{"timeout_ms": 1500, "action": {"snapshot": "/s"}}"#).unwrap();
        assert_eq!(p.timeout, Duration::from_millis(1500));
        assert_eq!(p.action, IdleAction::Snapshot("/s".into()));
        assert_eq!(p.cpu_threshold, DEFAULT_IDLE_CPU_THRESHOLD);
        assert_eq!(p.check_interval(), Duration::from_millis(375));
        let pause: IdlePolicy = serde_json::from_str(r#"{"timeout_ms": 10, "action": "pause"}"#).unwrap();
        assert_eq!(pause.action, IdleAction::Pause);
    }
}
