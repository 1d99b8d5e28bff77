#include "idt.h"
#include "layout.h"

struct __attribute__((packed)) idt_gate {
	uint16_t off0;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off1;
	uint32_t off2;
	uint32_t reserved;
};

#define GATE_INTERRUPT 0x8e /* present, DPL0, 64-bit interrupt gate */

extern struct idt_gate idt_table[256];

void idt_load(void)
{
	__asm__ volatile("lidt %0" : : "m"(idt_desc));
}

void idt_set_gate(unsigned vector, void (*handler)(void))
{
	uint64_t a = (uint64_t)handler;
	struct idt_gate *g = &idt_table[vector & 0xff];

	g->off0 = (uint16_t)a;
	g->sel = SEL_CODE64;
	g->ist = 0;
	g->type = GATE_INTERRUPT;
	g->off1 = (uint16_t)(a >> 16);
	g->off2 = (uint32_t)(a >> 32);
}
