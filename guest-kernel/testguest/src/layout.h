/* Constants shared by the assembly and the C code of the test guest.
 * Plain #defines only: this header is included from .S files too. */
#ifndef TG_LAYOUT_H
#define TG_LAYOUT_H

/* Where the image lives (see link.ld). */
#define TG_LOAD_ADDR        0x100000
#define TG_ENTRY64_OFFSET   0x200      /* 64-bit entry = load address + 0x200 */

/* GDT selectors (src/gdt.S). 0x10/0x18 match the Linux boot protocol's
 * __BOOT_CS/__BOOT_DS, which is what the VMM loads before entry64. */
#define SEL_CODE64          0x10
#define SEL_DATA            0x18
#define SEL_CODE32          0x20

/* Control registers / MSRs. */
#define CR0_PE              0x00000001
#define CR0_ET              0x00000010
#define CR0_NW              0x20000000
#define CR0_CD              0x40000000
#define CR0_PG              0x80000000
#define CR4_PAE             0x00000020
#define MSR_EFER            0xc0000080
#define EFER_LME            0x00000100
#define MSR_APIC_BASE       0x1b
#define APIC_BASE_ENABLE    0x800

/* Boot information structures. */
#define BP_CMD_LINE_PTR     0x228      /* boot_params.hdr.cmd_line_ptr */
#define HVM_START_CMDLINE   24         /* hvm_start_info.cmdline_paddr */

/* Command line copy (src/cmdline_buf.S): zero in the image; keeps at most
 * TG_CMDLINE_SCAN characters (the NUL after them is the image's zero);
 * TG_CMDLINE_PAD more zero bytes let the word-wise matcher in entry.S read
 * past the end. */
#define TG_CMDLINE_MAX      4096
#define TG_CMDLINE_SCAN     (TG_CMDLINE_MAX - 8)
#define TG_CMDLINE_PAD      32

/* Stacks (src/noinit.S). */
#define BSP_STACK_SIZE      16384
#define AP_STACK_SHIFT      12         /* 4 KiB per AP */
#define MAX_CPUS            64         /* check-in mask is 64 bits */

/* Memory for virtqueues and device buffers (src/noinit.S, dma_alloc()). */
#define DMA_POOL_SIZE       0x210000   /* 2 MiB + 64 KiB */

/* AP real-mode trampoline (src/ap_trampoline.S). */
#define TRAMP_BASE          0x8000
#define TRAMP_SIPI_VECTOR   (TRAMP_BASE >> 12)
#define TR_OFF_DATA         0x100      /* data block offset in the page */
#define TR_OFF_GDT_DESC     (TR_OFF_DATA + 0x02) /* u16 limit, u32 base */
#define TR_OFF_CR3          (TR_OFF_DATA + 0x08) /* u32, written by the BSP */
#define TR_OFF_NEXT_INDEX   (TR_OFF_DATA + 0x0c) /* u32, AP stack allocator */
#define TR_OFF_STACK_BASE   (TR_OFF_DATA + 0x10) /* u64, written by the BSP */
#define TR_OFF_ENTRY        (TR_OFF_DATA + 0x18) /* u64, ap_entry64 */
#define TR_SIZE             (TR_OFF_DATA + 0x20)

/* Devices. */
#define COM1_PORT           0x3f8
#define BOOT_TIMER_PORT     0x440
#define BOOT_TIMER_MAGIC    123
#define I8042_CMD_PORT      0x64
#define I8042_CMD_RESET     0xfe
#define PIC1_DATA_PORT      0x21
#define PIC2_DATA_PORT      0xa1
#define VIRTIO_MMIO_MAX     16         /* virtio_mmio.device= tokens used */

/* Local APIC (xAPIC MMIO). */
#define LAPIC_BASE          0xfee00000
#define LAPIC_ID            0x020
#define LAPIC_EOI           0x0b0
#define LAPIC_SVR           0x0f0
#define LAPIC_ICR_LOW       0x300
#define LAPIC_ICR_HIGH      0x310
#define LAPIC_LVT_TIMER     0x320
#define LAPIC_LVT_LINT0     0x350
#define LAPIC_TIMER_INIT    0x380
#define LAPIC_TIMER_CUR     0x390
#define LAPIC_TIMER_DIV     0x3e0

/* Interrupt vectors. */
#define VEC_TIMER           0x40
#define VEC_SPURIOUS        0xff

#endif
