/*
 * hello: boot-timer marker, GUEST-READY, reset. This is the C version; the
 * measured path is the assembly fast path in entry.S, which handles
 * tg.scenario=hello before any setup. Both must print the same.
 */
#include "machine.h"
#include "scenario.h"
#include "serial.h"

static void scenario_hello(void)
{
	boot_timer_mark();
	serial_puts("GUEST-READY\n");
	machine_reset();
}

TG_SCENARIO("hello", scenario_hello);
