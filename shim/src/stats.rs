//! Task stats: the VM's metrics packed as cgroups v1 `Metrics`, the type
//! `ctr task metrics` (and the CRI) decode.

use containerd_shim_protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

/// The type URL containerd registers cgroups v1 metrics under.
pub const METRICS_V1: &str = "io.containerd.cgroups.v1.Metrics";

/// `metrics` as cgroups v1 metrics: CPU (every VM thread, ns; per vCPU),
/// memory (guest RAM resident as usage, RAM size as limit, private as
/// rss, shared as cache), disk traffic per disk, and `processes` running.
pub fn metrics(m: &hearth::VmMetrics, processes: u64) -> Metrics {
    let ns = |us: u64| us.saturating_mul(1000);
    let all = m.vcpus.iter().map(|v| &v.cpu).chain(&m.vmm_threads);
    let usage = CPUUsage {
        total: ns(all.clone().map(|t| t.cpu_us).sum()),
        user: ns(all.clone().filter_map(|t| t.user_us).sum()),
        kernel: ns(all.filter_map(|t| t.system_us).sum()),
        per_cpu: m.vcpus.iter().map(|v| ns(v.cpu.cpu_us)).collect(),
        ..Default::default()
    };
    let memory = m.memory.as_ref().map(|mem| MemoryStat {
        rss: mem.private_bytes,
        cache: mem.shared_bytes,
        total_rss: mem.private_bytes,
        total_cache: mem.shared_bytes,
        usage: MessageField::some(MemoryEntry {
            usage: mem.resident_bytes,
            limit: mem.guest_bytes,
            max: mem.guest_bytes,
            ..Default::default()
        }),
        ..Default::default()
    });
    let entry = |disk: usize, op: &str, value: u64| BlkIOEntry {
        op: op.into(),
        device: format!("vd{}", char::from(b'a' + u8::try_from(disk % 26).unwrap_or(0))),
        major: 254,
        minor: u64::try_from(disk * 16).unwrap_or(0),
        value,
        ..Default::default()
    };
    let mut blkio = BlkIOStat::default();
    for (i, d) in m.disks.iter().enumerate() {
        blkio
            .io_service_bytes_recursive
            .push(entry(i, "Read", d.read_bytes));
        blkio
            .io_service_bytes_recursive
            .push(entry(i, "Write", d.write_bytes));
        blkio.io_serviced_recursive.push(entry(i, "Read", d.reads));
        blkio.io_serviced_recursive.push(entry(i, "Write", d.writes));
    }
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(usage),
            ..Default::default()
        }),
        memory: memory.into(),
        blkio: MessageField::some(blkio),
        pids: MessageField::some(PidsStat {
            current: processes,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `metrics` in an `Any`.
pub fn pack(metrics: &Metrics) -> Any {
    Any {
        type_url: METRICS_V1.into(),
        value: metrics.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_url_is_the_message_name() {
        use containerd_shim_protos::protobuf::MessageFull;
        assert_eq!(Metrics::descriptor().full_name(), METRICS_V1);
    }

    #[test]
    fn packed_metrics_decode_back() {
        let m = Metrics {
            pids: MessageField::some(PidsStat {
                current: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = pack(&m);
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.pids.current, 3);
    }
}
