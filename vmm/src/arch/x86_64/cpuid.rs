//! CPUID fixups on top of `KVM_GET_SUPPORTED_CPUID`: per-vCPU APIC ids and
//! a topology of one socket with `count` single-threaded cores.
//!
//! On this project's development hosts (PVM), the guest's CPUID instruction
//! returns host values whatever is set here, but `KVM_SET_CPUID2` is still
//! required, and on hardware KVM these values are what the guest sees.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// "AuthenticAMD" and "HygonGenuine" start with these EBX words.
const EBX_AMD: u32 = 0x6874_7541;
const EBX_HYGON: u32 = 0x6f67_7948;

/// Where a vCPU sits in the guest topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its APIC id.
    pub id: u8,
    /// Number of vCPUs.
    pub count: u8,
}

/// Bits needed to number `count` cores.
fn core_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Applies the fixups in place.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], topo: VcpuTopology, tsc_deadline: bool) {
    let id = u32::from(topo.id);
    let count = u32::from(topo.count.max(1));
    let amd = entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .is_some_and(|e| e.ebx == EBX_AMD || e.ebx == EBX_HYGON);

    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // APIC id, logical processor count, CLFLUSH size 64 bytes.
                e.ebx = (id << 24) | ((count & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits(topo.count);
                        e.ebx = count;
                        e.ecx = 1 | (2 << 8);
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n & 0xff;
                    }
                }
            }
            LEAF_EXT_FEATURES if amd => {
                if count > 1 {
                    e.ecx |= ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits(topo.count) << 12) | ((count - 1) & 0xff);
            }
            LEAF_AMD_EXT_APIC if amd => {
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn sets_apic_ids_and_topology() {
        let mut v = vec![
            entry(0, 0),
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(4, 0),
        ];
        v[5].eax = 3 << 5 | 0x1; // L3 data cache
        normalize(&mut v, VcpuTopology { id: 3, count: 4 }, true);
        let f1 = find(&v, 1, 0);
        assert_eq!(f1.ebx >> 24, 3);
        assert_eq!((f1.ebx >> 16) & 0xff, 4);
        assert_ne!(f1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(f1.ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(f1.edx & EDX_HTT, 0);
        let t1 = find(&v, 0xb, 1);
        assert_eq!((t1.eax, t1.ebx, t1.ecx, t1.edx), (2, 4, 0x201, 3));
        assert_eq!(find(&v, 0xb, 0).ebx, 1);
        assert_eq!(find(&v, 0xb, 2).ecx, 2);
        let c = find(&v, 4, 0);
        assert_eq!(c.eax >> 26, 3);
        assert_eq!((c.eax >> 14) & 0xfff, 3);
        assert_eq!(c.eax & 0x3fff, 3 << 5 | 1);
    }

    #[test]
    fn single_cpu_clears_htt_and_amd_leaves_follow_vendor() {
        let mut v = vec![
            entry(0, 0),
            entry(1, 0),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ];
        v[0].ebx = EBX_AMD;
        v[1].edx = EDX_HTT;
        normalize(&mut v, VcpuTopology { id: 0, count: 1 }, false);
        assert_eq!(find(&v, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&v, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&v, 0x8000_0008, 0).ecx & 0xff, 0);

        let mut v = vec![entry(0, 0), entry(0x8000_0008, 0), entry(0x8000_001e, 0)];
        v[0].ebx = EBX_AMD;
        normalize(&mut v, VcpuTopology { id: 5, count: 6 }, false);
        assert_eq!(find(&v, 0x8000_0008, 0).ecx & 0xf0ff, (3 << 12) | 5);
        assert_eq!(find(&v, 0x8000_001e, 0).eax, 5);
    }

    #[test]
    fn core_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(core_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
