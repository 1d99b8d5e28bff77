/*
 * hostile: the random campaign (tg.seed=N, tg.steps=M, default 1000).
 * A seeded xorshift64* PRNG picks, M times, a virtio device and one of:
 *
 *   mmio     a read or write of 1, 2, 4 or 8 bytes at a random offset in
 *            0..0x1ff (half the time a known register or config space)
 *   status   a reset storm, a full (re)initialisation with random
 *            features, queue sizes and ready bits, one with the rings
 *            outside RAM, a partial one, random status values, FAILED
 *   chain    a random descriptor chain on a random queue, then notify
 *   request  a valid-looking request for the device type, then notify
 *
 * and prints "HOSTILE-STEP <n>" every 100 steps, then
 * "HOSTILE-DONE seed=<N> steps=<M>" and resets through the i8042.
 *
 * Memory the device may write must be scratch or not RAM at all, whatever
 * the device reads and however it interleaves with the guest's writes:
 *
 *  - scratch (dma): device-writable buffers, in [0, SCR_SPAN) with at
 *    most R_MAX_LEN bytes each (SCR_SPAN + R_MAX_LEN = SCR_BUF), then the
 *    used rings. The guest reads nothing there but used indexes (never
 *    trusted beyond that).
 *  - control (dma): descriptor tables, avail rings, request headers,
 *    segments, random data, indirect tables: only ever device-readable.
 *  - outside RAM: 1 TiB and up, 0xc0000000-0xcfffffff (below the virtio
 *    windows), the 4 GiB crossing, wrapping and non-canonical addresses
 *    (the campaign assumes guest RAM of at most 3 GiB).
 *
 * A device reads a descriptor while the guest may be rewriting it, so a
 * descriptor slot's class is fixed by its index (i & 3) and every mix of
 * fields of two descriptors of one class is still safe:
 *   0 H  device-readable: never WRITE or INDIRECT; any address, any length
 *   1 R  address in scratch [0, SCR_SPAN), length <= R_MAX_LEN, NEXT/WRITE
 *   2 O  address outside RAM; any length, any flags
 *   3 I  INDIRECT: one of the indirect tables (or outside RAM), length
 *        <= 4096 (one table)
 * Indirect tables (4 KiB, 256 descriptors each, every one safe on its own,
 * some INDIRECT again) are written once before any device is activated
 * and never change. Queue addresses take effect at DRIVER_OK only: every
 * status write that sets DRIVER_OK is preceded by writing all queue
 * registers (32-bit) with the campaign's own rings or outside-RAM
 * addresses, random MMIO writes never set DRIVER_OK (bit 2 is cleared in
 * every byte of any write that touches the Status register), and random
 * 32-bit writes to the queue address registers use values whose every
 * low/high combination is control memory (desc), any owned memory
 * (avail), scratch (used), or outside RAM.
 */
#include <stdint.h>

#include "cmdline.h"
#include "hostile.h"
#include "io.h"
#include "layout.h"
#include "machine.h"
#include "serial.h"
#include "string.h"
#include "virtio_mmio.h"
#include "virtq.h"

#define NDEV_MAX 8
#define NQ 3
#define QMAX 256                     /* entries of every table and ring */
#define SCR_SPAN (192u << 10)        /* R addresses: scratch + [0, SPAN) */
#define R_MAX_LEN (64u << 10)
#define SCR_BUF (SCR_SPAN + R_MAX_LEN)
#define USED_STRIDE 4096             /* used ring (<= 2056 bytes) per queue */
#define NTABLE 8
#define TABLE_LEN (QMAX * 16)
#define HDR_POOL (16u << 10)         /* headers, segments, frames */
#define HDR_FIXED 512                /* the fixed requests of tables 0-2 */
#define CHUNK 64
#define DATA_POOL (16u << 10)        /* random bytes */
#define GAP_START 0xc0000000ull      /* MMIO gap: no RAM, no device */
#define GAP_LEN 0x10000000u          /* up to the virtio windows */

#define F_NEXT VIRTQ_DESC_F_NEXT
#define F_WRITE VIRTQ_DESC_F_WRITE
#define F_INDIRECT 4

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_T_DISCARD 11
#define BLK_T_WRITE_ZEROES 13

enum { C_H, C_R, C_O, C_I };

