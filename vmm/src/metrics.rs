//! What a running VM reports about itself: [`VmCore::metrics`]
//! (docs/OBSERVABILITY.md has every field, its unit and its cost).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use hearth_devices::guest_log::GuestLogCounters;
use hearth_devices::virtio::block::BlockCounters;
use hearth_devices::virtio::net::NetCounters;
use hearth_devices::virtio::vsock::VsockTraffic;

use crate::observe::event::now_ms;
use crate::observe::idle::Activity;
use crate::observe::{memory, AgentRequests, ExitCounts, MemoryUsage, ThreadCpu};
use crate::serial_cap::SerialCounters;
use crate::vm::VmCore;

/// How old a guest memory sample [`VmCore::metrics`] reuses may be: the
/// page-table walk costs time in proportion to resident memory, too much
/// to repeat every second for every VM.
pub const MEMORY_SAMPLE_MAX_AGE: Duration = Duration::from_secs(10);

/// A VM's counters at one moment. Cheap to take: atomics, one short lock
/// per virtio device, a clock read (and where `/proc` is mounted a
/// `pread`) per VMM thread, and a page-table walk at most every
/// [`MEMORY_SAMPLE_MAX_AGE`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VmMetrics {
    /// The VM's id.
    pub vm: String,
    /// When taken, ms since the Unix epoch.
    pub time_ms: u64,
    /// Since the VM started (or was restored), milliseconds.
    pub uptime_ms: u64,
    /// Of which paused, milliseconds.
    pub paused_ms: u64,
    /// Paused now.
    pub paused: bool,
    /// The TTL left, milliseconds, if the VM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_remaining_ms: Option<u64>,
    /// Each vCPU's thread CPU time and exits.
    pub vcpus: Vec<VcpuMetrics>,
    /// The VMM's other threads of this VM (the device event loop, the
    /// lifecycle thread).
    pub vmm_threads: Vec<ThreadCpu>,
    /// Guest memory use (`None` where `/proc/self/pagemap` is not
    /// readable); see [`VmMetrics::memory_age_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUsage>,
    /// How old the memory sample is, milliseconds.
    pub memory_age_ms: u64,
    /// Each disk's counters, in config order.
    pub disks: Vec<BlockCounters>,
    /// Each network interface's counters, in config order.
    pub nets: Vec<NetCounters>,
    /// The vsock device's state and traffic, if it has one.
    pub vsock: Option<VsockCounters>,
    /// Agent requests through [`Vm::agent`](crate::Vm::agent) clients.
    pub agent: AgentRequests,
    /// Problems the guest provoked, per virtio device, in MMIO slot order
    /// (disks, nets, vsock): how many, and how many were not logged
    /// (docs/LIMITS.md, "Logs").
    pub guest_problems: Vec<DeviceProblems>,
    /// The guest's serial console output, and what was dropped past
    /// [`ResourceLimits::serial_output_bytes`](crate::ResourceLimits).
    pub serial: SerialCounters,
    /// Events dropped because the sink fell behind.
    pub events_dropped: u64,
}

/// One vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VcpuMetrics {
    /// Its thread's CPU time (guest time included).
    pub cpu: ThreadCpu,
    /// Its exits to the VMM.
    pub exits: ExitCounts,
}

/// The vsock device's state now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VsockCounters {
    /// Live connections.
    pub connections: u64,
    /// Host clients in their `CONNECT` handshake.
    pub pending_clients: u64,
    /// Guest data buffered for host sockets, in bytes.
    pub buffered_bytes: u64,
    /// RSTs waiting for guest rx buffers.
    pub control_backlog: u64,
    /// What went through it.
    pub traffic: VsockTraffic,
}

