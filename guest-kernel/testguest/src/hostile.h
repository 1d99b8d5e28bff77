/*
 * Shared helpers of the `hostile` scenario (hostile.c: dispatch and the
 * targeted attacks; hostile_vsock.c: the vsock attacks; hostile_random.c:
 * the seeded random campaign). See README.md, "hostile".
 *
 * Time: hostile programs the LAPIC timer periodic at 1 ms (vector
 * VEC_TIMER, timer_isr counts tg_ticks) before any attack runs, and the
 * CPU waits in `sti; hlt` (hx_sleep). So nothing here may call
 * virtq_wait()/virtq_run(), which would turn the timer into a masked
 * free-running clock and the guest would never wake up again.
 * Interrupts stay enabled (IF=1) from the start of the scenario on.
 */
#ifndef TG_HOSTILE_H
#define TG_HOSTILE_H

#include <stddef.h>
#include <stdint.h>

#include "virtio_mmio.h"
#include "virtq.h"

#define HX_NO_VALUE (~0ull)

/* Statics that are always written before they are read: kept out of .bss
 * so that they cost nothing at boot (entry.S zeroes .bss, on PVM one
 * emulated rep iteration per qword) for the other scenarios. */
#define HX_NOINIT __attribute__((section(".noinit")))

extern volatile uint64_t tg_ticks; /* counter.c; +1 per ms (timer_isr) */

/* The virtio-mmio devices of the command line (hx_discover fills them
 * once; vsock-idle never calls it: it must not touch any device). */
extern struct virtio_mmio_dev hx_dev[];
extern int hx_ndev;
void hx_discover(void);
/* nth device with this id, or NULL (after printing HOSTILE-ERROR). */
struct virtio_mmio_dev *hx_find(uint32_t id, int nth, const char *what);

/* Output. */
void hx_error(const char *what, uint64_t v);          /* HOSTILE-ERROR <what>[<v>] */
/* HOSTILE-ERROR <name>: <what>[<v>] */
void hx_error2(const char *name, const char *what, uint64_t v);
void hx_say(const char *what, uint64_t v);            /* <what><v> */
void hx_fired(const char *name);                      /* HOSTILE-FIRED <name> */

/* `sti; hlt`: returns after the next interrupt (timer: <= 1 ms).
 * hostile runs with interrupts enabled throughout (timer_isr only counts
 * tg_ticks), so that tg_ticks keeps time while the guest is busy. */
void hx_sleep(void);

/*
 * The heartbeat, forever: every tg.period_ms (default 100) ms, touch()
 * (the attack's MMIO access, if any), "HOSTILE-TICK <n>", then report()
 * (extra lines, if any). poll(), if any, runs after every wake-up (1 ms).
 */
__attribute__((noreturn)) void hx_heartbeat(void (*touch)(void),
					    void (*poll)(void),
					    void (*report)(void));

/* Heartbeat whose ticks first write q to QueueNotify of d (and read
 * InterruptStatus if isr); heartbeat with no device access. */
__attribute__((noreturn)) void hx_tick_notify(struct virtio_mmio_dev *d,
					      uint32_t q, int isr);
__attribute__((noreturn)) void hx_just_tick(void);

/* Register access: aligned 32-bit (what drivers do) ... */
uint32_t hx_rd(const struct virtio_mmio_dev *d, uint32_t reg);
void hx_wr(const struct virtio_mmio_dev *d, uint32_t reg, uint32_t v);
void hx_wr64(const struct virtio_mmio_dev *d, uint32_t reg, uint64_t v);
/* ... and any width (1, 2, 4, 8) at any address (a single mov). */
uint64_t hx_mmio_read(uint64_t addr, unsigned width);
void hx_mmio_write(uint64_t addr, unsigned width, uint64_t v);

/* QueueNumMax of queue q, rounded down to a power of two, at most cap
 * (0 if the queue does not exist). */
uint16_t hx_queue_size(struct virtio_mmio_dev *d, uint32_t q, uint16_t cap);

/* virtq_init() again on the memory q already has (q->size entries): all
 * descriptors free, indexes zero. For rings that are set up many times. */
void hx_virtq_reset(struct virtq *q);

/* The attacks in the other files (each ends in hx_heartbeat, except
 * hostile_random, which resets the machine). */
void hx_vsock_norx(void);
void hx_vsock_idle(void);
void hx_vsock_fill(void);
void hx_vsock_conn_flood(void);
__attribute__((noreturn)) void hostile_random(uint64_t seed);

#endif
