//! Observability: per-VM metrics sources, lifecycle events, the agent
//! audit, and deadlines (TTL and idle). docs/OBSERVABILITY.md describes
//! every field.

pub(crate) mod audit;
pub(crate) mod event;
pub(crate) mod exits;
pub(crate) mod idle;
pub(crate) mod life;
pub(crate) mod memory;
pub(crate) mod observer;
pub(crate) mod threads;
pub(crate) mod totals;

pub use audit::{AgentRequests, AuditConfig, AuditRecord, REDACTED};
pub use event::{EventKind, EventSink, Labels, VmEvent};
pub use exits::ExitCounts;
pub use idle::{IdleAction, IdlePolicy, DEFAULT_IDLE_CPU_THRESHOLD};
pub use memory::MemoryUsage;
pub use threads::ThreadCpu;
pub use totals::Totals;

/// serde for a `Duration` as whole milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    /// The same for an `Option<Duration>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }
}
