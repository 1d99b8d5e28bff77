//! Refuses to restore a snapshot that uses CPU features this host's KVM
//! cannot give the guest.

use kvm_bindings::kvm_cpuid_entry2;

/// (leaf, subleaf, register name, register, bits not to compare). The
/// ignored bits are the ones Hearth or KVM set per vCPU at run time:
/// leaf 1 ECX hypervisor (31), OSXSAVE (27), TSC deadline (24); leaf 1
/// EDX HTT (28); leaf 7 ECX OSPKE (4).
type Reg = fn(&kvm_cpuid_entry2) -> u32;
const CHECKED: [(u32, u32, &str, Reg, u32); 7] = [
    (0x1, 0, "ecx", |e| e.ecx, 1 << 31 | 1 << 27 | 1 << 24),
    (0x1, 0, "edx", |e| e.edx, 1 << 28),
    (0x7, 0, "ebx", |e| e.ebx, 0),
    (0x7, 0, "ecx", |e| e.ecx, 1 << 4),
    (0x7, 0, "edx", |e| e.edx, 0),
    (0x8000_0001, 0, "ecx", |e| e.ecx, 0),
    (0x8000_0001, 0, "edx", |e| e.edx, 0),
];

fn find(entries: &[kvm_cpuid_entry2], leaf: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| e.function == leaf && e.index == index)
}

/// Describes the saved features the host lacks, or `None`.
pub(crate) fn missing_features(host: &[kvm_cpuid_entry2], saved: &[kvm_cpuid_entry2]) -> Option<String> {
    let mut missing = Vec::new();
    for (leaf, index, name, reg, ignore) in CHECKED {
        let Some(s) = find(saved, leaf, index) else {
            continue;
        };
        let have = find(host, leaf, index).map_or(0, reg);
        let lacking = reg(s) & !have & !ignore;
        if lacking != 0 {
            missing.push(format!("leaf {leaf:#x}.{index} {name} bits {lacking:#x}"));
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn reports_only_real_gaps() {
        let host = [e(1, 0b1111, 0xff), e(7, 0, 0)];
        assert_eq!(missing_features(&host, &[e(1, 0b0101, 0x0f)]), None);
        // Runtime bits are ignored.
        assert_eq!(missing_features(&host, &[e(1, 1 << 31 | 1 << 27, 1 << 28)]), None);
        let gap = missing_features(&host, &[e(1, 1 << 20, 0), e(0x8000_0001, 1, 0)]).unwrap();
        assert!(gap.contains("leaf 0x1.0 ecx bits 0x100000"), "{gap}");
        assert!(gap.contains("leaf 0x80000001.0 ecx bits 0x1"), "{gap}");
    }
}
