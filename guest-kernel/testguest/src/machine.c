#include "machine.h"
#include "io.h"
#include "layout.h"

/* Tell the VMM the guest is up (boot-time measurement). */
void boot_timer_mark(void)
{
	outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
}

/* i8042 "pulse reset line": the VMM ends the VM. */
void machine_reset(void)
{
	outb(I8042_CMD_PORT, I8042_CMD_RESET);
	halt_forever();
}

void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* Mask both 8259s so no legacy interrupt reaches us once IF=1. */
void pic_mask_all(void)
{
	outb(PIC1_DATA_PORT, 0xff);
	outb(PIC2_DATA_PORT, 0xff);
}
