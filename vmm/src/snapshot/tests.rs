//! snapshot → restore → snapshot keeps the decoded state identical, apart
//! from what time alone changes while a VM sits paused.

use serde_json::Value;

use super::state::SnapshotState;
use super::{format, RestoreOptions, STATE_FILE};
use crate::{SerialBuffer, SerialOutput, Vm, VmConfig};

const MSR_IA32_TSC: u64 = 0x10;
/// LAPIC timer current-count register.
const APIC_TMCCT: usize = 0x390;

fn decode(dir: &std::path::Path) -> SnapshotState {
    format::decode(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap()
}

/// The state as JSON, with the values that move while paused removed.
fn comparable(mut s: SnapshotState) -> Value {
    for v in &mut s.vcpus {
        v.msrs.retain(|m| u64::from(m.index) != MSR_IA32_TSC);
        for b in &mut v.lapic.regs[APIC_TMCCT..APIC_TMCCT + 4] {
            *b = 0;
        }
    }
    s.vm.clock = Default::default();
    serde_json::to_value(&s).unwrap()
}

#[test]
fn snapshot_restore_snapshot_round_trip_keeps_state() {
    let console = SerialBuffer::new();
    let config = VmConfig::builder(hearth_testguest::elf())
        .vcpus(2)
        .memory_mib(32)
        // The timer fires only after 100 s: nothing changes while paused.
        .cmdline("tg.scenario=counter tg.period_ms=100000")
        .serial(SerialOutput::Buffer(console.clone()))
        .build()
        .unwrap();
    let vm = Vm::start(config).unwrap();
    assert!(console.wait_for("GUEST-READY", std::time::Duration::from_secs(30)));
    std::thread::sleep(std::time::Duration::from_millis(50));
    vm.pause().unwrap();
    let base = std::env::temp_dir().join(format!("hearth-roundtrip-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    vm.snapshot(&a).unwrap();
    drop(vm);

    let restored = Vm::restore(&a, &RestoreOptions::new().paused(true)).unwrap();
    restored.snapshot(&b).unwrap();
    drop(restored);

    let (sa, sb) = (decode(&a), decode(&b));
    assert_eq!(sa.vcpus.len(), 2);
    assert_eq!(sa.devices.virtio.len(), 0);
    assert!(!sa.vcpus[0].msrs.is_empty(), "MSRs are saved");
    assert_eq!(comparable(sa), comparable(sb));
    let mem_a = std::fs::read(a.join(super::MEMORY_FILE)).unwrap();
    let mem_b = std::fs::read(b.join(super::MEMORY_FILE)).unwrap();
    assert!(mem_a == mem_b, "guest memory differs after a round trip");
    let _ = std::fs::remove_dir_all(&base);
}
