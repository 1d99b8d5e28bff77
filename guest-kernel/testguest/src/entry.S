/*
 * Entry paths of the test guest.
 *
 *   0x100000  kernel_info ("LToP", for the bzImage form) + PVH 32-bit entry
 *   0x100200  entry64: Linux 64-bit boot protocol entry (ELF e_entry and
 *             bzImage payload + 0x200)
 *
 * Both paths end up in common64 (64-bit mode, RSI = command line address):
 *   1. copy the command line into tg_cmdline (repne scasb, rep movsq/b);
 *   2. hello fast path: if the first tg.scenario= token is "hello", write the
 *      boot-timer marker, print GUEST-READY and reset, without touching
 *      anything else: no stack, no page table or GDT switch (this is the
 *      measured boot path: 46 instructions from entry64, 58 from pvh_entry,
 *      for "console=ttyS0 tg.scenario=hello"; tests/run-qemu.py counts);
 *   3. otherwise switch to the guest's own stack, page tables (4 GiB identity
 *      map, src/pagetable.S) and GDT (src/gdt.S), zero .bss and call
 *      tg_main() (src/main.c).
 *
 * Every guest instruction at CPL0 is emulated on PVM hosts (~0.7 us each):
 * keep these paths short.
 */
#include "layout.h"

/* ------------------------------------------------------------------------ */
	.section .head.pvh, "ax"

	/* Linux boot protocol 2.15 kernel_info (kernel_info_offset = 0). */
	.globl kernel_info
kernel_info:
	.ascii	"LToP"
	.long	16			/* size */
	.long	16			/* size_total */
	.long	0			/* setup_type_max: no setup_data used */

	/*
	 * PVH entry (Xen PVH boot ABI, see the note below): 32-bit protected
	 * mode, paging off, EBX = struct hvm_start_info. The page tables and
	 * GDT are static data in the image, so long mode is a few instructions.
	 */
	.code32
	.globl pvh_entry
pvh_entry:
	movl	HVM_START_CMDLINE(%ebx), %esi	/* low 32 bits of cmdline_paddr */
	/* The PVH ABI starts with CR4 = 0 and CR0 = PE|ET: plain loads. */
	movl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	lgdt	gdt_desc
	movl	$(CR0_PG | CR0_ET | CR0_PE), %eax
	movl	%eax, %cr0
	ljmp	$SEL_CODE64, $common64

/* ------------------------------------------------------------------------ */
	.section .head.entry64, "ax"	/* linked at 0x100200 */
	.code64

	/*
	 * Linux 64-bit boot protocol: long mode, identity map of the first
	 * GiB, CS = 0x10, RSI = boot_params. ext_cmd_line_ptr (high 32 bits)
	 * is not used: the VMM puts the command line below 4 GiB.
	 */
	.globl entry64
entry64:
	movl	BP_CMD_LINE_PTR(%rsi), %esi
	/* fall through */

	/* RSI = physical address of the NUL-terminated command line, or 0. */
common64:
	cld
	testl	%esi, %esi
	jnz	1f
	movl	$empty_cmdline, %esi
1:
	/*
	 * Copy the command line: find its length with repne scasb (including
	 * the NUL; at most TG_CMDLINE_SCAN bytes), then copy exactly that
	 * many bytes, mostly as qwords (a rep iteration costs about as much as
	 * an instruction on PVM, so rep movsb would double the cost). Nothing
	 * past the source NUL is read. tg_cmdline is zero in the image
	 * (src/cmdline_buf.S): the copy is terminated and zero-padded.
	 */
	movq	%rsi, %rdi
	movl	$TG_CMDLINE_SCAN, %ecx
	xorl	%eax, %eax
	repne scasb
	movl	%edi, %edx
	subl	%esi, %edx			/* edx = length incl. NUL */
	movl	%edx, %ecx
	shrl	$3, %ecx
	movl	$tg_cmdline, %edi
	rep movsq
	movl	%edx, %ecx
	andl	$7, %ecx
	rep movsb

	/*
	 * Hello fast path: find the first token starting with "tg.scenario="
	 * (tokens are separated by spaces) and test whether its value is
	 * exactly "hello". Compares 8+4+8 bytes at a time (reads stay inside
	 * the buffer and its zero padding). Anything else goes to slow64, with
	 * EDX = command line length incl. NUL.
	 */
	movl	$tg_cmdline, %edi
	movl	%edx, %ecx			/* bytes left to scan */
	movl	$' ', %eax
	movabsq	$0x616e6563732e6774, %r10	/* "tg.scena" */
	movabsq	$0x206f6c6c65680000, %r8	/* "hello" + (' ' | NUL | 0x20) */
.Ltoken:
	cmpq	%r10, (%rdi)
	jne	.Lnext_token
	cmpl	$0x3d6f6972, 8(%rdi)		/* "rio=" */
	jne	.Lnext_token
	movq	12(%rdi), %r9			/* value: 6 bytes are relevant */
	shlq	$16, %r9
	btsq	$61, %r9			/* terminator: ' ' or NUL -> ' ' */
	cmpq	%r8, %r9
	jne	slow64				/* another scenario */

	/* tg.scenario=hello */
	movb	$BOOT_TIMER_MAGIC, %al
	movw	$BOOT_TIMER_PORT, %dx
	outb	%al, %dx
	movl	$msg_guest_ready, %esi
	movl	$msg_guest_ready_len, %ecx
	movw	$COM1_PORT, %dx
	rep outsb
	movb	$I8042_CMD_RESET, %al
	outb	%al, $I8042_CMD_PORT
2:	hlt
	jmp	2b

.Lnext_token:
	testq	%rcx, %rcx
	jz	slow64
	repne scasb				/* skip past the next ' ' */
	je	.Ltoken
	/* no (more) tokens: fall into slow64 */

	/*
	 * Everything else: own stack, page tables, GDT; zero .bss; C.
	 */
	.globl slow64
slow64:
	movl	%edx, tg_cmdline_len(%rip)
	movl	$bsp_stack_top, %esp
	movl	$pml4, %eax
	movq	%rax, %cr3
	lgdt	gdt_desc(%rip)
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	pushq	$SEL_CODE64
	pushq	$1f
	lretq
1:
	movl	$__bss_start, %edi
	movl	$__bss_qwords, %ecx
	xorl	%eax, %eax
	rep stosq
	call	tg_main
3:	cli
	hlt
	jmp	3b

/* ------------------------------------------------------------------------ */
	.text
	/*
	 * APs arrive here from the trampoline (src/ap_trampoline.S) in long
	 * mode on the BSP's page tables and GDT, with their own stack.
	 */
	.globl ap_entry64
ap_entry64:
	lidt	idt_desc(%rip)
	call	ap_main
4:	cli
	hlt
	jmp	4b

/* ------------------------------------------------------------------------ */
	.section .rodata
	.globl msg_guest_ready
msg_guest_ready:
	.ascii	"GUEST-READY\n"
	.set	msg_guest_ready_len, . - msg_guest_ready
empty_cmdline:
	.byte	0

/* ------------------------------------------------------------------------ */
	/*
	 * Xen PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18), 4-byte descriptor
	 * = 32-bit physical address of pvh_entry. It is followed by an empty
	 * note (12 zero bytes), so readers that load the descriptor as a
	 * 64-bit value (QEMU does) still see the same address.
	 */
	.section .note.Xen, "a", @note
	.p2align 2
	.long	4			/* namesz */
	.long	4			/* descsz */
	.long	18			/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.long	pvh_entry
	.long	0, 0, 0			/* empty note */

	.section .note.GNU-stack, "", @progbits