struct rq {
	volatile struct virtq_desc *desc;  /* QMAX, control memory */
	volatile uint16_t *avail;          /* flags, idx, ring[QMAX], used_event */
	volatile struct virtq_used *used;  /* scratch */
	uint16_t max;                      /* QueueNumMax (<= QMAX), 0: none */
	uint16_t size;                     /* size last programmed */
	uint16_t avail_idx;
};

struct rdev {
	struct virtio_mmio_dev *d;
	int nq, active;
	uint64_t cap, cid;
	struct rq q[NQ];
};

static struct rdev rdev[NDEV_MAX] HX_NOINIT;
static int nrdev;
static uint8_t *scratch, *hdr_pool, *data_pool;
static volatile struct virtq_desc *tables;
static uint64_t rng;
static unsigned chunk_next;

/* ---- PRNG (xorshift64*, seeded through splitmix64) ---------------------- */

static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static uint32_t below(uint32_t n)
{
	return (uint32_t)(((rnd() >> 32) * (uint64_t)n) >> 32);
}

static int chance(uint32_t n) /* 1 in n */
{
	return below(n) == 0;
}

static void seed_rng(uint64_t seed)
{
	uint64_t z = seed + 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	rng = (z ^ (z >> 31)) | 1;
}

/* ---- addresses and lengths ------------------------------------------------ */

/* Not RAM (guest RAM <= 3 GiB). */
static uint64_t a_out(void)
{
	switch (below(7)) {
	case 0: return 0xfff00000000ull + ((uint64_t)below(1u << 20) << 12);
	case 1: return GAP_START + below(GAP_LEN);
	case 2: return 0x100000000ull - 1 - below(64);   /* crosses 4 GiB */
	case 3: return 0xfffffffffffff000ull + below(4096); /* wraps */
	case 4: return 1ull << 63;
	case 5: return 0x800000000000ull - 1 - below(64);   /* non-canonical */
	default: return rnd() | (1ull << 40);
	}
}

/* Device-writable: scratch + [0, SCR_SPAN); a quarter straddle a page
 * boundary, a quarter are page-aligned. */
static uint64_t a_w(void)
{
	uint32_t off;

	switch (below(4)) {
	case 0: off = below(SCR_SPAN / 4096) * 4096 + 4095 - below(64); break;
	case 1: off = below(SCR_SPAN / 4096) * 4096; break;
	default: off = below(SCR_SPAN); break;
	}
	return (uint64_t)scratch + off;
}

/* Device-readable: anywhere in RAM, own code and low memory included. */
static uint64_t a_read(void)
{
	switch (below(6)) {
	case 0: return (uint64_t)hdr_pool + below(HDR_POOL);
	case 1: return (uint64_t)data_pool + below(DATA_POOL);
	case 2: return (uint64_t)scratch + below(SCR_BUF);
	case 3: return TG_LOAD_ADDR + below(1u << 16);
	case 4: return below(4096);
	default: return (uint64_t)tables + below(NTABLE * TABLE_LEN);
	}
}

static uint64_t a_table(void)
{
	return (uint64_t)(tables + below(NTABLE) * QMAX);
}

static uint32_t len_r(void) /* <= R_MAX_LEN */
{
	switch (below(6)) {
	case 0: return 0;
	case 1: return 1 + below(64);
	case 2: return 512 * (1 + below(R_MAX_LEN / 512));
	case 3: return R_MAX_LEN;
	default: return below(R_MAX_LEN + 1);
	}
}

static uint32_t len_any(void)
{
	switch (below(7)) {
	case 0: return 0;
	case 1: return 0xffffffffu;
	case 2: return 0x80000000u + below(1u << 20);
	case 3: return (1u << 20) + below(1u << 20);
	case 4: return 65536 + below(4096);
	case 5: return 1 + below(256);
	default: return below(65536);
	}
}

static uint32_t len_indirect(void) /* <= one table */
{
	switch (below(6)) {
	case 0: return 0;
	case 1: return 16;
	case 2: return 16 * below(QMAX + 1);
	case 3: return TABLE_LEN;
	case 4: return 1 + below(TABLE_LEN);     /* not a multiple of 16 */
	default: return 16 * (1 + below(8));
	}
}

