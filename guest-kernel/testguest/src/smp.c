/*
 * smp: start every AP listed in the MP table with INIT/SIPI/SIPI through the
 * real-mode trampoline (ap_trampoline.S, copied to TRAMP_BASE); each AP
 * checks in by setting its APIC-id bit in smp_checkin_mask (lock or) and
 * halts. The BSP polls the mask, bounded by a 2 s one-shot LAPIC timer
 * (no HLT), then prints
 *   SMP-OK cpus=<n> apic_ids=<ids in mask order>
 * or, on timeout,
 *   SMP-FAIL expected=<n> checked_in=<mask in hex>
 */
#include <stdint.h>

#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "machine.h"
#include "mptable.h"
#include "scenario.h"
#include "serial.h"
#include "string.h"

#define SMP_TIMEOUT_NS 2000000000u

extern char ap_trampoline_start[], ap_trampoline_end[], ap_stacks[];

static volatile uint64_t smp_checkin_mask;

static void checkin(uint32_t apic_id)
{
	if (apic_id < MAX_CPUS)
		__atomic_fetch_or(&smp_checkin_mask, 1ull << apic_id, __ATOMIC_SEQ_CST);
}

/* APs, from ap_entry64 (entry.S), on their own stack. */
__attribute__((noreturn)) void ap_main(void);

void ap_main(void)
{
	checkin(lapic_id());
	halt_forever();
}

static void smp_fail(uint32_t expected, uint64_t mask)
{
	struct line l;

	line_init(&l);
	line_str(&l, "SMP-FAIL expected=");
	line_dec(&l, expected);
	line_str(&l, " checked_in=");
	line_hex(&l, mask);
	line_send(&l);
}

static void scenario_smp(void)
{
	struct mp_cpus cpus;
	uint64_t expected = 0, mask;
	uint32_t bsp;
	struct line l;

	if (mptable_cpus(&cpus)) {
		serial_puts("SMP-FAIL no MP table\n");
		return;
	}
	for (uint32_t i = 0; i < cpus.count; i++) {
		if (cpus.apic_id[i] >= MAX_CPUS) {
			smp_fail(cpus.count, 0);
			return;
		}
		expected |= 1ull << cpus.apic_id[i];
	}

	lapic_enable();
	bsp = lapic_id();
	checkin(bsp);

	/* Trampoline + its data block: BSP's CR3, AP stack area. */
	memcpy((void *)TRAMP_BASE, ap_trampoline_start,
	       (size_t)(ap_trampoline_end - ap_trampoline_start));
	*(volatile uint32_t *)(TRAMP_BASE + TR_OFF_CR3) = (uint32_t)read_cr3();
	*(volatile uint64_t *)(TRAMP_BASE + TR_OFF_STACK_BASE) = (uint64_t)ap_stacks;

	for (uint32_t i = 0; i < cpus.count; i++)
		if (cpus.apic_id[i] != bsp)
			lapic_start_ap(cpus.apic_id[i], TRAMP_SIPI_VECTOR);

	lapic_timer_oneshot_masked(SMP_TIMEOUT_NS);
	while (((mask = smp_checkin_mask) & expected) != expected &&
	       lapic_timer_current())
		;

	if ((mask & expected) != expected) {
		smp_fail(cpus.count, mask);
		return;
	}

	/* ids in mask order; counted here (a popcount idiom could become a
	 * popcnt instruction, which the PVM emulator cannot execute). */
	struct line ids;
	uint32_t n = 0;
	line_init(&ids);
	for (uint32_t id = 0; id < MAX_CPUS; id++) {
		if (mask & (1ull << id)) {
			if (n++)
				line_char(&ids, ',');
			line_dec(&ids, id);
		}
	}
	line_init(&l);
	line_str(&l, "SMP-OK cpus=");
	line_dec(&l, n);
	line_str(&l, " apic_ids=");
	line_strn(&l, ids.buf, ids.len);
	line_send(&l);
}

TG_SCENARIO("smp", scenario_smp);
