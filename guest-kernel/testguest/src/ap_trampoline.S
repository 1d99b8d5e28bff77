/*
 * AP start-up trampoline. smp.c copies [ap_trampoline_start, _end) to
 * TRAMP_BASE (0x8000), fills in the data block and sends INIT/SIPI/SIPI with
 * vector TRAMP_SIPI_VECTOR, so an AP starts here in real mode at 0800:0000.
 *
 * real mode -> 32-bit protected mode (guest GDT, selector 0x20)
 *           -> long mode (BSP's CR3 from the data block)
 *           -> own stack (atomic index into ap_stacks) -> ap_entry64.
 *
 * The code runs at TRAMP_BASE, not where it is linked: every address in it
 * is written as TR(label).
 */
#include "layout.h"

#define TR(label) (TRAMP_BASE + (label) - ap_trampoline_start)

	.section .rodata.trampoline, "a"
	.globl ap_trampoline_start, ap_trampoline_end

	.code16
ap_trampoline_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	TR_OFF_GDT_DESC
	movl	%cr0, %eax
	andl	$~(CR0_CD | CR0_NW), %eax
	orl	$CR0_PE, %eax
	movl	%eax, %cr0
	ljmpl	$SEL_CODE32, $TR(tr_pm32)

	.code32
tr_pm32:
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	TRAMP_BASE + TR_OFF_CR3, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$CR0_PG, %eax
	movl	%eax, %cr0
	ljmp	$SEL_CODE64, $TR(tr_lm64)

	.code64
tr_lm64:
	movl	$1, %eax
	lock xaddl %eax, TRAMP_BASE + TR_OFF_NEXT_INDEX
	incl	%eax
	shlq	$AP_STACK_SHIFT, %rax
	addq	TRAMP_BASE + TR_OFF_STACK_BASE, %rax
	movq	%rax, %rsp
	jmp	*TRAMP_BASE + TR_OFF_ENTRY

	/* Data block (offsets in layout.h). */
	.org	TR_OFF_DATA
	.word	0
	.word	gdt_limit			/* TR_OFF_GDT_DESC: limit */
	.long	gdt				/*                  base  */
	.long	0				/* TR_OFF_CR3 */
	.long	0				/* TR_OFF_NEXT_INDEX */
	.quad	0				/* TR_OFF_STACK_BASE */
	.quad	ap_entry64			/* TR_OFF_ENTRY */
	.org	TR_SIZE
ap_trampoline_end:

	.section .note.GNU-stack, "", @progbits
