/* Machine-level controls: boot-timer marker, reset, legacy PIC. */
#ifndef TG_MACHINE_H
#define TG_MACHINE_H

void boot_timer_mark(void);
__attribute__((noreturn)) void machine_reset(void);
__attribute__((noreturn)) void halt_forever(void);
void pic_mask_all(void);

#endif
