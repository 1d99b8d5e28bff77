/* Local APIC in xAPIC (MMIO) mode at 0xfee00000. KVM's and QEMU's LAPIC
 * timers count at 1 GHz before the divider. */
#ifndef TG_LAPIC_H
#define TG_LAPIC_H

#include <stdint.h>

uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t v);
uint32_t lapic_id(void);
void lapic_enable(void);      /* APIC_BASE enable + SVR = 0x1ff */
void lapic_mask_lint0(void);  /* no ExtINT from the 8259 */
void lapic_eoi(void);

/* INIT, then SIPI twice with the given vector (start page >> 12). */
int lapic_start_ap(uint32_t apic_id, uint8_t sipi_vector);

/* Timer, with 1 GHz base clock. */
void lapic_timer_periodic(uint8_t vector, uint64_t period_ns);
void lapic_timer_oneshot_masked(uint32_t ns); /* a deadline to poll */
/* Masked, periodic from 0xffffffff: a free-running down-counter (1 ns). */
void lapic_timer_free_running(void);
uint32_t lapic_timer_current(void);

#endif