static uint16_t next_index(uint16_t size)
{
	switch (below(8)) {
	case 0: return (uint16_t)rnd();          /* out of range, mostly */
	case 1: return size;
	default: return (uint16_t)below(size);
	}
}

/* A random descriptor of class cls (see the top of the file). Field by
 * field: any mix with another descriptor of this class is safe. */
static void desc_fill(volatile struct virtq_desc *d, unsigned cls, uint16_t size)
{
	uint64_t addr;
	uint32_t len;
	uint16_t flags;

	switch (cls) {
	case C_H:
		addr = chance(4) ? a_out() : a_read();
		len = len_any();
		flags = (uint16_t)(rnd() & F_NEXT);
		break;
	case C_R:
		addr = a_w();
		len = len_r();
		flags = (uint16_t)(rnd() & (F_NEXT | F_WRITE));
		break;
	case C_O:
		addr = a_out();
		len = len_any();
		flags = (uint16_t)rnd();
		break;
	default:
		addr = chance(8) ? a_out() : a_table();
		len = len_indirect();
		flags = (uint16_t)(F_INDIRECT | (rnd() & (F_NEXT | F_WRITE)));
		break;
	}
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next_index(size);
}

/* Device-readable bytes the guest fills (headers, segments, frames):
 * n consecutive 64-byte chunks of the header pool, round robin. */
static uint8_t *chunk(unsigned n)
{
	const unsigned total = (HDR_POOL - HDR_FIXED) / CHUNK;

	if (chunk_next + n > total)
		chunk_next = 0;
	chunk_next += n;
	return hdr_pool + HDR_FIXED + (chunk_next - n) * CHUNK;
}

/* ---- setup ---------------------------------------------------------------- */

static int dev_queues(uint32_t id)
{
	return id == VIRTIO_ID_NET ? 2 : id == VIRTIO_ID_VSOCK ? 3 : 1;
}

/* Tables 0-2 start with a valid request: blk read of sector 0, a vsock
 * REQUEST to host port 5000, a 60-byte net frame. */
static void tables_fill(uint64_t cid)
{
	uint8_t *fixed = hdr_pool;
	uint32_t *h;

	memset(fixed, 0, HDR_FIXED);
	/* blk header (type IN, sector 0) at +0 */
	h = (uint32_t *)(fixed + 128); /* vsock header */
	h[0] = (uint32_t)cid;
	h[2] = 2;
	h[4] = 1234;
	h[5] = 5000;
	h[7] = 1 | (1u << 16);         /* type STREAM, op REQUEST */
	h[9] = 65536;                  /* buf_alloc */
	memset(fixed + 256 + 12, 0xff, 6); /* net: broadcast, from 02:..:01 */
	fixed[256 + 18] = 2;
	fixed[256 + 23] = 1;
	fixed[256 + 24] = 0x88;            /* local experimental ethertype */
	fixed[256 + 25] = 0xb5;

	for (unsigned i = 0; i < NTABLE * QMAX; i++)
		desc_fill(&tables[i], below(4), QMAX);
	tables[0] = (struct virtq_desc){ (uint64_t)fixed, 16, F_NEXT, 1 };
	tables[1] = (struct virtq_desc){ (uint64_t)scratch, 512, F_WRITE | F_NEXT, 2 };
	tables[2] = (struct virtq_desc){ (uint64_t)scratch + 1024, 1, F_WRITE, 0 };
	tables[QMAX] = (struct virtq_desc){ (uint64_t)fixed + 128, 44, 0, 0 };
	tables[2 * QMAX] = (struct virtq_desc){ (uint64_t)fixed + 256, 12 + 60, 0, 0 };
}

