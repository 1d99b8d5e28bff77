//! What the VM's agent clients report to the VM: request counts by kind,
//! and an audit record for each process started (docs/OBSERVABILITY.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hearth_agent_protocol::Spawn;

use super::error::AgentError;
use super::process::ExitStatus;
use crate::exit::RunState;
use crate::observe::event::{now_ms, EventKind};
use crate::observe::AuditRecord;

/// The VM a client reports to.
#[derive(Clone, Debug)]
pub(crate) struct Reporter(Arc<RunState>);

impl Reporter {
    pub fn new(run_state: Arc<RunState>) -> Self {
        Self(run_state)
    }

    /// Counts one request of `kind`.
    pub fn count<T>(&self, kind: &str, result: &Result<T, AgentError>) {
        self.0.obs.agent.count(kind, result.is_err());
    }

    /// Starts the audit trail of a process about to be spawned (`None`
    /// when the VM's audit is off). `secret`: argument indices to redact.
    pub fn trail(&self, spec: &Spawn, secret: &[usize]) -> Option<Arc<Trail>> {
        let obs = &self.0.obs;
        if !obs.audit.enabled || obs.sink.is_none() {
            return None;
        }
        let env = spec
            .env
            .iter()
            .map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.split_once('=').map_or(kv.to_string(), |(k, _)| k.to_string())
            })
            .collect();
        Some(Arc::new(Trail {
            run_state: self.0.clone(),
            record: Mutex::new(AuditRecord {
                argv: obs.audit.redact_argv(&spec.argv, secret),
                env,
                uid: spec.user.map_or(0, |u| u.uid),
                cwd: spec.cwd.as_ref().map(|c| String::from_utf8_lossy(c).into_owned()),
                tty: spec.tty.is_some(),
                start_ms: now_ms(),
                ..AuditRecord::default()
            }),
            stdin: AtomicU64::new(0),
            stdout: AtomicU64::new(0),
            stderr: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }))
    }
}

/// One process's audit record in the making. Ends once, with its status or
/// why none is known; dropping it unended ends it with an error.
#[derive(Debug)]
pub(crate) struct Trail {
    run_state: Arc<RunState>,
    record: Mutex<AuditRecord>,
    pub stdin: AtomicU64,
    pub stdout: AtomicU64,
    pub stderr: AtomicU64,
    done: AtomicBool,
}

impl Trail {
    /// The process started with the agent's id `id`.
    pub fn started(&self, id: u64) {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).process = id;
    }

    /// Adds `n` to a byte counter.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Ends the record: the exit status, or why it is not known.
    pub fn end(&self, outcome: Result<ExitStatus, String>) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.end_ms = now_ms();
        r.stdin_bytes = self.stdin.load(Ordering::Relaxed);
        r.stdout_bytes = self.stdout.load(Ordering::Relaxed);
        r.stderr_bytes = self.stderr.load(Ordering::Relaxed);
        match outcome {
            Ok(s) => {
                r.exit_code = s.code;
                r.signal = s.signal;
                if s.timed_out {
                    r.error = Some("killed at its timeout".into());
                }
            }
            Err(e) => r.error = Some(e),
        }
        self.run_state.obs.emit(EventKind::Audit(r));
    }
}

impl Drop for Trail {
    fn drop(&mut self) {
        self.end(Err("the client went away before the process ended".into()));
    }
}