/// One virtio device's guest-triggered problems.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceProblems {
    /// The device's id: `disk<N>`, `net<N>` or `vsock`.
    pub device: String,
    /// The counters.
    pub counters: GuestLogCounters,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl VmCore {
    /// The VM's counters now.
    pub fn metrics(&self) -> VmMetrics {
        let obs = &self.run_state.obs;
        let mut vcpus = Vec::new();
        let mut vmm_threads = Vec::new();
        for t in obs.threads.read() {
            match t.name.strip_prefix("vcpu").and_then(|i| i.parse::<usize>().ok()) {
                Some(i) => vcpus.push(VcpuMetrics {
                    exits: obs.exits.get(i).map(|e| e.read()).unwrap_or_default(),
                    cpu: t,
                }),
                None => vmm_threads.push(t),
            }
        }
        let (memory, age) = self.memory_sample(MEMORY_SAMPLE_MAX_AGE);
        VmMetrics {
            vm: obs.id.clone(),
            time_ms: now_ms(),
            uptime_ms: ms(obs.started.elapsed()),
            paused_ms: ms(obs.paused_time()),
            paused: self.runner.is_paused(),
            ttl_remaining_ms: obs.ttl_remaining().map(ms),
            vcpus,
            vmm_threads,
            memory,
            memory_age_ms: ms(age),
            disks: self.disk_counters(),
            nets: self.net_counters(),
            vsock: self.vsock_counters(),
            agent: obs.agent.read(),
            guest_problems: self
                .devices
                .virtio
                .entries()
                .iter()
                .map(|e| DeviceProblems {
                    device: e.id.clone(),
                    counters: e.transport.guest_log().counters(),
                })
                .collect(),
            serial: self.devices.serial_tally.read(),
            events_dropped: obs.dropped_events(),
        }
    }

    /// Guest memory use now (a fresh page-table walk; `None` where
    /// `/proc/self/pagemap` is not readable).
    pub fn memory_usage(&self) -> Option<MemoryUsage> {
        self.memory_sample(Duration::ZERO).0
    }

    /// The last memory sample if younger than `max_age`, else a new one;
    /// with its age.
    fn memory_sample(&self, max_age: Duration) -> (Option<MemoryUsage>, Duration) {
        let mut cached = self.memory_sample.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, usage)) = *cached {
            if at.elapsed() <= max_age && !max_age.is_zero() {
                return (Some(usage), at.elapsed());
            }
        }
        let usage = memory::sample(&self.memory);
        *cached = usage.map(|u| (Instant::now(), u));
        (usage, Duration::ZERO)
    }

    fn vsock_counters(&self) -> Option<VsockCounters> {
        self.devices.virtio.vsock().map(|v| {
            let v = v.lock().unwrap_or_else(|p| p.into_inner());
            let m = v.muxer();
            VsockCounters {
                connections: m.connection_count() as u64,
                pending_clients: m.pending_client_count() as u64,
                buffered_bytes: m.buffered_bytes() as u64,
                control_backlog: m.control_backlog() as u64,
                traffic: m.traffic(),
            }
        })
    }

    /// What the idle timeout compares between samples: vCPU CPU time and
    /// I/O operations of every kind.
    pub(crate) fn activity(&self) -> Activity {
        let obs = &self.run_state.obs;
        let vcpu_cpu_us = obs
            .threads
            .read()
            .iter()
            .filter(|t| t.name.starts_with("vcpu"))
            .map(|t| t.cpu_us)
            .sum();
        let disks: u64 = self
            .disk_counters()
            .iter()
            .map(|d| d.reads + d.writes + d.flushes + d.discards)
            .sum();
        let nets: u64 = self
            .net_counters()
            .iter()
            .map(|n| n.rx_frames + n.tx_frames)
            .sum();
        let vsock = self.vsock_counters().map_or(0, |v| {
            v.traffic.rx_packets + v.traffic.tx_packets + v.traffic.connections_opened
        });
        let agent: u64 = obs.agent.read().requests.values().sum();
        Activity {
            vcpu_cpu_us,
            io_ops: disks + nets + vsock + agent,
        }
    }
}
