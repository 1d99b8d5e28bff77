/*
 * The guest's GDT. Selectors (src/layout.h): 0x10 64-bit code, 0x18 flat
 * data, 0x20 flat 32-bit code (AP trampoline). Accessed bits are preset so
 * the CPU never writes to the table.
 */
#include "layout.h"

	.section .data.gdt, "aw"
	.p2align 4
	.globl gdt, gdt_end, gdt_limit
gdt:
	.quad	0				/* 0x00 null */
	.quad	0				/* 0x08 unused */
	.quad	0x00af9b000000ffff		/* 0x10 code, 64-bit */
	.quad	0x00cf93000000ffff		/* 0x18 data, flat */
	.quad	0x00cf9b000000ffff		/* 0x20 code, 32-bit flat */
gdt_end:
	.set	gdt_limit, gdt_end - gdt - 1

	/* lgdt operand; 32-bit code reads only limit + low 32 bits of base. */
	.p2align 4
	.globl gdt_desc
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.section .note.GNU-stack, "", @progbits
