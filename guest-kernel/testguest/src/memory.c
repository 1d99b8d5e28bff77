/*
 * memory: touches guest RAM on purpose, for snapshot and fork benchmarks.
 *
 *   tg.mem.base_mib   (default 32)   first byte touched
 *   tg.mem.touch_mib  (default 16)   how much is touched at start
 *   tg.mem.change_kib (default 1024) how much is changed per round
 *   tg.mem.poll_ms    (default 10)   how often the UART is polled
 *
 * Writes one qword into every 4 KiB page of [base, base + touch), prints
 * "MEM-READY touched=<MiB>", then forever: waits for a byte on COM1
 * (sleeping in `sti; hlt` on a LAPIC timer between polls of the UART;
 * a slow poll keeps many idle guests cheap), writes a new qword into every page of [base, base + change), and
 * prints "MEM-CHANGED <round>". The identity map covers 4 GiB, so any RAM
 * below that is reachable; the host gives the guest enough of it.
 */
#include <stdint.h>

#include "cmdline.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"

#define PAGE 4096u

static void fill(uint64_t base, uint64_t bytes, uint64_t tag)
{
	for (uint64_t off = 0; off < bytes; off += PAGE)
		*(volatile uint64_t *)(base + off) = tag ^ off;
}

static void wait_byte(void)
{
	while (!(inb(COM1_PORT + 5) & 1)) { /* LSR data ready */
		sti_hlt();
		cli();
	}
	inb(COM1_PORT);
}

static void scenario_memory(void)
{
	uint64_t base = cmdline_get_u64("tg.mem.base_mib", 32) << 20;
	uint64_t touch = cmdline_get_u64("tg.mem.touch_mib", 16) << 20;
	uint64_t change = cmdline_get_u64("tg.mem.change_kib", 1024) << 10;
	uint64_t poll_ms = cmdline_get_u64("tg.mem.poll_ms", 10);
	struct line l;

	fill(base, touch, 0x5a5a5a5a00000000ull);
	line_init(&l);
	line_str(&l, "MEM-READY touched=");
	line_dec(&l, touch >> 20);
	line_send(&l);

	pic_mask_all();
	lapic_enable();
	lapic_mask_lint0();
	lapic_timer_periodic(VEC_TIMER, (poll_ms ? poll_ms : 10) * 1000000);
	for (uint64_t round = 1;; round++) {
		wait_byte();
		fill(base, change, round << 40);
		line_str(&l, "MEM-CHANGED ");
		line_dec(&l, round);
		line_send(&l);
	}
}

TG_SCENARIO("memory", scenario_memory);
