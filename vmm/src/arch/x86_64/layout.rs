//! The guest physical address map.
//!
//! ```text
//! 0x0000_0500  boot GDT                 0x0000_9000  PML4, PDPTE, PDE (to 0xbfff)
//! 0x0000_0540  boot IDT                 0x0002_0000  kernel command line
//! 0x0000_6000  PVH start_info, modlist, memory map
//! 0x0000_7000  Linux zero page          0x0009_fc00  MP floating pointer (EBDA)
//! 0x0000_8ff0  boot stack top           0x000f_0000  MP configuration table
//! 0x0010_0000  kernel (high memory)     ...          RAM up to 3 GiB
//! 0xc000_0000  MMIO gap: virtio-mmio devices from 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! ```

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (a single null gate).
pub const BOOT_IDT_START: u64 = 0x540;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Linux `boot_params` (the "zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 2-MiB pages: the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including the NUL (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP floating pointer goes; RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP configuration table, in the BIOS area.
pub const MPTABLE_CONFIG_START: u64 = 0xf0000;
/// End of the BIOS area.
pub const BIOS_END: u64 = 0x100000;
/// First address of high memory, where kernels load.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) on Intel hosts, inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page on Intel hosts, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// First IRQ for virtio devices (0-4 are the timer, keyboard, cascade,
/// COM2 and COM1).
pub const IRQ_BASE: u32 = 5;
/// Last IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// Largest number of vCPUs: APIC ids 0..=253, the IOAPIC takes the next one.
pub const MAX_VCPUS: u32 = 254;

/// Guest RAM as (start, length) ranges for `size` bytes of memory: one
/// range when it fits below the MMIO gap, else a second one above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ram_around_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)]
        );
    }

    #[test]
    fn low_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 0x40),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x40),
            (PVH_MEMMAP_START, 0xf80),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x3000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
            (MPTABLE_CONFIG_START, 0x10000),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
        const { assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000) };
    }
}
