//! The structures a kernel reads at entry: the Linux zero page
//! (`boot_params` with its e820 map) or the PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::*;
use super::regs::WriteError;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// What the kernel needs to know about memory, command line and initrd.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    /// Guest RAM ranges (start, length).
    pub ram: &'a [(u64, u64)],
    /// Command line length including its NUL.
    pub cmdline_size: usize,
    /// Initrd (address, size).
    pub initrd: Option<(u64, u64)>,
}

/// The e820 map: (address, size, type).
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::with_capacity(ram.len() + 2);
    for &(start, len) in ram {
        let end = start + len;
        if start == 0 {
            map.push((0, EBDA_START.min(end), E820_RAM));
            if end > EBDA_START {
                map.push((EBDA_START, BIOS_END - EBDA_START, E820_RESERVED));
            }
            if end > HIMEM_START {
                map.push((HIMEM_START, end - HIMEM_START, E820_RAM));
            }
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

fn write_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> WriteError {
    move |_| WriteError::new(what)
}

/// Writes the Linux zero page. `header` is the bzImage setup header, if any.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo,
    header: Option<setup_header>,
) -> Result<(), WriteError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline_size as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(info.ram);
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(write_err("zero page"))
}

/// Writes the PVH start info, memory map and module list.
pub fn write_pvh_info<M: GuestMemoryBackend>(mem: &M, info: &BootInfo) -> Result<(), WriteError> {
    let map = e820_map(info.ram);
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(write_err("PVH memory map"))?;
    }
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(write_err("PVH module list"))?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(start_info, GuestAddress(PVH_INFO_START))
        .map_err(write_err("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;

    #[test]
    fn e820_skips_bios_area_and_gap() {
        assert_eq!(
            e820_map(&[(0, 128 << 20)]),
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, BIOS_END - EBDA_START, E820_RESERVED),
                (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM)
            ]
        );
        let big = e820_map(&ram_ranges(5 << 30));
        assert_eq!(big.len(), 4);
        assert_eq!(big[2], (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM));
        assert_eq!(big[3], (MMIO_GAP_END, (5 << 30) - MMIO_GAP_START, E820_RAM));
    }

    #[test]
    fn zero_page_fields() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let ram = [(0, 16 << 20)];
        let info = BootInfo {
            ram: &ram,
            cmdline_size: 12,
            initrd: Some((0xf0_0000, 0x1234)),
        };
        write_zero_page(&m, &info, None).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 12);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0xf0_0000, 0x1234)
        );
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.e820_table[2].addr }, HIMEM_START);
    }

    #[test]
    fn pvh_start_info_fields() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let ram = [(0, 16 << 20)];
        let info = BootInfo {
            ram: &ram,
            cmdline_size: 5,
            initrd: Some((0xe0_0000, 4096)),
        };
        write_pvh_info(&m, &info).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.cmdline_paddr, CMDLINE_START);
        assert_eq!((si.nr_modules, si.modlist_paddr), (1, PVH_MODLIST_START));
        assert_eq!(si.memmap_entries, 3);
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(PVH_MEMMAP_START + 2 * 24)).unwrap();
        assert_eq!((e.addr, e.type_), (HIMEM_START, E820_RAM));
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0xe0_0000, 4096));
    }
}
