/*
 * Test-only "VMM in a can" for the Linux 64-bit boot path under QEMU.
 *
 * QEMU cannot boot the bzImage's 64-bit entry directly (it runs the real-mode
 * setup code, which the test guest does not have). This shim is booted by
 * QEMU through PVH instead, and then puts the machine in the state the Hearth
 * VMM guarantees for the 64-bit Linux boot protocol:
 *   - boot_params (zero page) at 0x7000, hdr.cmd_line_ptr -> 0x20000,
 *     the command line (taken from hvm_start_info) copied to 0x20000;
 *   - page tables at 0x9000 (PML4) / 0xa000 (PDPT) / 0xb000 (PD): identity
 *     map of the first 1 GiB with 2 MiB pages;
 *   - GDT at 0x500: 0x10 = 64-bit code, 0x18 = data;
 *   - long mode, interrupts off, CS = 0x10, DS/ES/SS = 0x18,
 *     RSP = 0x8ff0, RSI = 0x7000;
 * and jumps to 0x100200, where QEMU's "-device loader" has put the bzImage
 * payload (the flat test guest image).
 */
#define ZERO_PAGE	0x7000
#define CMDLINE		0x20000
#define PML4		0x9000
#define PDPT		0xa000
#define PD		0xb000
#define GDT		0x500
#define ENTRY64		0x100200

	.section .text.shim, "ax"
	.code32
	.globl shim_entry
shim_entry:
	cld
	movl	24(%ebx), %esi			/* hvm_start_info.cmdline_paddr */

	/* Zero page, page tables: clear 0x7000-0xbfff. */
	movl	$ZERO_PAGE, %edi
	movl	$(0xc000 - ZERO_PAGE) / 4, %ecx
	xorl	%eax, %eax
	rep stosl

	/* Command line -> 0x20000 (at most 2047 bytes + NUL). */
	movl	$CMDLINE, %edi
	movl	$2047, %ecx
	testl	%esi, %esi
	jz	2f
1:	lodsb
	testb	%al, %al
	jz	2f
	stosb
	loop	1b
2:	movb	$0, (%edi)
	movl	$CMDLINE, ZERO_PAGE + 0x228

	/* 1 GiB identity map, 2 MiB pages. */
	movl	$(PDPT | 3), PML4
	movl	$(PD | 3), PDPT
	movl	$PD, %edi
	movl	$0x83, %eax
	movl	$512, %ecx
3:	movl	%eax, (%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	loop	3b

	/* GDT at 0x500. */
	movl	$GDT, %edi
	movl	$gdt_template, %esi
	movl	$gdt_template_end - gdt_template, %ecx
	rep movsb
	lgdt	gdt_desc

	movl	%cr4, %eax
	orl	$0x20, %eax			/* PAE */
	movl	%eax, %cr4
	movl	$PML4, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx
	rdmsr
	orl	$0x100, %eax			/* EFER.LME */
	wrmsr
	movl	%cr0, %eax
	orl	$0x80000001, %eax
	movl	%eax, %cr0
	ljmp	$0x10, $lm64

	.code64
lm64:
	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	$0x8ff0, %esp
	movl	$ZERO_PAGE, %esi
	xorl	%eax, %eax
	xorl	%ebx, %ebx
	xorl	%ebp, %ebp
	xorl	%edi, %edi
	movl	$ENTRY64, %ecx
	jmp	*%rcx

	.section .rodata.shim, "a"
	.p2align 3
gdt_template:
	.quad	0
	.quad	0
	.quad	0x00af9b000000ffff		/* 0x10 */
	.quad	0x00cf93000000ffff		/* 0x18 */
gdt_template_end:
gdt_desc:
	.word	gdt_template_end - gdt_template - 1
	.long	GDT

	.section .note.Xen, "a", @note
	.p2align 2
	.long	4, 4, 18
	.asciz	"Xen"
	.long	shim_entry
	.long	0, 0, 0

	.section .note.GNU-stack, "", @progbits
