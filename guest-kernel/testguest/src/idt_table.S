/*
 * The guest's IDT, built at link time so that installing it costs one lidt
 * instead of hundreds of emulated instructions: exceptions 0-31 go to
 * exc_stubs (isr.S, report and reset), VEC_TIMER to timer_isr, VEC_SPURIOUS
 * to spurious_isr. The handler address halves come from link.ld. idt.c can
 * still add gates at run time.
 */
#include "layout.h"

#define GATE_INTERRUPT 0x8e	/* present, DPL0, 64-bit interrupt gate */

/* Handler addresses are below 4 GiB (asserted in link.ld). */
.macro gate lo16, hi16
	.word	\lo16
	.word	SEL_CODE64
	.byte	0
	.byte	GATE_INTERRUPT
	.word	\hi16
	.long	0
	.long	0
.endm

	.section .data.idt, "aw"
	.p2align 4
	.globl idt_table
idt_table:
	.set	vector, 0
	.rept	32
	gate	"__exc_stubs_lo16 + 16 * vector", __exc_stubs_hi16
	.set	vector, vector + 1
	.endr
	.fill	(VEC_TIMER - 32) * 16, 1, 0
	gate	__timer_isr_lo16, __timer_isr_hi16
	.fill	(VEC_SPURIOUS - VEC_TIMER - 1) * 16, 1, 0
	gate	__spurious_isr_lo16, __spurious_isr_hi16
idt_table_end:

	.p2align 4
	.globl idt_desc
idt_desc:
	.word	idt_table_end - idt_table - 1
	.quad	idt_table

	.section .note.GNU-stack, "", @progbits
