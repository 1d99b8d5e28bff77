/* The guest's IDT (static table in idt_table.S): exceptions 0-31 report
 * and reset (exception.c), VEC_TIMER -> timer_isr, VEC_SPURIOUS ignored.
 * Scenarios may add gates with idt_set_gate(). */
#ifndef TG_IDT_H
#define TG_IDT_H

#include <stdint.h>

struct __attribute__((packed)) desc_ptr {
	uint16_t limit;
	const void *base;
};

extern struct desc_ptr idt_desc; /* also loaded by APs (entry.S) */

void idt_load(void);
void idt_set_gate(unsigned vector, void (*handler)(void));

/* Entry stubs (isr.S). */
extern char exc_stubs[];
void timer_isr(void);
void spurious_isr(void);

#endif
