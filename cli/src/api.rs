//! The launcher's control socket: one JSON object per line in, one per
//! line out (docs in README, "Control socket").
//!
//! ```text
//! {"cmd":"status"}                 {"ok":true,"state":"running"}
//! {"cmd":"pause"}                  {"ok":true}
//! {"cmd":"pause","sync":true}      {"ok":true,"synced":true}   (the guest agent syncs its
//!                                  file systems first, so a snapshot's disk and memory agree)
//! {"cmd":"snapshot","dir":"/s"}    {"ok":true,"state_bytes":..,"memory_written":..,"ms":..}
//!                                  (`"full":true` writes every page even when a diff is possible)
//! {"cmd":"fork","dir":"/s"}        {"ok":true,...}: a snapshot of the running VM for `hearth
//!                                  restore` elsewhere (pause, snapshot, resume; `"sync":true`
//!                                  asks the guest agent to sync its file systems first)
//! {"cmd":"resume"}                 {"ok":true}
//! {"cmd":"disk_rate_limit","index":0,"limit":{"bandwidth":{"size":1048576,"refill_time_ms":1000}}}
//!                                  {"ok":true}
//! {"cmd":"net_rate_limit","index":0,"rx":{..},"tx":{..}}
//!                                  {"ok":true}
//! {"cmd":"set_net_policy","index":0,"policy":{"allow":["127.0.0.1:8080"]}}
//!                                  {"ok":true}   (user-mode interface `index`; flows the
//!                                  new policy does not allow are closed; docs/NETWORK.md)
//! {"cmd":"net_policy","index":0}   {"ok":true,"policy":{..},"counters":{..}}
//! {"cmd":"metrics"}                {"ok":true,"metrics":{..}}   (docs/OBSERVABILITY.md)
//! {"cmd":"set_ttl","ttl_ms":5000}  {"ok":true}   (from now; `"ttl_ms":null` clears it)
//! {"cmd":"stop"}                   {"ok":true}
//! anything else                    {"ok":false,"error":"..."}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth::seccomp::{Filter, ThreadKind};
use hearth::{clear_stale_socket, RateLimit, SnapshotInfo, SnapshotOptions, Vm};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Status,
    Pause {
        /// Ask the guest agent to sync its file systems first.
        #[serde(default)]
        sync: bool,
    },
    Resume,
    Snapshot {
        dir: PathBuf,
        #[serde(default)]
        full: bool,
    },
    /// Snapshot a running VM without stopping it for long.
    Fork {
        dir: PathBuf,
        #[serde(default)]
        full: bool,
        /// Ask the guest agent to sync its file systems first.
        #[serde(default)]
        sync: bool,
    },
    /// A missing `limit` lifts the disk's limits.
    DiskRateLimit {
        index: usize,
        #[serde(default)]
        limit: RateLimit,
    },
    /// A missing direction is unlimited.
    NetRateLimit {
        index: usize,
        #[serde(default)]
        rx: RateLimit,
        #[serde(default)]
        tx: RateLimit,
    },
    /// Replace a user-mode interface's egress policy.
    SetNetPolicy {
        #[serde(default)]
        index: usize,
        policy: hearth::NetPolicy,
    },
    /// A user-mode interface's policy and counters.
    NetPolicy {
        #[serde(default)]
        index: usize,
    },
    Metrics,
    /// A new TTL from now; null clears it.
    SetTtl {
        ttl_ms: Option<u64>,
    },
    Stop,
}

/// How long the guest agent may take to sync before a pause goes ahead.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes one reply line with a single write.
fn send(out: &mut impl Write, value: &Value) -> std::io::Result<()> {
    out.write_all(format!("{value}\n").as_bytes())
}

/// Answers one command. `stop` is answered before it is carried out: the
/// process exits as soon as the VM stops.
fn handle(vm: &Vm, line: &str, out: &mut impl Write) -> std::io::Result<()> {
    let cmd: Command = match serde_json::from_str(line) {
        Ok(c) => c,
        Err(e) => return send(out, &json!({"ok": false, "error": format!("bad command: {e}")})),
    };
    if matches!(cmd, Command::Stop) {
        send(out, &json!({"ok": true}))?;
        out.flush()?;
        vm.stop();
        return Ok(());
    }
    send(out, &reply(vm, cmd))
}

