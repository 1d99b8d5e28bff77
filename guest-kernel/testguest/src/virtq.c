#include "virtq.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "string.h"

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
	memset(mem, 0, bytes);
	q->desc = (struct virtq_desc *)mem;
	q->avail = (struct virtq_avail *)(mem + avail_off);
	q->used = (volatile struct virtq_used *)(mem + used_off);
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
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

int virtq_submit(struct virtq *q, const struct virtq_buf *bufs, unsigned n)
{
	uint16_t head = q->free_head, i = head, last = head;

	if (!n || n > q->num_free)
		return -1;
	/* Free descriptors are already linked through .next: take n of them. */
	for (unsigned k = 0; k < n; k++) {
		struct virtq_desc *d = &q->desc[i];
		d->addr = (uint64_t)bufs[k].addr;
		d->len = bufs[k].len;
		d->flags = (uint16_t)((bufs[k].writable ? VIRTQ_DESC_F_WRITE : 0) |
				      (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		last = i;
		i = d->next;
	}
	q->free_head = q->desc[last].next;
	q->num_free = (uint16_t)(q->num_free - n);

	q->avail->ring[q->avail_idx & (q->size - 1)] = head;
	barrier(); /* ring entry before idx */
	q->avail_idx++;
	*(volatile uint16_t *)&q->avail->idx = q->avail_idx;
	return head;
}

void virtq_notify(const struct virtq *q)
{
	barrier();
	mmio_write32(q->notify, q->index);
}

int virtq_poll(struct virtq *q, uint32_t *len)
{
	uint16_t i, n = 1;

	if (q->used->idx == q->last_used)
		return -1;
	barrier(); /* idx before the element */
	struct virtq_used_elem e = q->used->ring[q->last_used & (q->size - 1)];
	q->last_used++;
	if (e.id >= q->size)
		return -1; /* a broken device; the chain is lost */
	*len = e.len;
	for (i = (uint16_t)e.id; q->desc[i].flags & VIRTQ_DESC_F_NEXT; n++)
		i = q->desc[i].next;
	q->desc[i].next = q->free_head;
	q->free_head = (uint16_t)e.id;
	q->num_free = (uint16_t)(q->num_free + n);
	return (int)e.id;
}

int virtq_wait(struct virtq *q, uint32_t timeout_ns, uint32_t *len)
{
	int id = virtq_poll(q, len);

	if (id >= 0)
		return id;
	lapic_timer_oneshot_masked(timeout_ns);
	for (;;) {
		if ((id = virtq_poll(q, len)) >= 0 || !lapic_timer_current())
			return id;
	}
}

int virtq_run(struct virtq *q, const struct virtq_buf *bufs, unsigned n,
	      uint32_t timeout_ns, uint32_t *len)
{
	int head = virtq_submit(q, bufs, n);

	if (head < 0)
		return -1;
	virtq_notify(q);
	return virtq_wait(q, timeout_ns, len) == head ? 0 : -1;
}
