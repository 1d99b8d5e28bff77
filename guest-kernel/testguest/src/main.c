/*
 * C entry on the BSP (from entry.S, on the guest's own stack, page tables
 * and GDT, with .bss zeroed): install the IDT and run the scenario named on
 * the command line. tg.scenario=hello normally never gets here: entry.S
 * handles it before any setup (see the fast path there).
 */
#include <stddef.h>

#include "cmdline.h"
#include "idt.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"
#include "string.h"

extern const struct tg_scenario __tg_scenarios_start[], __tg_scenarios_end[];

__attribute__((noreturn)) void tg_main(void);

void tg_main(void)
{
	size_t len;
	const char *name;

	idt_load();
	name = cmdline_get("tg.scenario", &len);
	if (name) {
		for (const struct tg_scenario *s = __tg_scenarios_start;
		     s < __tg_scenarios_end; s++) {
			if (s->name_len == len && !memcmp(s->name, name, len)) {
				s->run();
				machine_reset();
			}
		}
	}

	struct line l;
	line_init(&l);
	line_str(&l, "TG-ERROR unknown scenario ");
	line_strn(&l, name ? name : "", len);
	line_send(&l);
	machine_reset();
}
