#include "virtq.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"

/* The device and the driver share the rings; x86 keeps stores in order and
 * loads in order, so only the compiler must not reorder (no fences: the
 * PVM emulator should not see them). */
#define barrier() __asm__ volatile("" : : : "memory")

extern char dma_pool[];
static size_t dma_used;

void *dma_alloc(size_t bytes)
{
	size_t n = (bytes + 0xfff) & ~(size_t)0xfff;
	char *p = dma_pool + dma_used;

	if (n > DMA_POOL_SIZE - dma_used)
		return NULL;
	dma_used += n;
	return p;
}

int virtq_init(struct virtq *q, uint16_t size)
{
	size_t avail_off = 16u * size;
	size_t used_off = (avail_off + 6 + 2u * size + 3) & ~(size_t)3;
	size_t bytes = used_off + 6 + 8u * size;
	char *mem;

	if (!size || (size & (size - 1)) || !(mem = dma_alloc(bytes)))
		return -1;
	/* Only the ring headers need initial values (no EVENT_IDX fields):
	 * everything else is written before the other side reads it. */
	q->desc = (struct virtq_desc *)mem;
	q->avail = (struct virtq_avail *)(mem + avail_off);
	q->used = (volatile struct virtq_used *)(mem + used_off);
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	q->avail->idx = 0;
	q->used->flags = 0;
	q->used->idx = 0;
	q->notify = 0;
	q->index = 0;
	q->size = size;
	for (uint16_t i = 0; i < size; i++)
		q->desc[i].next = (uint16_t)(i + 1);
	q->free_head = 0;
	q->num_free = size;
	q->avail_idx = 0;
	q->last_used = 0;
	return 0;
}

static void post(struct virtq *q, uint16_t head)
{
	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	barrier(); /* ring entry before idx */
	*(volatile uint16_t *)&q->avail->idx = ++q->avail_idx;
}

int virtq_submit(struct virtq *q, const struct virtq_buf *bufs, unsigned n)
{
	struct virtq_desc *d = NULL;
	uint16_t head = q->free_head, i = head;

	if (!n || n > q->num_free)
		return -1;
	q->num_free = (uint16_t)(q->num_free - n);
	/* Free descriptors are already linked through .next: take n of them. */
	for (const struct virtq_buf *b = bufs; b < bufs + n; b++) {
		d = &q->desc[i];
		d->addr = (uint64_t)b->addr;
		d->len = b->len;
		d->flags = b->flags | VIRTQ_DESC_F_NEXT;
		i = d->next;
	}
	d->flags &= (uint16_t)~VIRTQ_DESC_F_NEXT;
	q->free_head = i;
	post(q, head);
	return head;
}

void virtq_repost(struct virtq *q, uint16_t head)
{
	post(q, head);
}

void virtq_notify(const struct virtq *q)
{
	barrier();
	mmio_write32(q->notify, q->index);
}

int virtq_poll(struct virtq *q, uint32_t *len)
{
	if (q->used->idx == q->last_used)
		return -1;
	barrier(); /* idx before the element */
	struct virtq_used_elem e = q->used->ring[q->last_used++ & (q->size - 1)];
	if (e.id >= q->size)
		return -1; /* a broken device; the chain is lost */
	*len = e.len;
	return (int)e.id;
}

void virtq_free(struct virtq *q, uint16_t head)
{
	uint16_t i = head, n = 1;

	for (; q->desc[i].flags & VIRTQ_DESC_F_NEXT; n++)
		i = q->desc[i].next;
	q->desc[i].next = q->free_head;
	q->free_head = head;
	q->num_free = (uint16_t)(q->num_free + n);
}

void virtq_reserve(struct virtq *q, uint16_t n)
{
	/* virtq_init chained the free descriptors 0 -> 1 -> ... */
	q->free_head = n;
	q->num_free = (uint16_t)(q->size - n);
}

/*
 * Time base for the bounded waits: the LAPIC timer, masked, periodic from
 * 0xffffffff at 1 GHz, used as a free-running down-counter (programmed on
 * the first wait). Elapsed time is start - now modulo 2^32, exact while
 * clock reads are less than ~4.29 s apart.
 */
static int clock_running;

static uint32_t clock_now(void)
{
	if (!clock_running) {
		clock_running = 1;
		lapic_timer_free_running();
	}
	return lapic_timer_current();
}

int virtq_wait(struct virtq *q, uint32_t timeout_ns, uint32_t *len)
{
	uint32_t start = 0, now;

	/* Spin on the used index; look at the clock every 16th turn (the
	 * bound starts at turn 16: a fast device never costs a clock read). */
	for (unsigned n = 1; q->used->idx == q->last_used; n++) {
		if (n % 16)
			continue;
		now = clock_now();
		if (n == 16)
			start = now;
		else if (start - now >= timeout_ns)
			return -1;
	}
	return virtq_poll(q, len);
}

int virtq_run(struct virtq *q, const struct virtq_buf *bufs, unsigned n,
	      uint32_t timeout_ns, uint32_t *len)
{
	int head = virtq_submit(q, bufs, n), id;

	if (head < 0)
		return -1;
	virtq_notify(q);
	if ((id = virtq_wait(q, timeout_ns, len)) >= 0)
		virtq_free(q, (uint16_t)id);
	return id == head ? 0 : -1;
}
