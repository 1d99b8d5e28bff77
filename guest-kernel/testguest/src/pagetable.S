/*
 * The guest's own page tables: identity map of the first 4 GiB with 2 MiB
 * pages, built at assembly time so that no guest instruction is spent on
 * them (the VMM loads them with the image). 0xd0000000 and up (virtio-mmio
 * window, IOAPIC, LAPIC) is mapped uncached (PCD|PWT).
 */
#include "layout.h"

#define PTE_P	0x001
#define PTE_W	0x002
#define PTE_PWT	0x008
#define PTE_PCD	0x010
#define PTE_PS	0x080
#define MMIO_START 0xd0000000

	.section .data.pagetable, "aw"
	.p2align 12
	.globl pml4
pml4:
	.quad	pdpt + (PTE_P | PTE_W)
	.fill	511, 8, 0

	.p2align 12
pdpt:
	.quad	pd + 0x0000 + (PTE_P | PTE_W)
	.quad	pd + 0x1000 + (PTE_P | PTE_W)
	.quad	pd + 0x2000 + (PTE_P | PTE_W)
	.quad	pd + 0x3000 + (PTE_P | PTE_W)
	.fill	508, 8, 0

	.p2align 12
pd:
	.set	addr, 0
	.rept	2048
	.if	addr >= MMIO_START
	.quad	addr + (PTE_P | PTE_W | PTE_PS | PTE_PCD | PTE_PWT)
	.else
	.quad	addr + (PTE_P | PTE_W | PTE_PS)
	.endif
	.set	addr, addr + 0x200000
	.endr

	.section .note.GNU-stack, "", @progbits
