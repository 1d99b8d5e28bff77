//! The owner's handle on a running backend: replace the policy (the
//! backend applies it on its own thread, at its next turn, closing flows
//! it no longer allows) and read counters. The backend itself lives in
//! the device, on the event loop; the handle only shares this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::policy::{NetPolicy, PolicyError};

/// Counters of a backend.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) flows_opened: AtomicU64,
    pub(super) flows_refused: AtomicU64,
    pub(super) flows_closed_by_policy: AtomicU64,
    pub(super) dns_answered: AtomicU64,
    pub(super) dns_refused: AtomicU64,
    pub(super) records_suppressed: AtomicU64,
    pub(super) frames_dropped: AtomicU64,
    pub(super) open_tcp: AtomicU64,
    pub(super) open_udp: AtomicU64,
}

impl Counters {
    pub(super) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of a backend's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UserNetCounters {
    /// Flows allowed and opened.
    pub flows_opened: u64,
    /// Flows refused (policy, limits, host errors).
    pub flows_refused: u64,
    /// Open flows closed because a new policy no longer allowed them.
    pub flows_closed_by_policy: u64,
    /// DNS questions answered with addresses or no data.
    pub dns_answered: u64,
    /// DNS questions answered NXDOMAIN (or SERVFAIL).
    pub dns_refused: u64,
    /// Refusal records not delivered (past the per-second bound).
    pub records_suppressed: u64,
    /// Guest frames dropped (malformed, unsupported, over a limit).
    pub frames_dropped: u64,
    /// TCP flows open now.
    pub open_tcp: u64,
    /// UDP flows open now.
    pub open_udp: u64,
}

#[derive(Debug)]
struct State {
    policy: NetPolicy,
    pending: bool,
}

/// What the backend and its handles share.
#[derive(Debug)]
pub(super) struct Shared {
    state: Mutex<State>,
    waker: EventFd,
    pub(super) counters: Counters,
}

impl Shared {
    pub(super) fn new(policy: NetPolicy, waker: EventFd) -> Self {
        Self {
            state: Mutex::new(State {
                policy,
                pending: false,
            }),
            waker,
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy set since the backend last looked, if any.
    pub(super) fn take_pending(&self) -> Option<NetPolicy> {
        let mut s = self.lock();
        if !s.pending {
            return None;
        }
        s.pending = false;
        Some(s.policy.clone())
    }

    pub(super) fn set(&self, policy: NetPolicy) {
        let mut s = self.lock();
        s.policy = policy;
        s.pending = true;
        drop(s);
        let _ = self.waker.write(1);
    }
}

/// A handle on a [`UserNet`](super::UserNet): cheap to clone, usable
/// from any thread.
#[derive(Clone, Debug)]
pub struct UserNetHandle(pub(super) Arc<Shared>);

impl UserNetHandle {
    /// Replaces the policy. The backend applies it at its next turn
    /// (it is woken now): flows the new policy does not allow are
    /// closed, with a record each.
    pub fn set_policy(&self, policy: NetPolicy) -> Result<(), PolicyError> {
        policy.validate()?;
        self.0.set(policy);
        Ok(())
    }

    /// The policy in force (or about to be).
    pub fn policy(&self) -> NetPolicy {
        self.0.lock().policy.clone()
    }

    /// The counters now.
    pub fn counters(&self) -> UserNetCounters {
        let c = &self.0.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UserNetCounters {
            flows_opened: g(&c.flows_opened),
            flows_refused: g(&c.flows_refused),
            flows_closed_by_policy: g(&c.flows_closed_by_policy),
            dns_answered: g(&c.dns_answered),
            dns_refused: g(&c.dns_refused),
            records_suppressed: g(&c.records_suppressed),
            frames_dropped: g(&c.frames_dropped),
            open_tcp: g(&c.open_tcp),
            open_udp: g(&c.open_udp),
        }
    }
}
