//! Agent mode of PID 1: fork the agent, reap every child (orphans are
//! reparented to PID 1), and start a new agent when it dies, with a short
//! back-off and at most [`MAX_RESTARTS`] restarts per [`WINDOW`]; past
//! that the machine is restarted.
//!
//! Console lines: `AGENT-EXITED status=<code, or minus the signal>
//! pid=<pid>` and `AGENT-GAVE-UP restarts=<n> window=<s>s`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::power;
use hearth_init::{agent, console};

/// Restarts allowed within [`WINDOW`].
pub const MAX_RESTARTS: usize = 10;
/// The window [`MAX_RESTARTS`] applies to.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Pause before starting a new agent.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// Runs the agent on `port` forever (PID 1 only).
pub fn run(port: u32) -> ! {
    let mut budget = RestartBudget::new(MAX_RESTARTS, WINDOW);
    let mut agent = start_agent(port);
    loop {
        if agent.is_none() {
            if !budget.allow(Instant::now()) {
                console::line(&format!(
                    "AGENT-GAVE-UP restarts={MAX_RESTARTS} window={}s",
                    WINDOW.as_secs()
                ));
                power::restart();
            }
            std::thread::sleep(BACKOFF);
            agent = start_agent(port);
        }
        match wait_any() {
            Ok((pid, status)) if Some(pid) == agent => {
                console::line(&format!(
                    "AGENT-EXITED status={} pid={pid}",
                    agent::exit_status(status)
                ));
                agent = None;
            }
            // An orphan, reaped.
            Ok(_) => {}
            // ECHILD: no children at all (the agent could not be forked);
            // the budget above bounds the retries.
            Err(libc::ECHILD) => agent = None,
            Err(_) => {}
        }
    }
}

/// Forks the agent: its pid, or `None` if fork failed.
fn start_agent(port: u32) -> Option<libc::pid_t> {
    // SAFETY: fork(2) has no memory effects on this process; init is
    // single-threaded, so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        0 => {
            let Err(e) = agent::serve(agent::Options::guest(port));
            console::line(&format!("hearth-init: agent: {e}"));
            // SAFETY: _exit(2) ends the agent process only.
            unsafe { libc::_exit(1) }
        }
        pid if pid > 0 => Some(pid),
        _ => {
            console::line(&format!(
                "hearth-init: fork of the agent: {}",
                std::io::Error::last_os_error()
            ));
            None
        }
    }
}

/// waitpid(-1): the pid and raw status of any child that ended, or errno.
fn wait_any() -> Result<(libc::pid_t, libc::c_int), i32> {
    let mut status = 0;
    // SAFETY: `status` is a valid int for waitpid(2) to fill.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    if pid > 0 {
        Ok((pid, status))
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// At most `max` restarts in any `window`.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// A budget of `max` restarts per `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            recent: VecDeque::with_capacity(max),
        }
    }

    /// Whether a restart at `now` is allowed; an allowed one is counted.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_max_per_window() {
        let t0 = Instant::now();
        let mut budget = RestartBudget::new(3, Duration::from_secs(60));
        assert!(budget.allow(t0));
        assert!(budget.allow(t0 + Duration::from_secs(1)));
        assert!(budget.allow(t0 + Duration::from_secs(2)));
        assert!(!budget.allow(t0 + Duration::from_secs(3)));
        // Refusals are not counted: the window slides off the first one.
        assert!(!budget.allow(t0 + Duration::from_secs(59)));
        assert!(budget.allow(t0 + Duration::from_secs(60)));
        assert!(!budget.allow(t0 + Duration::from_secs(60)));
        assert!(budget.allow(t0 + Duration::from_secs(62)));
    }

    #[test]
    fn spread_out_restarts_are_always_allowed() {
        let t0 = Instant::now();
        let mut budget = RestartBudget::new(MAX_RESTARTS, WINDOW);
        for i in 0..100 {
            assert!(budget.allow(t0 + Duration::from_secs(7 * i)));
        }
    }
}
