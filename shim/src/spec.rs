//! The parts of an OCI runtime spec (the bundle's `config.json`, or an
//! exec's process) the shim uses, and the agent command they become.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// Where the task's root disk is mounted in the agent VM (a directory of
/// the read-only agent root that exists for this), and so the root every
/// container process is chrooted into.
pub const GUEST_ROOT: &str = "/mnt";

/// A bundle's spec, as far as the shim reads it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Spec {
    /// The container's process.
    pub process: Option<ProcessSpec>,
    /// Its root directory (used when containerd gives no rootfs mounts).
    pub root: Option<Root>,
    /// Annotations (vCPU and memory overrides).
    pub annotations: HashMap<String, String>,
}

/// `root` of a spec.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Root {
    /// Absolute, or relative to the bundle.
    pub path: String,
    /// Mount it read-only.
    pub readonly: bool,
}

/// A process of a spec.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Run on a terminal.
    pub terminal: bool,
    /// Who.
    pub user: UserSpec,
    /// Program and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Resource limits.
    pub rlimits: Vec<RlimitSpec>,
    /// The terminal's first size.
    pub console_size: Option<ConsoleSize>,
}

/// `process.user`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct UserSpec {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One `process.rlimits` entry.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RlimitSpec {
    /// `RLIMIT_NOFILE`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Hard limit.
    pub hard: u64,
    /// Soft limit.
    pub soft: u64,
}

/// `process.consoleSize`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConsoleSize {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

impl Spec {
    /// Parses a bundle's `config.json`.
    pub fn parse(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json).context("parsing the OCI spec")
    }
}

/// Linux's number for an OCI rlimit name.
pub fn rlimit_resource(name: &str) -> Option<u32> {
    const NAMES: [&str; 16] = [
        "CPU",
        "FSIZE",
        "DATA",
        "STACK",
        "CORE",
        "RSS",
        "NPROC",
        "NOFILE",
        "MEMLOCK",
        "AS",
        "LOCKS",
        "SIGPENDING",
        "MSGQUEUE",
        "NICE",
        "RTPRIO",
        "RTTIME",
    ];
    let short = name.strip_prefix("RLIMIT_")?;
    NAMES
        .iter()
        .position(|n| *n == short)
        .and_then(|i| u32::try_from(i).ok())
}

impl ProcessSpec {
    /// Parses an exec's process (JSON in the request's `spec`).
    pub fn parse(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json).context("parsing the exec's process spec")
    }

    /// The agent command running this process in the container: chrooted
    /// into [`GUEST_ROOT`], detached (it outlives a connection, so a
    /// checkpoint's restore can attach to it again).
    pub fn command(&self, stdin: bool) -> Result<hearth::Command> {
        if self.args.is_empty() {
            bail!("the process has no args");
        }
        let mut c = hearth::Command::new(self.args.iter())
            .root(GUEST_ROOT)
            .detach(true)
            .stdin(stdin);
        if !self.cwd.is_empty() {
            c = c.cwd(&self.cwd);
        }
        let mut env = self.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        for kv in &env {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            c = c.env(k, v);
        }
        if self.user.uid != 0 || self.user.gid != 0 {
            c = c.user(self.user.uid, self.user.gid);
        }
        if self.terminal {
            let size = self.console_size.unwrap_or(ConsoleSize {
                height: 24,
                width: 80,
            });
            let clamp = |n: u32, default: u16| match u16::try_from(n) {
                Ok(0) | Err(_) => default,
                Ok(n) => n,
            };
            c = c.tty(clamp(size.height, 24), clamp(size.width, 80));
        }
        for r in &self.rlimits {
            let resource =
                rlimit_resource(&r.kind).with_context(|| format!("unknown rlimit {:?}", r.kind))?;
            c = c.rlimit(resource, r.soft, r.hard);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTR_SPEC: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/busybox", "echo", "hi"],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "/tmp/rootfs", "readonly": false},
        "annotations": {"io.hearth.vcpus": "1"},
        "linux": {"namespaces": [{"type": "pid"}]}
    }"#;

    #[test]
    fn a_ctr_spec_parses() {
        let s = Spec::parse(CTR_SPEC.as_bytes()).unwrap();
        let p = s.process.unwrap();
        assert_eq!(p.args, ["/bin/busybox", "echo", "hi"]);
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(s.root.unwrap().path, "/tmp/rootfs");
        assert_eq!(
            s.annotations.get("io.hearth.vcpus").map(String::as_str),
            Some("1")
        );
        assert!(Spec::parse(br#"{"process": 5}"#).is_err());
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Some(7));
        assert_eq!(rlimit_resource("RLIMIT_CPU"), Some(0));
        assert_eq!(rlimit_resource("RLIMIT_RTTIME"), Some(15));
        assert_eq!(rlimit_resource("NOFILE"), None);
        assert_eq!(rlimit_resource("RLIMIT_BOGUS"), None);
    }

    #[test]
    fn commands_need_args_and_known_rlimits() {
        let mut p = ProcessSpec::default();
        assert!(p.command(false).is_err());
        p.args = vec!["sh".into()];
        assert!(p.command(true).is_ok());
        p.rlimits.push(RlimitSpec {
            kind: "RLIMIT_BOGUS".into(),
            ..RlimitSpec::default()
        });
        assert!(p.command(false).is_err());
    }
}
