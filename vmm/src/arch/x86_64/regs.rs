//! Initial register state for the boot vCPU: 64-bit long mode for the
//! Linux boot protocol, 32-bit protected mode for PVH.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{gdt_entry, segment_from_gdt, CODE32, CODE64, DATA, TSS32, TSS64};
use super::layout::*;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64(u64),
    /// PVH: 32-bit protected mode, paging off, EBX = start_info.
    Pvh(u64),
}

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot {what} into guest memory")]
pub struct WriteError {
    what: &'static str,
}

impl WriteError {
    /// An error writing `what`.
    pub fn new(what: &'static str) -> Self {
        Self { what }
    }
}

fn write<T: vm_memory::ByteValued, M: GuestMemoryBackend>(
    mem: &M,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), WriteError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|_| WriteError { what })
}

/// Writes the boot GDT and IDT and returns the segment setup.
fn write_gdt<M: GuestMemoryBackend>(mem: &M, table: &[u64], sregs: &mut kvm_sregs) -> Result<(), WriteError> {
    for (i, entry) in table.iter().enumerate() {
        write(mem, *entry, BOOT_GDT_START + (i as u64) * 8, "GDT")?;
    }
    write(mem, 0u64, BOOT_IDT_START, "IDT")?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages.
fn write_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), WriteError> {
    write(mem, PDPTE_START | 0x03, PML4_START, "page tables")?;
    write(mem, PDE_START | 0x03, PDPTE_START, "page tables")?;
    let mut pde = [0u8; 4096];
    for (i, chunk) in pde.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pde, GuestAddress(PDE_START))
        .map_err(|_| WriteError { what: "page tables" })
}

/// Sets up segments, control registers and boot tables for `entry`.
pub fn setup_sregs<M: GuestMemoryBackend>(
    mem: &M,
    entry: EntryPoint,
    sregs: &mut kvm_sregs,
) -> Result<(), WriteError> {
    match entry {
        EntryPoint::Linux64(_) => {
            // Selectors 0x10 and 0x18 as the 64-bit boot protocol requires.
            let table = [
                0,
                0,
                gdt_entry(CODE64, 0, 0xfffff),
                gdt_entry(DATA, 0, 0xfffff),
                gdt_entry(TSS64, 0, 0xfffff),
            ];
            write_gdt(mem, &table, sregs)?;
            let code = segment_from_gdt(table[2], 2);
            let data = segment_from_gdt(table[3], 3);
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(table[4], 4);
            write_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh(_) => {
            let table = [
                0,
                gdt_entry(CODE32, 0, 0xfffff),
                gdt_entry(DATA, 0, 0xfffff),
                gdt_entry(TSS32, 0, 0x67),
            ];
            write_gdt(mem, &table, sregs)?;
            let code = segment_from_gdt(table[1], 1);
            let data = segment_from_gdt(table[2], 2);
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = segment_from_gdt(table[3], 3);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// General-purpose registers at the kernel entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        EntryPoint::Linux64(rip) => {
            regs.rip = rip;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryPoint::Pvh(rip) => {
            regs.rip = rip;
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// x87 and SSE control words at reset values.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn long_mode_setup() {
        let m = mem();
        let mut s = kvm_sregs::default();
        setup_sregs(&m, EntryPoint::Linux64(0x100_0000), &mut s).unwrap();
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last_pde: u64 = m.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last_pde, (511 << 21) | 0x83);
        let gdt_code: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 0x10)).unwrap();
        assert_eq!(gdt_code, gdt_entry(CODE64, 0, 0xfffff));
        let r = boot_regs(EntryPoint::Linux64(0x100_0000));
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE_START, 2));
    }

    #[test]
    fn pvh_setup() {
        let m = mem();
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        setup_sregs(&m, EntryPoint::Pvh(0x100_1000), &mut s).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((s.cs.db, s.cs.l, s.cs.limit), (1, 0, 0xffff_ffff));
        assert_eq!(s.tr.limit, 0x67);
        assert_eq!(s.efer, 0);
        let r = boot_regs(EntryPoint::Pvh(0x100_1000));
        assert_eq!((r.rip, r.rbx), (0x100_1000, PVH_INFO_START));
    }
}
