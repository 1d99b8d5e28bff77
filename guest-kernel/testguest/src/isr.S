/*
 * Interrupt and exception entry stubs (installed by src/idt.c).
 */
#include "layout.h"

	.text
	.code64

	/*
	 * exc_stubs + 16*n: stub for exception vector n (0..31). Each pushes a
	 * zero error code where the CPU pushes none, then the vector number.
	 */
	.p2align 4
	.globl exc_stubs
exc_stubs:
	.set	vector, 0
	.rept	32
	.p2align 4
	.if	(vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
	pushq	$vector
	.else
	pushq	$0
	pushq	$vector
	.endif
	jmp	exc_common
	.set	vector, vector + 1
	.endr

exc_common:
	/* frame: vector, error, rip, cs, rflags, rsp, ss */
	movq	%rsp, %rdi
	andq	$-16, %rsp
	call	exception_report		/* does not return */
1:	cli
	hlt
	jmp	1b

	/* LAPIC timer: count the tick (tg_ticks, src/counter.c), EOI. */
	.p2align 4
	.globl timer_isr
timer_isr:
	incq	tg_ticks(%rip)
	pushq	%rax
	movl	$(LAPIC_BASE + LAPIC_EOI), %eax
	movl	$0, (%rax)
	popq	%rax
	iretq

	/* Spurious interrupt: no EOI. */
	.p2align 4
	.globl spurious_isr
spurious_isr:
	iretq

	.section .note.GNU-stack, "", @progbits
