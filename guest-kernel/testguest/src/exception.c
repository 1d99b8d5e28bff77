/* Unexpected CPU exception: report it on COM1 and reset. */
#include <stdint.h>

#include "lapic.h"
#include "machine.h"
#include "serial.h"

struct exc_frame {
	uint64_t vector, error, rip, cs, rflags, rsp, ss;
};

__attribute__((noreturn)) void exception_report(const struct exc_frame *f);

void exception_report(const struct exc_frame *f)
{
	struct line l;

	line_init(&l);
	line_str(&l, "TG-EXCEPTION vector=");
	line_dec(&l, f->vector);
	line_str(&l, " error=");
	line_hex(&l, f->error);
	line_str(&l, " rip=");
	line_hex(&l, f->rip);
	line_str(&l, " apic=");
	line_dec(&l, lapic_id());
	line_send(&l);
	machine_reset();
}
