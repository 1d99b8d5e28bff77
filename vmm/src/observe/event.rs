//! Lifecycle events: what happened to a VM, when, with the caller's
//! labels, delivered to an [`EventSink`] (docs/OBSERVABILITY.md).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use hearth_devices::virtio::net::user::FlowRecord;

use super::audit::AuditRecord;
use super::totals::Totals;

/// The caller's key/value pairs (tenant, team, trace id…), copied onto
/// every event of the VM.
pub type Labels = BTreeMap<String, String>;

/// One event in a VM's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VmEvent {
    /// When, in milliseconds since the Unix epoch (wall clock).
    pub time_ms: u64,
    /// The VM's id ([`VmConfig::id`](crate::VmConfig), or one Hearth made).
    pub vm: String,
    /// The VM's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized with an `"event"` tag (`"paused"`, …) next to
/// its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The VM was created and its vCPUs started (boot or restore follows).
    Created {
        /// vCPUs.
        vcpus: u32,
        /// Guest memory, MiB.
        memory_mib: u64,
    },
    /// The guest wrote its boot-ready marker.
    Booted {
        /// From the start of `Vm::start` to the marker, microseconds.
        boot_us: u64,
    },
    /// [`Vm::pause`](crate::Vm::pause) stopped the VM.
    Paused {
        /// Why: `"api"`, or `"idle"` for an idle timeout.
        by: String,
    },
    /// [`Vm::resume`](crate::Vm::resume) let it run again.
    Resumed {
        /// How long it was paused, milliseconds.
        paused_ms: u64,
    },
    /// A snapshot was written.
    Snapshotted {
        /// Where.
        dir: PathBuf,
        /// Bytes of the state file.
        state_bytes: u64,
        /// Bytes of guest memory written (a diff writes fewer).
        memory_written: u64,
        /// The diff's parent snapshot, for a diff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<PathBuf>,
        /// How long it took, milliseconds (fractional).
        ms: f64,
    },
    /// The VM was restored from a snapshot.
    Restored {
        /// The snapshot's directory (none for an in-memory capture).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<PathBuf>,
        /// The id of the VM the snapshot was taken of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_vm: Option<String>,
        /// From the start of the restore to running vCPUs, milliseconds.
        ms: f64,
    },
    /// The VM was started as a fork of a running VM.
    Forked {
        /// The parent's id.
        parent: String,
        /// Which child of that fork (0-based).
        child: usize,
    },
    /// The VM's time to live ran out; it stops.
    TtlExpired {
        /// The TTL it had, milliseconds.
        ttl_ms: u64,
    },
    /// The VM was idle for its idle timeout; the action follows.
    Idle {
        /// How long it had been idle, milliseconds.
        idle_ms: u64,
        /// `"pause"` or `"snapshot"`.
        action: String,
        /// The snapshot's directory, for `"snapshot"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<PathBuf>,
        /// Why the action failed, if it did (the VM then keeps running).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A process the agent ran ended (or could not be followed to its end).
    Audit(AuditRecord),
    /// A user-mode network interface opened, refused or closed a flow
    /// (docs/NETWORK.md).
    Flow {
        /// The interface's device id (`net0`…).
        device: String,
        /// The decision and, when it closed, its totals.
        flow: FlowRecord,
    },
    /// The VM ended.
    Exited {
        /// The exit reason, as text.
        reason: String,
        /// What it used over its life.
        totals: Totals,
    },
}

type SinkFn = dyn Fn(&VmEvent) + Send + Sync;

/// Where a VM's events go: a callback, called on the thread where the
/// event happened (a vCPU, the event loop, the caller of `pause`…). It
/// must return quickly; [`EventSink::channel`] hands events to another
/// thread through a bounded queue.
#[derive(Clone)]
pub struct EventSink {
    f: Arc<SinkFn>,
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}

impl PartialEq for EventSink {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.f, &other.f)
    }
}

/// Events a full [`EventSink::channel`] queue dropped, over the process.
static CHANNEL_DROPS: AtomicU64 = AtomicU64::new(0);

impl EventSink {
    /// Calls `f` with every event.
    pub fn new(f: impl Fn(&VmEvent) + Send + Sync + 'static) -> Self {
        Self { f: Arc::new(f) }
    }

    /// A bounded queue of `capacity` events. When the receiver falls that
    /// far behind, new events are dropped (and counted in
    /// [`EventSink::dropped`]) rather than blocking the VM.
    pub fn channel(capacity: usize) -> (Self, Receiver<VmEvent>) {
        let (tx, rx) = sync_channel(capacity);
        let sink = Self::new(move |e| {
            if let Err(TrySendError::Full(_)) = tx.try_send(e.clone()) {
                CHANNEL_DROPS.fetch_add(1, Ordering::Relaxed);
            }
        });
        (sink, rx)
    }

    /// Events dropped by full channel sinks in this process.
    pub fn dropped() -> u64 {
        CHANNEL_DROPS.load(Ordering::Relaxed)
    }

    /// One JSON object per line, flushed after each event. A write error
    /// is logged once and the events after it are lost.
    pub fn json_lines(writer: impl Write + Send + 'static) -> Self {
        let w = Mutex::new((writer, false));
        Self::new(move |e| {
            let mut guard = w.lock().unwrap_or_else(|p| p.into_inner());
            let (writer, failed) = &mut *guard;
            if *failed {
                return;
            }
            let mut line = serde_json::to_vec(e).unwrap_or_default();
            line.push(b'\n');
            if let Err(err) = writer.write_all(&line).and_then(|()| writer.flush()) {
                log::error!("cannot write VM events: {err}; later events are lost");
                *failed = true;
            }
        })
    }

    /// Delivers one event.
    pub fn send(&self, event: &VmEvent) {
        (self.f)(event)
    }
}

/// Milliseconds since the Unix epoch now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> VmEvent {
        VmEvent {
            time_ms: 1,
            vm: "a1".into(),
            labels: [("tenant".to_string(), "t7".to_string())].into(),
            kind,
        }
    }

    #[test]
    fn events_serialize_flat_with_a_tag() {
        let e = event(EventKind::Paused { by: "api".into() });
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"time_ms":1,"vm":"a1","labels":{"tenant":"t7"},"event":"paused","by":"api"}"#
        );
        assert_eq!(serde_json::from_str::<VmEvent>(&json).unwrap(), e);
    }

    #[test]
    fn json_lines_writes_one_line_per_event() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let sink = EventSink::json_lines(out.clone());
        sink.send(&event(EventKind::Booted { boot_us: 5 }));
        sink.send(&event(EventKind::TtlExpired { ttl_ms: 2000 }));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].contains(r#""event":"ttl_expired","ttl_ms":2000"#),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn a_full_channel_drops_instead_of_blocking() {
        let (sink, rx) = EventSink::channel(1);
        let before = EventSink::dropped();
        sink.send(&event(EventKind::Booted { boot_us: 1 }));
        sink.send(&event(EventKind::Booted { boot_us: 2 }));
        assert!(EventSink::dropped() > before);
        assert_eq!(rx.try_recv().unwrap().kind, EventKind::Booted { boot_us: 1 });
    }
}