static int setup(void)
{
	uint64_t cid = 3;

	hx_discover();
	if (!(scratch = dma_alloc(SCR_BUF + NDEV_MAX * NQ * USED_STRIDE)) ||
	    !(tables = dma_alloc(NTABLE * TABLE_LEN)) ||
	    !(hdr_pool = dma_alloc(HDR_POOL)) ||
	    !(data_pool = dma_alloc(DATA_POOL)))
		return -1;
	/* Random bytes: what blk writes from, so a write shows on disk. */
	for (unsigned i = 0; i < DATA_POOL / 8; i++)
		((uint64_t *)data_pool)[i] = rnd();
	for (unsigned i = 0; i < SCR_BUF / 8; i++)
		((uint64_t *)scratch)[i] = rnd();
	nrdev = 0;
	chunk_next = 0;
	for (int i = 0; i < hx_ndev && nrdev < NDEV_MAX; i++) {
		struct virtio_mmio_dev *d = &hx_dev[i];
		struct rdev *r = &rdev[nrdev];

		if (!d->device_id)
			continue;
		r->d = d;
		r->active = 0;
		r->nq = dev_queues(d->device_id);
		r->cap = r->cid = 0;
		if (d->device_id == VIRTIO_ID_BLOCK)
			r->cap = virtio_mmio_config64(d, 0);
		if (d->device_id == VIRTIO_ID_VSOCK)
			cid = r->cid = virtio_mmio_config64(d, 0);
		hx_wr(d, VMMIO_STATUS, 0);
		for (int q = 0; q < NQ; q++) {
			struct rq *x = &r->q[q];
			x->max = q < r->nq ? hx_queue_size(d, (uint32_t)q, QMAX) : 0;
			x->size = x->avail_idx = 0;
			x->used = (volatile struct virtq_used *)(scratch + SCR_BUF +
				(unsigned)(nrdev * NQ + q) * USED_STRIDE);
			if (!(x->desc = dma_alloc(TABLE_LEN)) ||
			    !(x->avail = dma_alloc(4096)))
				return -1;
		}
		nrdev++;
	}
	tables_fill(cid);
	for (int k = 0; k < nrdev; k++)
		for (int q = 0; q < NQ; q++)
			for (unsigned i = 0; i < QMAX; i++)
				desc_fill(&rdev[k].q[q].desc[i], i & 3, QMAX);
	return 0;
}

/* ---- status and queue programming ---------------------------------------- */

/* Writes every queue register of queues 0..7 (32-bit writes): the
 * campaign's own rings (outside: addresses outside RAM). Only takes
 * effect between FEATURES_OK and DRIVER_OK; harmless otherwise. */
static void program_queues(struct rdev *r, int outside)
{
	struct virtio_mmio_dev *d = r->d;

	for (uint32_t q = 0; q < 8; q++) {
		struct rq *x = q < NQ ? &r->q[q] : NULL;
		uint16_t size = 1;

		hx_wr(d, VMMIO_QUEUE_SEL, q);
		if (x && x->max) {
			size = chance(2) ? x->max : (uint16_t)(1u << below(9));
			while (size > x->max)
				size >>= 1;
			x->size = size;
			x->avail_idx = 0;
			x->avail[0] = chance(2) ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0;
			x->avail[1] = 0;
			x->avail[2 + size] = 0;   /* used_event */
			x->used->flags = 0;
			x->used->idx = 0;
		}
		hx_wr(d, VMMIO_QUEUE_NUM, size);
		if (x && x->max && !outside) {
			hx_wr64(d, VMMIO_QUEUE_DESC, (uint64_t)x->desc);
			hx_wr64(d, VMMIO_QUEUE_AVAIL, (uint64_t)x->avail);
			hx_wr64(d, VMMIO_QUEUE_USED, (uint64_t)x->used);
		} else {
			hx_wr64(d, VMMIO_QUEUE_DESC, a_out() & ~15ull);
			hx_wr64(d, VMMIO_QUEUE_AVAIL, a_out() & ~1ull);
			hx_wr64(d, VMMIO_QUEUE_USED, a_out() & ~3ull);
		}
		hx_wr(d, VMMIO_QUEUE_READY, chance(8) ? 0 : 1);
	}
}

static uint64_t offered(struct virtio_mmio_dev *d)
{
	uint64_t f;

	hx_wr(d, VMMIO_DEVICE_FEAT_SEL, 1);
	f = (uint64_t)hx_rd(d, VMMIO_DEVICE_FEATURES) << 32;
	hx_wr(d, VMMIO_DEVICE_FEAT_SEL, 0);
	return f | hx_rd(d, VMMIO_DEVICE_FEATURES);
}

static void note_active(struct rdev *r, int ours)
{
	uint32_t st = hx_rd(r->d, VMMIO_STATUS);

	r->active = ours && (st & VIRTIO_STATUS_DRIVER_OK) &&
		    !(st & VIRTIO_STATUS_NEEDS_RESET);
}

