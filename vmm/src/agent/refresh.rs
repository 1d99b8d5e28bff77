//! After a restore or fork: tell the guest agent at once (REFRESH), so it
//! reseeds the guest's RNG and sets its clock without waiting for a
//! request (docs/AGENT.md, "Clones are new machines"). Runs on a thread of
//! its own so that `restore()` stays fast; the `Vm` joins it on drop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_agent_protocol::Refreshed;

use super::{AgentClient, AgentError};
use crate::vsock::VsockConnectError;

/// How long the hook keeps trying to reach the agent.
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between attempts while the guest's vsock is not back yet.
const RETRY: Duration = Duration::from_millis(20);

/// What the hook achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The agent answered `after` the restore began.
    Refreshed {
        /// Time from the start of the restore to the agent's answer.
        after: Duration,
        /// Its answer.
        answer: Refreshed,
    },
    /// No agent answered (a guest without one, or it gave up).
    Failed(String),
}

#[derive(Debug, Default)]
struct Shared {
    outcome: Mutex<Option<RefreshOutcome>>,
    done: Condvar,
    stop: AtomicBool,
}

/// The running hook.
#[derive(Debug)]
pub(crate) struct RefreshHook {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RefreshHook {
    /// Starts refreshing the agent on `port` behind `uds_path`; `since`
    /// is when the restore began.
    pub fn start(uds_path: PathBuf, port: u32, since: Instant) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-refresh".into())
            .spawn(move || run(&s, AgentClient::vsock(uds_path, port), since))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Waits up to `timeout` for the outcome.
    pub fn wait(&self, timeout: Duration) -> Option<RefreshOutcome> {
        let deadline = Instant::now() + timeout;
        let mut o = self.shared.outcome.lock().unwrap_or_else(|p| p.into_inner());
        while o.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            o = self
                .shared
                .done
                .wait_timeout(o, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        o.clone()
    }
}

fn run(shared: &Shared, client: AgentClient, since: Instant) {
    let client = client.timeout(Some(Duration::from_secs(5)));
    let outcome = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break RefreshOutcome::Failed("the VM stopped".into());
        }
        match client.refresh() {
            Ok(answer) => {
                break RefreshOutcome::Refreshed {
                    after: since.elapsed(),
                    answer,
                }
            }
            // Not listening yet (the guest is still handling the vsock
            // transport reset), or the connection was reset: try again.
            Err(AgentError::Connect(
                VsockConnectError::Refused(_)
                | VsockConnectError::Timeout(_)
                | VsockConnectError::BadReply(_),
            ))
            | Err(AgentError::Disconnected)
                if since.elapsed() < REFRESH_DEADLINE =>
            {
                std::thread::sleep(RETRY);
            }
            Err(e) => break RefreshOutcome::Failed(e.to_string()),
        }
    };
    match &outcome {
        RefreshOutcome::Refreshed { after, answer } => log::debug!(
            "agent refreshed {} ms after the restore began (restored: {})",
            after.as_millis(),
            answer.restored
        ),
        RefreshOutcome::Failed(why) => log::debug!("agent refresh after restore: {why}"),
    }
    *shared.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    shared.done.notify_all();
}

impl Drop for RefreshHook {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
