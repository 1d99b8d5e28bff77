#include "mptable.h"

#define MPF_SIG  0x5f504d5fu /* "_MP_" */
#define MPC_SIG  0x504d4350u /* "PCMP" */

struct __attribute__((packed)) mp_floating {
	uint32_t signature;
	uint32_t config_paddr;
	uint8_t length;      /* in 16-byte units */
	uint8_t spec_rev;
	uint8_t checksum;
	uint8_t feature[5];  /* feature[0] != 0: default config, no table */
};

struct __attribute__((packed)) mp_config {
	uint32_t signature;
	uint16_t length;
	uint8_t spec_rev;
	uint8_t checksum;
	char oem[8];
	char product[12];
	uint32_t oem_table;
	uint16_t oem_table_size;
	uint16_t entry_count;
	uint32_t lapic_addr;
	uint16_t ext_length;
	uint8_t ext_checksum;
	uint8_t reserved;
};

enum { MP_PROCESSOR = 0, MP_BUS, MP_IOAPIC, MP_IOINTR, MP_LINTR };

struct __attribute__((packed)) mp_processor {
	uint8_t type;
	uint8_t apic_id;
	uint8_t apic_ver;
	uint8_t flags;       /* bit 0: enabled, bit 1: bootstrap processor */
	uint32_t signature;
	uint32_t features;
	uint32_t reserved[2];
};

static const struct mp_floating *mp_scan(uint64_t start, uint64_t end)
{
	for (uint64_t a = start; a < end; a += 16) {
		const struct mp_floating *f = (const struct mp_floating *)a;
		if (f->signature == MPF_SIG && f->length == 1)
			return f;
	}
	return 0;
}

int mptable_cpus(struct mp_cpus *out)
{
	const struct mp_floating *f = mp_scan(0x9fc00, 0xa0000);

	if (!f)
		f = mp_scan(0xf0000, 0x100000);
	if (!f || f->feature[0] || !f->config_paddr)
		return -1;

	const struct mp_config *c = (const struct mp_config *)(uint64_t)f->config_paddr;
	if (c->signature != MPC_SIG)
		return -1;

	const uint8_t *p = (const uint8_t *)(c + 1);
	const uint8_t *end = (const uint8_t *)c + c->length;
	out->count = 0;
	for (unsigned i = 0; i < c->entry_count && p < end; i++) {
		if (*p == MP_PROCESSOR) {
			const struct mp_processor *cpu = (const struct mp_processor *)p;
			if ((cpu->flags & 1) && out->count < MAX_CPUS)
				out->apic_id[out->count++] = cpu->apic_id;
			p += sizeof(*cpu);
		} else if (*p <= MP_LINTR) {
			p += 8;
		} else {
			break; /* unknown entry type: its size is unknown */
		}
	}
	return out->count ? 0 : -1;
}
