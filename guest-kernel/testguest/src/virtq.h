/*
 * Split virtqueue (virtio 1.2 section 2.7), driver side, polled.
 *
 *   virtq_init()     rings from dma_alloc(), all descriptors free;
 *                    the device is asked not to interrupt
 *                    (VRING_AVAIL_F_NO_INTERRUPT; RING_EVENT_IDX is not
 *                    supported). virtio_mmio_setup_queue() then hands the
 *                    rings to the device and fills in notify/index.
 *   virtq_submit()   writes one chain of buffers into free descriptors and
 *                    makes it available (no notify) -> head id, or -1 if
 *                    there are not enough free descriptors.
 *   virtq_notify()   QueueNotify (one MMIO write; an ioeventfd in the VMM).
 *   virtq_poll()     next used element, if any: its head id and *len; -1 if
 *                    none. The chain stays the caller's: virtq_free() it,
 *                    or virtq_repost() it.
 *   virtq_repost()   makes a used chain available again as it is (same
 *                    buffers; their contents may have changed): no
 *                    descriptor writes, e.g. for receive buffers or a
 *                    repeated request.
 *   virtq_free()     returns a used chain's descriptors.
 *   virtq_reserve()  right after virtq_init(): takes descriptors 0..n-1 out
 *                    of the free list for the caller's own fixed use (it
 *                    fills them in, e.g. one per buffer, and makes them
 *                    available with virtq_repost(); never virtq_free()).
 *   virtq_wait()     spins until something is used, then virtq_poll();
 *                    -1 after timeout_ns (LAPIC timer as a free-running
 *                    1 GHz clock, so at most ~4.29 s; virtq owns the LAPIC
 *                    timer from the first wait on).
 *   virtq_run()      submit + notify + wait + free, for one request at a
 *                    time: 0, or -1 (no room, timeout, another chain).
 *
 * Several chains may be outstanding; completions come back in the
 * device's order, identified by their head ids.
 */
#ifndef TG_VIRTQ_H
#define TG_VIRTQ_H

#include <stddef.h>
#include <stdint.h>

#define VIRTQ_DESC_F_NEXT        1
#define VIRTQ_DESC_F_WRITE       2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

#define VIRTQ_TIMEOUT_NS 4000000000u /* default bound for virtq_wait */

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[];
};

struct virtq {
	struct virtq_desc *desc;
	struct virtq_avail *avail;
	volatile struct virtq_used *used;
	uint64_t notify;     /* address of QueueNotify (set by queue setup) */
	uint16_t index;      /* queue index written to QueueNotify */
	uint16_t size;       /* power of two */
	uint16_t free_head;  /* free descriptors are chained through .next */
	uint16_t num_free;
	uint16_t avail_idx;  /* driver's copy of avail->idx */
	uint16_t last_used;  /* used elements consumed so far */
};

/* One buffer of a chain. */
struct virtq_buf {
	const void *addr;    /* guest physical = virtual (identity map) */
	uint32_t len;
	uint16_t flags;      /* VIRTQ_DESC_F_WRITE if the device writes it */
};

/* Page-aligned memory from a static pool (never freed; not zeroed);
 * NULL when the pool is exhausted. */
void *dma_alloc(size_t bytes);

int virtq_init(struct virtq *q, uint16_t size); /* 0, or -1 */
int virtq_submit(struct virtq *q, const struct virtq_buf *bufs, unsigned n);
void virtq_notify(const struct virtq *q);
void virtq_repost(struct virtq *q, uint16_t head);
int virtq_poll(struct virtq *q, uint32_t *len);
void virtq_free(struct virtq *q, uint16_t head);
void virtq_reserve(struct virtq *q, uint16_t n);
int virtq_wait(struct virtq *q, uint32_t timeout_ns, uint32_t *len);
int virtq_run(struct virtq *q, const struct virtq_buf *bufs, unsigned n,
	      uint32_t timeout_ns, uint32_t *len);

#endif
