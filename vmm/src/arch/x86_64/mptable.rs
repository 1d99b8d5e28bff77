//! The Intel MultiProcessor Specification 1.4 table, so that Linux finds
//! its CPUs and the IOAPIC without ACPI (and without scanning the BIOS area
//! 16 bytes at a time, which costs seconds of emulated kernel code on
//! hosts without hardware virtualization).
//!
//! The floating pointer goes at the start of the EBDA, the first place
//! Linux looks after the first KiB; the configuration table goes in the
//! BIOS area, which has room for every vCPU.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{EBDA_START, IOAPIC_START, IRQ_MAX, LAPIC_START, MAX_VCPUS, MPTABLE_CONFIG_START};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6, and the FPU and APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// More vCPUs than APIC ids.
    #[error("the MP table holds at most {MAX_VCPUS} vCPUs, got {0}")]
    TooManyCpus(u32),
    /// Guest memory does not reach the table's addresses.
    #[error("guest memory is too small for the MP table")]
    NotEnoughMemory,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the configuration table (header and entries) for `cpus` vCPUs.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // type, irq type, flags (conforming: u16), source bus, source irq,
        // destination IOAPIC, destination pin.
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 from the PIC, LINT1 as NMI, on every local APIC (0xff).
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let length = (44 + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"HEARTH  ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte floating pointer structure.
fn floating_pointer(config_addr: u32) -> [u8; 16] {
    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = SPEC_REV;
    fp[10] = checksum(&fp);
    fp
}

/// Writes the MP table for `cpus` vCPUs into guest memory.
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, cpus: u32) -> Result<(), MptableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let table = config_table(cpus as u8);
    mem.write_slice(
        &floating_pointer(MPTABLE_CONFIG_START as u32),
        GuestAddress(EBDA_START),
    )
    .map_err(|_| MptableError::NotEnoughMemory)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_CONFIG_START))
        .map_err(|_| MptableError::NotEnoughMemory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Parses the table the way a guest would and returns the APIC ids.
    fn parse(m: &GuestMemoryMmap) -> (Vec<u8>, u8, usize) {
        let fp = read(m, EBDA_START, 16);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(checksum(&fp), 0);
        let cfg = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let hdr = read(m, cfg, 44);
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let table = read(m, cfg, len);
        assert_eq!(checksum(&table), 0, "config table checksum");
        let count = u16::from_le_bytes([hdr[34], hdr[35]]) as usize;
        let mut off = 44;
        let (mut cpus, mut ioapic, mut ints) = (vec![], 0xff, 0);
        for _ in 0..count {
            match table[off] {
                ENTRY_PROCESSOR => {
                    cpus.push(table[off + 1]);
                    off += 20;
                }
                ENTRY_IOAPIC => {
                    ioapic = table[off + 1];
                    off += 8;
                }
                ENTRY_IOINT => {
                    ints += 1;
                    off += 8;
                }
                _ => off += 8,
            }
        }
        assert_eq!(off, len);
        (cpus, ioapic, ints)
    }

    #[test]
    fn table_lists_every_cpu_and_checksums() {
        for n in [1u32, 4, 64, MAX_VCPUS] {
            let m = mem();
            setup_mptable(&m, n).unwrap();
            let (cpus, ioapic, ints) = parse(&m);
            assert_eq!(cpus, (0..n as u8).collect::<Vec<_>>());
            assert_eq!(ioapic, n as u8);
            assert_eq!(ints, IRQ_MAX as usize + 1);
        }
    }

    #[test]
    fn bsp_flag_only_on_cpu0() {
        let t = config_table(3);
        assert_eq!(t[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(t[44 + 20 + 3], CPU_ENABLED);
    }

    #[test]
    fn refuses_bad_counts_and_small_memory() {
        assert_eq!(setup_mptable(&mem(), 0), Err(MptableError::TooManyCpus(0)));
        assert_eq!(setup_mptable(&mem(), 255), Err(MptableError::TooManyCpus(255)));
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert_eq!(setup_mptable(&small, 1), Err(MptableError::NotEnoughMemory));
    }
}
