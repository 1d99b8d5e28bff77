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
    s.id = 0;
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
    restored
        .snapshot_with(&b, &super::SnapshotOptions::new().full(true))
        .unwrap();
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

/// A snapshot in format 1.1 (no device ids, no snapshot id) still
/// restores: its virtio devices pair with the configuration's by position.
#[test]
fn a_format_1_1_snapshot_still_restores() {
    let console = SerialBuffer::new();
    let sock = std::env::temp_dir().join(format!("hearth-compat-{}.sock", std::process::id()));
    let config = VmConfig::builder(hearth_testguest::elf())
        .memory_mib(32)
        .cmdline("tg.scenario=counter tg.period_ms=10")
        .vsock(crate::VsockConfig::new(3, &sock))
        .serial(SerialOutput::Buffer(console.clone()))
        .build()
        .unwrap();
    let vm = Vm::start(config).unwrap();
    assert!(console.wait_for("COUNT 3", std::time::Duration::from_secs(30)));
    vm.pause().unwrap();
    let dir = std::env::temp_dir().join(format!("hearth-compat-{}", std::process::id()));
    vm.snapshot(&dir).unwrap();
    drop(vm);

    // Rewrite the state as 1.1 wrote it.
    let mut body: Value = serde_json::to_value(decode(&dir)).unwrap();
    body.as_object_mut().unwrap().remove("id");
    for t in body["devices"]["virtio"].as_array_mut().unwrap() {
        t.as_object_mut().unwrap().remove("id");
    }
    let body = serde_json::to_vec(&body).unwrap();
    let mut crc = crc64fast::Digest::new();
    crc.write(&body);
    let mut file = Vec::new();
    file.extend_from_slice(&format::MAGIC);
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&[0; 4]);
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc.sum64().to_le_bytes());
    file.extend_from_slice(&body);
    std::fs::write(dir.join(STATE_FILE), file).unwrap();

    let console = SerialBuffer::new();
    let vm = Vm::restore(
        &dir,
        &RestoreOptions::new().serial(SerialOutput::Buffer(console.clone())),
    )
    .unwrap();
    assert!(console.wait_for("COUNT", std::time::Duration::from_secs(30)));
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
