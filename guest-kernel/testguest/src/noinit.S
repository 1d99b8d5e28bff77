/*
 * Memory that is never read before it is written, so it is neither in the
 * image nor zeroed at boot (zeroing costs emulated instructions on PVM).
 */
#include "layout.h"

	.section .noinit, "aw", @nobits

	.p2align 12
	.globl bsp_stack_top
	.skip	BSP_STACK_SIZE
bsp_stack_top:

	/* AP i (0-based start order) uses [ap_stacks + i*4K, + (i+1)*4K). */
	.p2align 12
	.globl ap_stacks
ap_stacks:
	.skip	(MAX_CPUS - 1) << AP_STACK_SHIFT

	/* Virtqueue rings and device buffers, handed out by dma_alloc(). */
	.p2align 12
	.globl dma_pool
dma_pool:
	.skip	DMA_POOL_SIZE

	.section .note.GNU-stack, "", @progbits
