/*
 * counter: GUEST-READY, then a periodic LAPIC timer (tg.period_ms, default
 * 50) whose interrupt increments tg_ticks (timer_isr in isr.S); the BSP
 * sleeps in hlt and prints "COUNT <n>" for every tick, forever. tg_ticks is
 * in guest memory, so a VM snapshot captures it and a restored VM carries on
 * counting from there.
 */
#include <stdint.h>

#include "cmdline.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"

#define DEFAULT_PERIOD_MS 50

volatile uint64_t tg_ticks;      /* written by timer_isr only */
static uint64_t tg_ticks_printed;

static void scenario_counter(void)
{
	uint64_t period_ms = cmdline_get_u64("tg.period_ms", DEFAULT_PERIOD_MS);
	struct line l;

	boot_timer_mark();
	serial_puts("GUEST-READY\n");

	if (!period_ms)
		period_ms = DEFAULT_PERIOD_MS;
	pic_mask_all();
	lapic_enable();
	lapic_mask_lint0();
	lapic_timer_periodic(VEC_TIMER, period_ms * 1000000);

	line_init(&l);
	for (;;) {
		cli();
		if (tg_ticks == tg_ticks_printed)
			sti_hlt();
		uint64_t now = tg_ticks;
		while (tg_ticks_printed < now) {
			tg_ticks_printed++;
			line_str(&l, "COUNT ");
			line_dec(&l, tg_ticks_printed);
			line_send(&l);
		}
	}
}

TG_SCENARIO("counter", scenario_counter);