fn reply(vm: &Vm, cmd: Command) -> Value {
    let result = match cmd {
        Command::Status => {
            let state = match vm.exit_reason() {
                Some(r) => format!("exited: {r}"),
                None if vm.is_paused() => "paused".into(),
                None => "running".into(),
            };
            return json!({"ok": true, "state": state});
        }
        Command::Pause { sync: false } => vm.pause().map(|()| json!({"ok": true})),
        Command::Pause { sync: true } => {
            // A guest without the agent still pauses; the reply says so.
            let synced = vm
                .agent()
                .and_then(|a| a.timeout(Some(SYNC_TIMEOUT)).sync())
                .map_err(|e| e.to_string());
            vm.pause().map(|()| match synced {
                Ok(()) => json!({"ok": true, "synced": true}),
                Err(e) => json!({"ok": true, "synced": false, "sync_error": e}),
            })
        }
        Command::Resume => vm.resume().map(|()| json!({"ok": true})),
        Command::Snapshot { dir, full } => vm
            .snapshot_with(&dir, &SnapshotOptions::new().full(full))
            .map(|i| snapshot_reply(&i)),
        Command::Fork { dir, full, sync } => fork(vm, &dir, full, sync),
        Command::DiskRateLimit { index, limit } => {
            vm.set_disk_rate_limit(index, limit).map(|()| json!({"ok": true}))
        }
        Command::NetRateLimit { index, rx, tx } => vm
            .set_net_rate_limits(index, rx, tx)
            .map(|()| json!({"ok": true})),
        Command::SetNetPolicy { index, policy } => {
            vm.set_net_policy(index, policy).map(|()| json!({"ok": true}))
        }
        Command::NetPolicy { index } => vm.net_policy(index).and_then(|p| {
            let c = vm.user_net_counters(index)?;
            Ok(json!({"ok": true, "policy": p, "counters": c}))
        }),
        Command::Metrics => Ok(json!({"ok": true, "metrics": vm.metrics()})),
        Command::SetTtl { ttl_ms: Some(0) } => {
            Ok(json!({"ok": false, "error": "ttl_ms must be more than 0"}))
        }
        Command::SetTtl { ttl_ms } => {
            vm.set_ttl(ttl_ms.map(std::time::Duration::from_millis));
            Ok(json!({"ok": true}))
        }
        Command::Stop => Ok(json!({"ok": true})),
    };
    result.unwrap_or_else(|e| json!({"ok": false, "error": e.to_string()}))
}

fn snapshot_reply(i: &SnapshotInfo) -> Value {
    json!({
        "ok": true,
        "state_bytes": i.state_bytes,
        "memory_bytes": i.memory_bytes,
        "memory_written": i.memory_written,
        "parent": i.parent,
        "ms": i.duration.as_secs_f64() * 1e3,
    })
}

/// A snapshot of a running VM: the agent syncs (if there is one), the VM
/// pauses for the snapshot only, then runs on (unless it was paused).
fn fork(vm: &Vm, dir: &Path, full: bool, sync: bool) -> Result<Value, hearth::Error> {
    let was_paused = vm.is_paused();
    if !was_paused {
        if sync {
            if let Err(e) = vm.agent().and_then(|a| a.timeout(Some(SYNC_TIMEOUT)).sync()) {
                log::debug!("fork: no agent sync ({e})");
            }
        }
        vm.pause()?;
    }
    let result = vm.snapshot_with(dir, &SnapshotOptions::new().full(full));
    if !was_paused {
        vm.resume()?;
    }
    result.map(|i| snapshot_reply(&i))
}

fn serve_client(vm: &Vm, stream: UnixStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        handle(vm, &line, &mut out)?;
    }
    Ok(())
}

/// Binds `path`, replacing a stale socket.
pub fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    clear_stale_socket(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on API socket {}: {e}", path.display()))?;
    UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on API socket {}: {e}", path.display()))
}

/// Serves clients of `listener` one at a time on a thread of its own until
/// the process exits.
/// The thread runs under the VM's seccomp mode (the API allow-list).
pub fn serve(vm: Arc<Vm>, listener: UnixListener) -> anyhow::Result<()> {
    let filter = Filter::new(ThreadKind::Api, vm.config().seccomp)?;
    let (installed_tx, installed) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("hearth-api".into())
        .spawn(move || {
            let result = filter.install();
            let ok = result.is_ok();
            let _ = installed_tx.send(result);
            if !ok {
                return;
            }
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve_client(&vm, stream) {
                    log::debug!("API client: {e}");
                }
            }
        })?;
    installed.recv()??;
    Ok(())
}
