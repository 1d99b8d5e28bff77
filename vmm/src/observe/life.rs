//! The lifecycle thread of one VM (`hearth-life`): it delivers the VM's
//! events to the sink in order, reports the exit with the VM's totals,
//! and enforces the TTL and the idle timeout. It sleeps on a condition
//! variable until the next deadline or a change, so an idle VM costs it
//! nothing but the samples its idle policy asks for.
//!
//! It runs under the API thread's seccomp filter: it pauses, snapshots
//! and stops the VM, and calls the event sink (docs/OBSERVABILITY.md says
//! what a sink may do there).

use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::event::EventKind;
use super::idle::{IdleAction, IdlePolicy, IdleTracker};
use super::observer::LifeState;
use super::totals::Totals;
use crate::error::Error;
use crate::exit::ExitReason;
use crate::seccomp::{Filter, ThreadKind};
use crate::vm::VmCore;

/// Starts the thread for `core`.
pub(crate) fn spawn(core: Arc<VmCore>) -> Result<JoinHandle<()>, Error> {
    let filter = Filter::new(ThreadKind::Api, core.config.seccomp)?;
    std::thread::Builder::new()
        .name("hearth-life".into())
        .spawn(move || {
            let threads = core.run_state.obs.threads.clone();
            threads.register_current("life");
            match filter.install() {
                Ok(()) => run(&core),
                Err(e) => log::error!("VM {}: lifecycle thread not started: {e}", core.run_state.obs.id),
            }
            threads.finish();
        })
        .map_err(|source| Error::Thread {
            what: "lifecycle",
            source,
        })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The loop's memory between turns.
struct Turn {
    tracker: IdleTracker,
    epoch: Option<u64>,
    next_check: Option<Instant>,
    exit_reported: bool,
}

fn run(core: &VmCore) {
    let obs = &core.run_state.obs;
    let mut turn = Turn {
        tracker: IdleTracker::new(),
        epoch: None,
        next_check: None,
        exit_reported: false,
    };
    let mut life = obs.life();
    loop {
        if let Some(event) = life.queue.pop_front() {
            drop(life);
            if let Some(sink) = &obs.sink {
                sink.send(&event);
            }
            life = obs.life();
            continue;
        }
        if life.exited {
            if !turn.exit_reported {
                turn.exit_reported = true;
                drop(life);
                report_exit(core);
                life = obs.life();
                continue;
            }
            if !life.drained {
                life.drained = true;
                obs.wake.notify_all();
            }
            if life.shutdown {
                return;
            }
            life = obs.wake.wait(life).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        if life.shutdown {
            return;
        }
        let now = Instant::now();
        if life.ttl_deadline.is_some_and(|d| now >= d) {
            let ttl = life.ttl.unwrap_or_default();
            life.ttl_deadline = None;
            drop(life);
            obs.emit(EventKind::TtlExpired { ttl_ms: ms(ttl) });
            core.end(ExitReason::TtlExpired);
            life = obs.life();
            continue;
        }
        if turn.epoch != Some(life.idle_epoch) {
            turn.epoch = Some(life.idle_epoch);
            turn.tracker.reset();
            turn.next_check = life.idle.as_ref().map(|_| now);
        }
        // Not the runner's lock: a snapshot holds it and then takes ours.
        let paused = obs.is_paused();
        if let (Some(policy), Some(at), false) = (life.idle.clone(), turn.next_check, paused) {
            if now >= at {
                drop(life);
                turn.next_check = Some(now + policy.check_interval());
                if let Some(idle) = turn.tracker.sample(&policy, now, core.activity()) {
                    turn.next_check = None;
                    if !act_on_idle(core, &policy, idle) {
                        // Try again after another whole timeout.
                        turn.tracker.reset();
                        turn.next_check = Some(Instant::now());
                    }
                }
                life = obs.life();
                continue;
            }
        }
        let idle_at = if paused { None } else { turn.next_check };
        let ttl_at = life.ttl_deadline;
        life = wait_until(core, life, [ttl_at, idle_at]);
    }
}

/// Sleeps until the earliest of `deadlines` (or a wake-up).
fn wait_until<'a>(
    core: &'a VmCore,
    life: MutexGuard<'a, LifeState>,
    deadlines: [Option<Instant>; 2],
) -> MutexGuard<'a, LifeState> {
    let wake = &core.run_state.obs.wake;
    match deadlines.into_iter().flatten().min() {
        None => wake.wait(life).unwrap_or_else(|p| p.into_inner()),
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            wake.wait_timeout(life, left).unwrap_or_else(|p| p.into_inner()).0
        }
    }
}

/// Pauses, or snapshots and stops, an idle VM. False if that failed (the
/// VM then runs on).
fn act_on_idle(core: &VmCore, policy: &IdlePolicy, idle: Duration) -> bool {
    let obs = &core.run_state.obs;
    let idle_ms = ms(idle);
    match &policy.action {
        IdleAction::Pause => {
            obs.emit(EventKind::Idle {
                idle_ms,
                action: "pause".into(),
                snapshot: None,
                error: None,
            });
            match core.pause_by("idle") {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("VM {}: idle pause failed: {e}", obs.id);
                    false
                }
            }
        }
        IdleAction::Snapshot(dir) => {
            let was_paused = obs.is_paused();
            obs.emit(EventKind::Idle {
                idle_ms,
                action: "snapshot".into(),
                snapshot: Some(dir.clone()),
                error: None,
            });
            let result = core.pause_by("idle").and_then(|()| core.snapshot(dir));
            match result {
                Ok(_) => {
                    core.end(ExitReason::IdleSnapshot(dir.clone()));
                    true
                }
                Err(e) => {
                    log::warn!("VM {}: idle snapshot into {} failed: {e}", obs.id, dir.display());
                    // A second idle event says the action failed.
                    obs.emit(EventKind::Idle {
                        idle_ms,
                        action: "snapshot".into(),
                        snapshot: Some(dir.clone()),
                        error: Some(e.to_string()),
                    });
                    if !was_paused {
                        let _ = core.resume();
                    }
                    false
                }
            }
        }
    }
}

/// Queues the `exited` event with the VM's totals.
fn report_exit(core: &VmCore) {
    let reason = core
        .run_state
        .exit_reason()
        .map_or_else(|| "unknown".to_string(), |r| r.to_string());
    let totals = Totals::of(&core.metrics());
    core.run_state.obs.emit(EventKind::Exited { reason, totals });
}
