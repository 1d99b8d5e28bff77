//! What the guest agent was asked to do: request counters by kind, and an
//! audit record for every process it ran (docs/OBSERVABILITY.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The agent requests counted, by name.
pub(crate) const REQUEST_KINDS: &[&str] = &[
    "spawn", "exec", "attach", "list", "signal", "wait", "upload", "download", "stat", "list_dir", "mkdir",
    "remove", "rename", "chmod", "sync", "refresh", "mount",
];

/// Live counters of agent requests made through the VM's clients.
#[derive(Debug)]
pub(crate) struct AgentCounters {
    requests: Vec<AtomicU64>,
    failures: Vec<AtomicU64>,
}

impl Default for AgentCounters {
    fn default() -> Self {
        let zeros = || REQUEST_KINDS.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            requests: zeros(),
            failures: zeros(),
        }
    }
}

impl AgentCounters {
    fn index(kind: &str) -> Option<usize> {
        REQUEST_KINDS.iter().position(|k| *k == kind)
    }

    /// Counts one request of `kind`, failed or not.
    pub fn count(&self, kind: &str, failed: bool) {
        let Some(i) = Self::index(kind) else { return };
        if let Some(c) = self.requests.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if failed {
            if let Some(c) = self.failures.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters now; kinds never requested are left out.
    pub fn read(&self) -> AgentRequests {
        let mut out = AgentRequests::default();
        for (i, kind) in REQUEST_KINDS.iter().enumerate() {
            let n = self.requests.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            let f = self.failures.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            if n > 0 {
                out.requests.insert((*kind).to_string(), n);
            }
            if f > 0 {
                out.failures.insert((*kind).to_string(), f);
            }
        }
        out
    }
}

/// Agent requests made through [`Vm::agent`](crate::Vm::agent) clients,
/// by kind (`spawn`, `exec`, `upload`…).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentRequests {
    /// Requests made.
    pub requests: BTreeMap<String, u64>,
    /// Requests that failed (an error from the agent or the connection).
    pub failures: BTreeMap<String, u64>,
}

/// One process the agent ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// The agent's id for the process (0 if it never started).
    pub process: u64,
    /// Its arguments, with secrets redacted ([`AuditConfig`]).
    pub argv: Vec<String>,
    /// The names (never the values) of the environment variables set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The uid it ran as (the agent's own, root, when not set).
    pub uid: u32,
    /// Its working directory (none: the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Whether it had a terminal.
    pub tty: bool,
    /// When it was asked for, ms since the Unix epoch.
    pub start_ms: u64,
    /// When its end was seen, ms since the Unix epoch.
    pub end_ms: u64,
    /// Its exit code, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why no status is known (the start failed, the connection was lost,
    /// the handle was dropped before the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes sent to its stdin.
    pub stdin_bytes: u64,
    /// Bytes read from its stdout.
    pub stdout_bytes: u64,
    /// Bytes read from its stderr.
    pub stderr_bytes: u64,
}

/// What audit records keep. Audit is on by default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuditConfig {
    /// Whether processes are audited at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// An argument containing any of these strings is recorded as
    /// `[redacted]` (e.g. `"--password"`, `"TOKEN="`). Arguments that a
    /// [`Command`](crate::Command) marks secret are always redacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            redact: Vec::new(),
        }
    }
}

/// What a redacted argument is recorded as.
pub const REDACTED: &str = "[redacted]";

impl AuditConfig {
    /// `argv` as recorded: lossy UTF-8, with the arguments at `secret`
    /// indices and those matching a [`redact`](Self::redact) pattern
    /// replaced. A `--flag=value` argument keeps its flag.
    pub fn redact_argv(&self, argv: &[impl AsRef<[u8]>], secret: &[usize]) -> Vec<String> {
        argv.iter()
            .enumerate()
            .map(|(i, a)| {
                let a = String::from_utf8_lossy(a.as_ref()).into_owned();
                let matched = self
                    .redact
                    .iter()
                    .any(|p| !p.is_empty() && a.contains(p.as_str()));
                if !secret.contains(&i) && !matched {
                    return a;
                }
                match a.split_once('=') {
                    Some((flag, _)) if flag.starts_with('-') && !secret.contains(&i) => {
                        format!("{flag}={REDACTED}")
                    }
                    _ => REDACTED.to_string(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_kind_leave_out_unused_kinds() {
        let c = AgentCounters::default();
        c.count("exec", false);
        c.count("exec", true);
        c.count("upload", false);
        c.count("nonsense", true);
        let r = c.read();
        assert_eq!(
            r.requests,
            [("exec".to_string(), 2), ("upload".to_string(), 1)].into()
        );
        assert_eq!(r.failures, [("exec".to_string(), 1)].into());
    }

    #[test]
    fn redaction_by_pattern_and_by_index() {
        let cfg = AuditConfig {
            enabled: true,
            redact: vec!["--password".into(), "TOKEN=".into()],
        };
        let argv = ["curl", "--password=hunter2", "API_TOKEN=abc", "-u", "secret-user"];
        assert_eq!(
            cfg.redact_argv(&argv, &[4]),
            ["curl", "--password=[redacted]", "[redacted]", "-u", "[redacted]"]
        );
        assert_eq!(AuditConfig::default().redact_argv(&argv, &[]), argv);
    }
}