/* Reset, random features, queues, DRIVER_OK. */
static void activate(struct rdev *r, int outside)
{
	struct virtio_mmio_dev *d = r->d;
	const uint32_t s = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;
	uint64_t f = (offered(d) & rnd()) | VIRTIO_F_VERSION_1;

	if (chance(8))
		f |= 1ull << below(64);      /* perhaps not offered */
	r->active = 0;
	hx_wr(d, VMMIO_STATUS, 0);
	hx_wr(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	hx_wr(d, VMMIO_STATUS, s);
	hx_wr(d, VMMIO_DRIVER_FEAT_SEL, 1);
	hx_wr(d, VMMIO_DRIVER_FEATURES, (uint32_t)(f >> 32));
	hx_wr(d, VMMIO_DRIVER_FEAT_SEL, 0);
	hx_wr(d, VMMIO_DRIVER_FEATURES, (uint32_t)f);
	hx_wr(d, VMMIO_STATUS, s | VIRTIO_STATUS_FEATURES_OK);
	if (!(hx_rd(d, VMMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return;
	program_queues(r, outside);
	hx_wr(d, VMMIO_STATUS, s | VIRTIO_STATUS_FEATURES_OK |
				       VIRTIO_STATUS_DRIVER_OK);
	note_active(r, !outside);
}

static void step_status(struct rdev *r)
{
	struct virtio_mmio_dev *d = r->d;
	const uint32_t steps[] = { VIRTIO_STATUS_ACKNOWLEDGE,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
			VIRTIO_STATUS_FEATURES_OK };
	unsigned n;

	switch (below(6)) {
	case 0: /* reset storm */
		for (n = 2 + below(7); n; n--)
			hx_wr(d, VMMIO_STATUS, 0);
		r->active = 0;
		break;
	case 1:
	case 2:
		activate(r, 0);
		break;
	case 3:
		activate(r, 1);  /* rings outside RAM */
		break;
	case 4: /* partial initialisation, perhaps skipping a step */
		hx_wr(d, VMMIO_STATUS, 0);
		for (n = below(4); n < 3 && !chance(3); n++)
			hx_wr(d, VMMIO_STATUS, steps[chance(4) ? below(3) : n]);
		r->active = 0;
		break;
	default: /* random values: FAILED, NEEDS_RESET, DRIVER_OK early ... */
		for (n = 1 + below(4); n; n--) {
			uint32_t v = chance(4) ? (uint32_t)rnd() : below(256);
			if (v & VIRTIO_STATUS_DRIVER_OK)
				program_queues(r, 0);
			hx_wr(d, VMMIO_STATUS, v);
		}
		note_active(r, 1);
		break;
	}
}

/* ---- random register access ------------------------------------------------- */

static const uint16_t regs[] = {
	0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034,
	0x038, 0x044, 0x050, 0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094,
	0x0a0, 0x0a4, 0x0b0, 0x0b8, 0x0fc, 0x100, 0x104, 0x108, 0x110, 0x138,
};

/* A 32-bit value for a queue address register: every low/high
 * combination is control memory (desc), owned memory (avail), scratch
 * (used) or outside RAM. */
static uint32_t addr_reg_value(struct rdev *r, uint32_t off)
{
	struct rq *x = &r->q[below((uint32_t)r->nq)];

	if (off & 4) /* high half: below 4 GiB or 1 TiB and up */
		return chance(2) ? 0 : 0x100 + below(0xffffff00u);
	if (chance(3)) /* the gap, sometimes misaligned */
		return (uint32_t)(GAP_START + below(GAP_LEN));
	switch (off) { /* low half */
	case VMMIO_QUEUE_DESC:
		return (uint32_t)(chance(2) ? (uint64_t)x->desc : a_table());
	case VMMIO_QUEUE_AVAIL:
		return (uint32_t)(chance(2) ? (uint64_t)x->avail : a_read()) & ~1u;
	default:
		return (uint32_t)(chance(2) ? (uint64_t)x->used :
			(uint64_t)scratch + below(SCR_BUF + NDEV_MAX * NQ *
						  USED_STRIDE - 4096)) & ~3u;
	}
}

static void step_mmio(struct rdev *r)
{
	uint32_t off = chance(2) ? regs[below(sizeof(regs) / sizeof(regs[0]))]
				 : below(0x200);
	unsigned width = 1u << below(4);
	uint64_t v = rnd();

	if (chance(2)) {
		(void)hx_mmio_read(r->d->base + off, width);
		return;
	}
	/* 0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4 */
	if (width == 4 && off >= VMMIO_QUEUE_DESC &&
	    off <= VMMIO_QUEUE_USED + 4 && !(off & 3) && !(off & 8))
		v = addr_reg_value(r, off);
	if (width == 4 && off == VMMIO_QUEUE_NUM) {
		static const uint32_t nums[] = { 0, 1, 2, 3, 16, 256, 0x10000,
						 0xffffffffu };
		v = nums[below(8)];
	}
	/* Anything that may reach the Status register: no DRIVER_OK in any
	 * byte (whether a VMM merges bytes or rounds the offset down). */
	if (off < VMMIO_STATUS + 4 && off + width > VMMIO_STATUS) {
		v &= ~0x0404040404040404ull;
		r->active = 0; /* perhaps a reset */
	}
	hx_mmio_write(r->d->base + off, width, v);
}

/* ---- chains and requests ---------------------------------------------------- */

static void post(struct rq *x, uint16_t head)
{
	x->avail[2 + x->avail_idx % x->size] = head;
	x->avail_idx = (uint16_t)(x->avail_idx + (chance(32) ? below(65536) : 1));
	x->avail[1] = x->avail_idx;
}

static void notify(struct rdev *r, uint32_t q)
{
	hx_wr(r->d, VMMIO_QUEUE_NOTIFY, chance(16) ? below(16) : q);
}

/* A random slot of class cls (size >= 4). */
static uint16_t slot(struct rq *x, unsigned cls)
{
	return (uint16_t)(4 * below(x->size / 4u) + cls);
}

/* Links slot a to b (NEXT keeps both in their classes). */
static void link(struct rq *x, uint16_t a, uint16_t b)
{
	x->desc[a].next = b;
	x->desc[a].flags = (uint16_t)(x->desc[a].flags | F_NEXT);
}

static void last(struct rq *x, uint16_t a)
{
	x->desc[a].flags = (uint16_t)(x->desc[a].flags & ~F_NEXT);
}

static void step_chain(struct rdev *r)
{
	uint32_t qi = below((uint32_t)r->nq);
	struct rq *x = &r->q[qi];
	unsigned n = 1 + below(chance(8) ? 40 : 6);
	uint16_t first, prev, cur;

	if (!x->size)
		return;
	first = prev = (uint16_t)below(x->size);
	desc_fill(&x->desc[first], first & 3, x->size);
	for (unsigned k = 1; k < n; k++) {
		cur = (uint16_t)below(x->size);
		desc_fill(&x->desc[cur], cur & 3, x->size);
		link(x, prev, cur);
		prev = cur;
	}
	if (chance(4))
		link(x, prev, chance(2) ? first : next_index(x->size)); /* loop */
	else if (!chance(4))
		last(x, prev);
	post(x, chance(10) ? (uint16_t)(x->size + below(100)) : first);
	notify(r, qi);
}

/* Header slot h (class H) with len bytes of p. */
static void set_h(struct rq *x, uint16_t s, const void *p, uint32_t len)
{
	x->desc[s].addr = (uint64_t)p;
	x->desc[s].len = len;
	x->desc[s].flags = 0;
}

/* A device-writable (or readable) scratch buffer in R slot s. */
static void set_r(struct rq *x, uint16_t s, uint32_t len, int write)
{
	x->desc[s].addr = a_w();
	x->desc[s].len = len;
	x->desc[s].flags = write ? F_WRITE : 0;
}

static uint64_t pick_sector(uint64_t cap)
{
	switch (below(7)) {
	case 0: return 0;
	case 1: return cap ? cap - 1 : 0;
	case 2: return cap;
	case 3: return cap + below(1000);
	case 4: return ~0ull - below(100);
	case 5: return rnd();
	default: return cap ? rnd() % cap : 0;
	}
}

static void blk_request(struct rdev *r)
{
	static const uint32_t types[] = { BLK_T_IN, BLK_T_OUT, BLK_T_FLUSH,
		BLK_T_GET_ID, BLK_T_DISCARD, BLK_T_WRITE_ZEROES, 2, 3, 5, 7, 9,
		12, 14, 0x80000000u };
	struct rq *x = &r->q[0];
	uint32_t type = types[chance(4) ? below(14) : below(6)];
	uint32_t *h = (uint32_t *)chunk(1);
	uint16_t hs, ds, ss;

	if (x->size < 8) {
		step_chain(r);
		return;
	}
	h[0] = chance(16) ? (uint32_t)rnd() : type;
	h[1] = chance(8) ? (uint32_t)rnd() : 0;
	*(uint64_t *)&h[2] = pick_sector(r->cap);
	hs = slot(x, C_H);
	ss = slot(x, C_R);
	set_h(x, hs, h, chance(8) ? below(32) : 16);
	set_r(x, ss, chance(8) ? below(4) : 1, !chance(16));
	last(x, ss);
	switch (type) {
	case BLK_T_IN:
	case BLK_T_OUT:
	case BLK_T_GET_ID:
		ds = slot(x, C_R);
		if (ds == ss)
			ds = (uint16_t)((ds + 4) % x->size);
		set_r(x, ds, type == BLK_T_GET_ID ? (chance(2) ? 20 : len_r())
			     : chance(8) ? len_r() : 512 * (1 + below(128)),
		      (type != BLK_T_OUT) ^ chance(16));
		link(x, hs, ds);
		link(x, ds, ss);
		break;
	case BLK_T_DISCARD:
	case BLK_T_WRITE_ZEROES: {
		unsigned nseg = chance(8) ? 1 + below(32) : 1 + below(16);
		uint32_t *seg = (uint32_t *)chunk(8);   /* room for 32 */

		for (unsigned i = 0; i < nseg; i++) {
			*(uint64_t *)&seg[4 * i] = pick_sector(r->cap);
			seg[4 * i + 2] = chance(4) ? (uint32_t)rnd()
				       : below((uint32_t)r->cap + 1);
			seg[4 * i + 3] = chance(4) ? (uint32_t)rnd() : below(2);
		}
		ds = slot(x, C_H);
		if (ds == hs)
			ds = (uint16_t)((ds + 4) % x->size);
		set_h(x, ds, seg, chance(8) ? below(600) : 16 * nseg);
		link(x, hs, ds);
		link(x, ds, ss);
		break;
	}
	default: /* FLUSH, unknown: no data */
		link(x, hs, ss);
		break;
	}
	post(x, hs);
	notify(r, 0);
}

static void vsock_request(struct rdev *r)
{
	uint32_t u = below(100), data_len = 0;
	struct rq *x;
	uint16_t a, b;

	if (u < 60 && r->nq > 1 && r->q[1].size >= 8) { /* tx: bogus packet */
		static const uint16_t ports[] = { 5000, 1234, 0, 0xffff };
		uint32_t *h = (uint32_t *)chunk(1);
		uint64_t cid_choices[4] = { r->cid, 2, rnd(), 0 };

		x = &r->q[1];
		a = slot(x, C_H);
		if (!chance(3))
			data_len = chance(2) ? below(4097) : len_any() & 0x1ffff;
		*(uint64_t *)&h[0] = cid_choices[chance(3) ? below(4) : 0];
		*(uint64_t *)&h[2] = cid_choices[chance(3) ? below(4) : 1];
		h[4] = chance(2) ? ports[below(4)] : (uint32_t)rnd();
		h[5] = chance(2) ? ports[below(4)] : (uint32_t)rnd();
		h[6] = chance(2) ? data_len : chance(2) ? data_len + below(100)
						: (uint32_t)rnd();
		h[7] = (chance(4) ? (uint32_t)rnd() & 0xffff : 1) |
		       (below(9) << 16);                 /* type | op */
		h[8] = chance(4) ? (uint32_t)rnd() : 0;  /* flags */
		h[9] = (uint32_t)rnd();                  /* buf_alloc */
		h[10] = (uint32_t)rnd();                 /* fwd_cnt */
		set_h(x, a, h, chance(8) ? below(64) : 44);
		if (data_len) {
			b = slot(x, chance(2) ? C_H : C_R);
			if (b == a)
				b = (uint16_t)((b + 4) % x->size);
			if ((b & 3) == C_H)
				set_h(x, b, data_pool + below(DATA_POOL), data_len);
			else
				set_r(x, b, data_len < R_MAX_LEN ? data_len : R_MAX_LEN, 0);
			link(x, a, b);
			last(x, b);
		} else {
			last(x, a);
		}
		post(x, a);
		notify(r, 1);
	} else if (r->nq > 2 && r->q[u < 85 ? 0 : 2].size >= 4) { /* rx, event buffers */
		static const uint32_t lens[] = { 44 + 4096, 44, 20, 0, R_MAX_LEN, 8, 4 };
		uint32_t q = u < 85 ? 0 : 2;

		x = &r->q[q];
		a = slot(x, C_R);
		set_r(x, a, lens[q ? 5 + below(2) : below(5)], !chance(16));
		last(x, a);
		post(x, a);
		notify(r, q);
	} else {
		step_chain(r);
	}
}

static void net_request(struct rdev *r)
{
	struct rq *x;
	uint16_t a, b;

	if (r->nq < 2 || r->q[0].size < 8 || r->q[1].size < 8) {
		step_chain(r);
		return;
	}
	if (chance(3)) { /* rx buffer */
		static const uint32_t lens[] = { 100, 1526, R_MAX_LEN, 12, 0, 1514 + 12 + 4 };
		x = &r->q[0];
		a = slot(x, C_R);
		set_r(x, a, lens[below(6)], !chance(16));
		last(x, a);
		post(x, a);
		notify(r, 0);
		return;
	}
	/* tx: virtio-net header + Ethernet header in a chunk, payload from
	 * the random data (any length: past the pool it reads guest RAM). */
	uint8_t *f = chunk(1);
	for (unsigned i = 0; i < CHUNK; i += 8)
		*(uint64_t *)(f + i) = rnd();
	if (!chance(4))
		memset(f, 0, 12);                    /* plain virtio-net header */
	x = &r->q[1];
	a = slot(x, C_H);
	set_h(x, a, f, chance(4) ? below(CHUNK + 1) : CHUNK);
	if (chance(2)) {
		b = slot(x, C_H);
		if (b == a)
			b = (uint16_t)((b + 4) % x->size);
		set_h(x, b, data_pool + below(DATA_POOL),
		      chance(4) ? len_any() : below(1500));
		link(x, a, b);
		last(x, b);
	} else {
		last(x, a);
	}
	post(x, a);
	notify(r, 1);
}

static void step_request(struct rdev *r)
{
	switch (r->d->device_id) {
	case VIRTIO_ID_BLOCK: blk_request(r); break;
	case VIRTIO_ID_VSOCK: vsock_request(r); break;
	case VIRTIO_ID_NET: net_request(r); break;
	default: step_chain(r); break;
	}
}

/* ---- the campaign ------------------------------------------------------------ */

void hostile_random(uint64_t seed)
{
	uint64_t steps = cmdline_get_u64("tg.steps", 1000), s;
	struct line l;

	seed_rng(seed);
	if (setup()) {
		hx_error("random: out of memory", HX_NO_VALUE);
		nrdev = 0;
	}
	else if (!nrdev)
		hx_error("random: no virtio device", HX_NO_VALUE);
	hx_fired("random");
	for (s = 0; s < steps && nrdev; s++) {
		struct rdev *r = &rdev[below((uint32_t)nrdev)];
		uint32_t u = below(100);

		if (u < 30) {
			step_mmio(r);
		} else if (u < 42) {
			step_status(r);
		} else {
			if (r->active && chance(4))
				note_active(r, 1); /* NEEDS_RESET? */
			if (!r->active)
				activate(r, 0);
			if (r->active) {
				if (u < 70)
					step_chain(r);
				else
					step_request(r);
			}
		}
		if (chance(4))
			hx_sleep(); /* the device gets time to work */
		if ((s + 1) % 100 == 0)
			hx_say("HOSTILE-STEP ", s + 1);
	}
	line_init(&l);
	line_str(&l, "HOSTILE-DONE seed=");
	line_dec(&l, seed);
	line_str(&l, " steps=");
	line_dec(&l, s);
	line_send(&l);
	machine_reset();
}
