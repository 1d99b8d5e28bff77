/*
 * fault: announce, then triple-fault: with a zero-limit IDT the #UD from
 * ud2 cannot be delivered (-> #GP -> #DF -> shutdown). The VMM must report
 * a guest crash.
 */
#include "idt.h"
#include "scenario.h"
#include "serial.h"

static void scenario_fault(void)
{
	static const struct desc_ptr no_idt = { 0, 0 };

	serial_puts("FAULT-NOW\n");
	__asm__ volatile("lidt %0\n\tud2" : : "m"(no_idt));
	__builtin_unreachable();
}

TG_SCENARIO("fault", scenario_fault);
