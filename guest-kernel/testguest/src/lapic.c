#include "lapic.h"
#include "io.h"
#include "layout.h"

#define SVR_ENABLE        0x100
#define LVT_MASKED        (1u << 16)
#define LVT_TIMER_PERIODIC (1u << 17)
#define ICR_DELIVERY_BUSY (1u << 12)
#define ICR_ASSERT        (1u << 14)
#define ICR_INIT          (5u << 8)
#define ICR_STARTUP       (6u << 8)
#define TDCR_DIV1         0xb
#define TDCR_DIV128       0xa
#define ICR_WAIT_LIMIT    100000

uint32_t lapic_read(uint32_t reg)
{
	return mmio_read32(LAPIC_BASE + reg);
}

void lapic_write(uint32_t reg, uint32_t v)
{
	mmio_write32(LAPIC_BASE + reg, v);
}

uint32_t lapic_id(void)
{
	return lapic_read(LAPIC_ID) >> 24;
}

void lapic_enable(void)
{
	uint64_t base = rdmsr(MSR_APIC_BASE);

	if (!(base & APIC_BASE_ENABLE))
		wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE);
	lapic_write(LAPIC_SVR, SVR_ENABLE | VEC_SPURIOUS);
}

void lapic_mask_lint0(void)
{
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
}

void lapic_eoi(void)
{
	lapic_write(LAPIC_EOI, 0);
}

static int lapic_ipi(uint32_t apic_id, uint32_t icr_low)
{
	lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
	lapic_write(LAPIC_ICR_LOW, icr_low);
	for (int i = 0; i < ICR_WAIT_LIMIT; i++)
		if (!(lapic_read(LAPIC_ICR_LOW) & ICR_DELIVERY_BUSY))
			return 0;
	return -1;
}

int lapic_start_ap(uint32_t apic_id, uint8_t sipi_vector)
{
	/* On KVM no delays are needed between INIT and SIPI. */
	if (lapic_ipi(apic_id, ICR_INIT | ICR_ASSERT))
		return -1;
	if (lapic_ipi(apic_id, ICR_STARTUP | ICR_ASSERT | sipi_vector))
		return -1;
	return lapic_ipi(apic_id, ICR_STARTUP | ICR_ASSERT | sipi_vector);
}

void lapic_timer_periodic(uint8_t vector, uint64_t period_ns)
{
	uint32_t div = TDCR_DIV1;
	uint64_t count = period_ns;

	if (count > 0xffffffffu) {
		div = TDCR_DIV128;
		count /= 128;
		if (count > 0xffffffffu)
			count = 0xffffffffu;
	}
	if (!count)
		count = 1;
	lapic_write(LAPIC_LVT_TIMER, vector | LVT_TIMER_PERIODIC);
	lapic_write(LAPIC_TIMER_DIV, div);
	lapic_write(LAPIC_TIMER_INIT, (uint32_t)count);
}

void lapic_timer_oneshot_masked(uint32_t ns)
{
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
	lapic_write(LAPIC_TIMER_DIV, TDCR_DIV1);
	lapic_write(LAPIC_TIMER_INIT, ns);
}

void lapic_timer_free_running(void)
{
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | LVT_TIMER_PERIODIC | VEC_TIMER);
	lapic_write(LAPIC_TIMER_DIV, TDCR_DIV1);
	lapic_write(LAPIC_TIMER_INIT, 0xffffffffu);
}

uint32_t lapic_timer_current(void)
{
	return lapic_read(LAPIC_TIMER_CUR);
}
