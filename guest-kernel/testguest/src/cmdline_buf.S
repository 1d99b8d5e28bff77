/*
 * The command line copy. It lives in .data, i.e. zero-filled in the image,
 * so entry.S need not terminate or pad the copy (fewer emulated
 * instructions on the boot path): the image is loaded fresh at every boot.
 */
#include "layout.h"

	.section .data.cmdline, "aw"
	.p2align 6
	.globl tg_cmdline
tg_cmdline:
	.skip	TG_CMDLINE_MAX + TG_CMDLINE_PAD

	/* Length including the NUL, stored by entry.S before .bss is zeroed. */
	.p2align 2
	.globl tg_cmdline_len
tg_cmdline_len:
	.long	0

	.section .note.GNU-stack, "", @progbits
