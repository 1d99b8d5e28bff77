/*
 * spin: GUEST-READY, then the vCPU spins (polling the UART's data-ready
 * bit) until a byte arrives on COM1; then "SPIN-HALT" and it halts for good
 * with interrupts off. Hosts measure vCPU time while it spins and while it
 * halts, and stop spinning guests with a TTL.
 */
#include "io.h"
#include "layout.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"

static void scenario_spin(void)
{
	boot_timer_mark();
	serial_puts("GUEST-READY\n");
	while (!(inb(COM1_PORT + 5) & 1)) /* LSR data ready */
		__asm__ volatile("pause");
	inb(COM1_PORT);
	serial_puts("SPIN-HALT\n");
	for (;;)
		__asm__ volatile("cli; hlt");
}

TG_SCENARIO("spin", scenario_spin);
