/* Intel MultiProcessor Specification table: the processors' APIC ids. */
#ifndef TG_MPTABLE_H
#define TG_MPTABLE_H

#include <stdint.h>

#include "layout.h"

struct mp_cpus {
	uint32_t count;             /* enabled processor entries */
	uint8_t apic_id[MAX_CPUS];
};

/* Finds the "_MP_" floating pointer (0x9fc00-0xa0000, then the BIOS area
 * 0xf0000-0x100000) and lists the enabled processor entries. Returns 0 on
 * success, -1 if there is no usable table. */
int mptable_cpus(struct mp_cpus *out);

#endif
