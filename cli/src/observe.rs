//! The launcher's observability flags: id, labels, TTL, idle timeout, and
//! the events and metrics files (docs/OBSERVABILITY.md).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hearth::seccomp::{Filter, ThreadKind};
use hearth::{EventSink, IdleAction, IdlePolicy, RestoreOptions, Vm, VmConfig};

/// Flags shared by `run` and `restore`.
#[derive(Debug, Args, Default)]
pub struct ObserveArgs {
    /// The VM's id on events and metrics (default: made up, or the
    /// snapshot's on restore).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// A label copied onto every event: KEY=VALUE. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Stop the VM this long after its start (exit status 3): e.g. 30s,
    /// 5m, 1h, 500ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// When the VM is idle this long, pause it (default) or snapshot it
    /// into DIR and stop (exit status 4): DURATION[,pause|snapshot=DIR].
    #[arg(long, value_name = "SPEC", value_parser = parse_idle)]
    pub idle_timeout: Option<IdlePolicy>,
    /// Append lifecycle events here, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Append the VM's metrics here, one JSON object per line, every
    /// --metrics-interval and once at exit.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// How often to write --metrics.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub metrics_interval: Duration,
}

/// `30s`, `5m`, `1h`, `500ms`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 30s, 5m, 1h, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m or h)")),
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("duration {s:?} must be more than 0"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    if k.is_empty() {
        return Err("label key is empty".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_idle(s: &str) -> Result<IdlePolicy, String> {
    let (d, action) = match s.split_once(',') {
        Some((d, a)) => (d, Some(a)),
        None => (s, None),
    };
    let action = match action {
        None | Some("pause") => IdleAction::Pause,
        Some(a) => match a.strip_prefix("snapshot=") {
            Some(dir) if !dir.is_empty() => IdleAction::Snapshot(dir.into()),
            _ => return Err(format!("bad idle action {a:?} (pause or snapshot=DIR)")),
        },
    };
    Ok(IdlePolicy::new(parse_duration(d)?, action))
}

fn open_append(path: &Path, what: &str) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the {what} file {}", path.display()))
}

impl ObserveArgs {
    /// Opens the events and metrics files. In a jail, call it in the jailed
    /// process before it enters its new root (inherited files are closed
    /// there).
    pub fn open_outputs(&self) -> anyhow::Result<Outputs> {
        Ok(Outputs {
            events: self
                .events
                .as_deref()
                .map(|p| Ok::<_, anyhow::Error>(EventSink::json_lines(open_append(p, "events")?)))
                .transpose()?,
            metrics: self
                .metrics
                .as_deref()
                .map(|p| open_append(p, "metrics"))
                .transpose()?
                .map(|file| (file, self.metrics_interval)),
        })
    }

    /// Puts the flags (but the output files) into `c`.
    pub fn apply(&self, c: &mut VmConfig) -> anyhow::Result<()> {
        if let Some(id) = &self.id {
            c.id = Some(id.clone());
        }
        c.labels.extend(self.labels.iter().cloned());
        if let Some(t) = self.ttl {
            c.ttl = Some(t);
        }
        if let Some(p) = &self.idle_timeout {
            c.idle = Some(p.clone());
        }
        Ok(())
    }

    /// Puts the flags (but the output files) into restore options.
    pub fn apply_restore(&self, mut o: RestoreOptions) -> RestoreOptions {
        if let Some(id) = &self.id {
            o = o.id(id);
        }
        for (k, v) in &self.labels {
            o = o.label(k, v);
        }
        if let Some(t) = self.ttl {
            o = o.ttl(t);
        }
        if let Some(p) = &self.idle_timeout {
            o = o.idle_timeout(p.clone());
        }
        o
    }
}

/// The opened output files.
pub struct Outputs {
    /// The events sink, for the config.
    pub events: Option<EventSink>,
    /// The metrics file and interval.
    pub metrics: Option<(File, Duration)>,
}

/// Writes `vm`'s metrics to `file` every `interval` on a thread of its own
/// (under the API seccomp filter); the caller writes the last line at
/// exit with [`write_metrics`].
pub fn start_metrics(
    vm: Arc<Vm>,
    file: File,
    interval: Duration,
) -> anyhow::Result<Arc<std::sync::Mutex<File>>> {
    let file = Arc::new(std::sync::Mutex::new(file));
    let out = file.clone();
    let filter = Filter::new(ThreadKind::Api, vm.config().seccomp)?;
    std::thread::Builder::new()
        .name("hearth-metrics".into())
        .spawn(move || {
            if let Err(e) = filter.install() {
                log::error!("metrics thread not started: {e}");
                return;
            }
            while vm.wait_timeout(interval).is_none() {
                write_metrics(&vm, &out);
            }
        })?;
    Ok(file)
}

/// Appends one metrics line.
pub fn write_metrics(vm: &Vm, file: &std::sync::Mutex<File>) {
    let mut line = serde_json::to_vec(&vm.metrics()).unwrap_or_default();
    line.push(b'\n');
    let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = f.write_all(&line) {
        log::warn!("cannot write metrics: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn idle_specs() {
        let p = parse_idle("10s").unwrap();
        assert_eq!(
            (p.timeout, p.action),
            (Duration::from_secs(10), IdleAction::Pause)
        );
        let p = parse_idle("1m,snapshot=/s").unwrap();
        assert_eq!(p.action, IdleAction::Snapshot("/s".into()));
        assert!(parse_idle("1m,snapshot=").is_err());
        assert!(parse_idle("1m,halt").is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("team=a=b"), Ok(("team".into(), "a=b".into())));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("x").is_err());
    }
}
