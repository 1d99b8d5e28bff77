/*
 * hostile: a guest that attacks the VMM's virtio devices the way a hostile
 * tenant would, and reports on COM1 what it did (README.md, "hostile").
 *
 *   tg.attack=<name>          one targeted attack (table at the end)
 *   tg.seed=<N> [tg.steps=M]  the random campaign (hostile_random.c)
 *   tg.period_ms=<P>          heartbeat period (default 100)
 *
 * Every attack prints "HOSTILE-FIRED <name>" once it is set off, then
 * "HOSTILE-TICK <n>" every period forever; "HOSTILE-ERROR <detail>" for
 * anything unexpected in the guest's own setup (it then just ticks).
 * This file: dispatch, shared helpers, and the blk/net/log attacks;
 * hostile_vsock.c has the vsock ones.
 */
#include <stdint.h>

#include "cmdline.h"
#include "hostile.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"
#include "string.h"
#include "virtio_mmio.h"
#include "virtq.h"

#define DEFAULT_PERIOD_MS 100
#define MIB (1u << 20)

#define BLK_T_IN 0
#define BLK_T_WRITE_ZEROES 13
#define BLK_F_WRITE_ZEROES (1ull << 14)
#define BLK_CFG_MAX_WZ_SECTORS 48
#define BLK_CFG_MAX_WZ_SEG 52

struct blk_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

/* ---- shared helpers ---------------------------------------------------- */

struct virtio_mmio_dev hx_dev[VIRTIO_MMIO_MAX] HX_NOINIT;
int hx_ndev = -1;

void hx_discover(void)
{
	if (hx_ndev < 0)
		hx_ndev = virtio_mmio_discover(hx_dev, VIRTIO_MMIO_MAX);
}

struct virtio_mmio_dev *hx_find(uint32_t id, int nth, const char *what)
{
	struct virtio_mmio_dev *d;

	hx_discover();
	if (!(d = virtio_mmio_find(hx_dev, hx_ndev, id, nth)))
		hx_error(what, HX_NO_VALUE);
	return d;
}

void hx_say(const char *what, uint64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, what);
	if (v != HX_NO_VALUE)
		line_dec(&l, v);
	line_send(&l);
}

void hx_error(const char *what, uint64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, "HOSTILE-ERROR ");
	line_str(&l, what);
	if (v != HX_NO_VALUE)
		line_dec(&l, v);
	line_send(&l);
}

void hx_error2(const char *name, const char *what, uint64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, "HOSTILE-ERROR ");
	line_str(&l, name);
	line_str(&l, ": ");
	line_str(&l, what);
	if (v != HX_NO_VALUE)
		line_dec(&l, v);
	line_send(&l);
}

void hx_fired(const char *name)
{
	struct line l;

	line_init(&l);
	line_str(&l, "HOSTILE-FIRED ");
	line_str(&l, name);
	line_send(&l);
}

void hx_sleep(void)
{
	sti_hlt(); /* interrupts stay enabled (see scenario_hostile) */
}

void hx_heartbeat(void (*touch)(void), void (*poll)(void),
		  void (*report)(void))
{
	uint64_t period = cmdline_get_u64("tg.period_ms", DEFAULT_PERIOD_MS);
	uint64_t next, n = 0;
	struct line l;

	if (!period)
		period = DEFAULT_PERIOD_MS;
	next = tg_ticks + period;
	line_init(&l);
	for (;;) {
		hx_sleep();
		if (poll)
			poll();
		if ((int64_t)(tg_ticks - next) < 0)
			continue;
		if (touch)
			touch();
		line_str(&l, "HOSTILE-TICK ");
		line_dec(&l, ++n);
		line_send(&l);
		if (report)
			report();
		next += period;
		if ((int64_t)(tg_ticks - next) >= 0) /* stalled: no burst */
			next = tg_ticks + period;
	}
}

uint32_t hx_rd(const struct virtio_mmio_dev *d, uint32_t reg)
{
	return mmio_read32(d->base + reg);
}

void hx_wr(const struct virtio_mmio_dev *d, uint32_t reg, uint32_t v)
{
	mmio_write32(d->base + reg, v);
}

void hx_wr64(const struct virtio_mmio_dev *d, uint32_t reg, uint64_t v)
{
	hx_wr(d, reg, (uint32_t)v);
	hx_wr(d, reg + 4, (uint32_t)(v >> 32));
}

uint64_t hx_mmio_read(uint64_t addr, unsigned width)
{
	uint64_t v;
	uint32_t l;
	uint16_t w;
	uint8_t b;

	switch (width) {
	case 1:
		__asm__ volatile("movb (%1), %0" : "=q"(b) : "r"(addr) : "memory");
		return b;
	case 2:
		__asm__ volatile("movw (%1), %0" : "=r"(w) : "r"(addr) : "memory");
		return w;
	case 4:
		__asm__ volatile("movl (%1), %0" : "=r"(l) : "r"(addr) : "memory");
		return l;
	default:
		__asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(addr) : "memory");
		return v;
	}
}

void hx_mmio_write(uint64_t addr, unsigned width, uint64_t v)
{
	switch (width) {
	case 1:
		__asm__ volatile("movb %0, (%1)" : : "q"((uint8_t)v), "r"(addr) : "memory");
		break;
	case 2:
		__asm__ volatile("movw %0, (%1)" : : "r"((uint16_t)v), "r"(addr) : "memory");
		break;
	case 4:
		__asm__ volatile("movl %0, (%1)" : : "r"((uint32_t)v), "r"(addr) : "memory");
		break;
	default:
		__asm__ volatile("movq %0, (%1)" : : "r"(v), "r"(addr) : "memory");
		break;
	}
}

uint16_t hx_queue_size(struct virtio_mmio_dev *d, uint32_t q, uint16_t cap)
{
	uint32_t max, s = 1;

	hx_wr(d, VMMIO_QUEUE_SEL, q);
	max = hx_rd(d, VMMIO_QUEUE_NUM_MAX);
	if (!max)
		return 0;
	if (max > cap)
		max = cap;
	while (s * 2 <= max)
		s *= 2;
	return (uint16_t)s;
}

void hx_virtq_reset(struct virtq *q)
{
	q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	q->avail->idx = 0;
	q->used->flags = 0;
	q->used->idx = 0;
	for (uint16_t i = 0; i < q->size; i++)
		q->desc[i].next = (uint16_t)(i + 1);
	q->free_head = 0;
	q->num_free = q->size;
	q->avail_idx = 0;
	q->last_used = 0;
}

/* "HOSTILE-STATUS <dev> 0x<status>" */
static void status_line(const char *dev, const struct virtio_mmio_dev *d)
{
	struct line l;

	line_init(&l);
	line_str(&l, "HOSTILE-STATUS ");
	line_str(&l, dev);
	line_char(&l, ' ');
	line_hex(&l, hx_rd(d, VMMIO_STATUS));
	line_send(&l);
}

/* The tick's device access of the aliased-ring and vsock attacks. */
static struct virtio_mmio_dev *touch_dev;
static uint32_t touch_queue;
static int touch_isr;

static void touch_notify(void)
{
	hx_wr(touch_dev, VMMIO_QUEUE_NOTIFY, touch_queue);
	if (touch_isr)
		(void)hx_rd(touch_dev, VMMIO_INTERRUPT_STATUS);
}

/* Heartbeat whose ticks notify queue q of d (and read InterruptStatus). */
void hx_tick_notify(struct virtio_mmio_dev *d, uint32_t q, int isr)
{
	touch_dev = d;
	touch_queue = q;
	touch_isr = isr;
	hx_heartbeat(touch_notify, NULL, NULL);
}

void hx_just_tick(void)
{
	hx_heartbeat(NULL, NULL, NULL);
}

/* ---- alias-blk, alias-net ---------------------------------------------- */

/*
 * Rings of `size` (<= 16) entries in one page, the used ring starting at
 * the avail ring + 2: used.flags is avail.idx, used.idx is avail.ring[0]
 * and the used elements lie over the rest of the avail ring. The avail
 * ring sits at page + 0x102 so that the used ring (page + 0x104) has the
 * 4-byte alignment the device checks.
 */
static int alias_queue(struct virtq *q, uint16_t size)
{
	uint8_t *page = dma_alloc(4096);

	if (!page || size > 16)
		return -1;
	q->desc = (struct virtq_desc *)page;
	q->avail = (struct virtq_avail *)(page + 0x102);
	q->used = (volatile struct virtq_used *)(page + 0x104);
	q->size = size;
	hx_virtq_reset(q);
	return 0;
}

static void attack_alias_blk(void)
{
	static struct virtq q HX_NOINIT;
	struct virtio_mmio_dev *d = hx_find(VIRTIO_ID_BLOCK, 0, "no virtio-blk device");
	struct blk_hdr *h;
	uint8_t *buf;
	int e;

	if (!d)
		hx_just_tick();
	if ((e = virtio_mmio_init(d, 0))) {
		hx_error("alias-blk: init failed, err=", (uint64_t)-e);
		hx_just_tick();
	}
	if (alias_queue(&q, 16) || !(buf = dma_alloc(4096))) {
		hx_error("alias-blk: out of memory", HX_NO_VALUE);
		hx_just_tick();
	}
	if ((e = virtio_mmio_setup_queue(d, 0, &q))) {
		hx_error("alias-blk: queue setup failed, err=", (uint64_t)-e);
		hx_just_tick();
	}
	h = (struct blk_hdr *)buf;
	*h = (struct blk_hdr){ BLK_T_IN, 0, 0 };
	buf[16] = 0xff; /* status */
	virtq_submit(&q, (const struct virtq_buf[]){
		{ h, sizeof(*h), 0 },
		{ buf + 512, 512, VIRTQ_DESC_F_WRITE },
		{ buf + 16, 1, VIRTQ_DESC_F_WRITE } }, 3);
	virtio_mmio_driver_ok(d); /* the status line says what happened */
	status_line("blk", d);
	virtq_notify(&q);
	hx_fired("alias-blk");
	hx_tick_notify(d, 0, 1);
}

/* A 60-byte broadcast ARP request after a zero 12-byte virtio-net header. */
static void arp_frame(uint8_t *p)
{
	static const uint8_t frame[42] = {
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff,     /* dst */
		0x02, 0x00, 0x00, 0x00, 0x00, 0x01,     /* src */
		0x08, 0x06,                             /* ARP */
		0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
		0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 2,
		0, 0, 0, 0, 0, 0, 10, 0, 0, 1,
	};

	memset(p, 0, 12 + 60);
	memcpy(p + 12, frame, sizeof(frame));
}

static void attack_alias_net(void)
{
	static struct virtq rxq HX_NOINIT, txq HX_NOINIT;
	struct virtio_mmio_dev *d = hx_find(VIRTIO_ID_NET, 0, "no virtio-net device");
	uint8_t *buf;
	int e;

	if (!d)
		hx_just_tick();
	if ((e = virtio_mmio_init(d, 0))) {
		hx_error("alias-net: init failed, err=", (uint64_t)-e);
		hx_just_tick();
	}
	if (virtq_init(&rxq, 16) || alias_queue(&txq, 16) ||
	    !(buf = dma_alloc(4096))) {
		hx_error("alias-net: out of memory", HX_NO_VALUE);
		hx_just_tick();
	}
	if ((e = virtio_mmio_setup_queue(d, 0, &rxq)) ||
	    (e = virtio_mmio_setup_queue(d, 1, &txq))) {
		hx_error("alias-net: queue setup failed, err=", (uint64_t)-e);
		hx_just_tick();
	}
	arp_frame(buf);
	virtq_submit(&txq, &(struct virtq_buf){ buf, 12 + 60, 0 }, 1);
	virtio_mmio_driver_ok(d);
	status_line("net", d);
	virtq_notify(&txq);
	hx_fired("alias-net");
	hx_tick_notify(d, 1, 1);
}

/* ---- blk-flood, zeroes: keep a blk queue full of requests -------------- */

static struct {
	struct virtq q;
	unsigned per, nreq;       /* descriptors per request, requests */
	volatile uint8_t *status; /* status byte of request i: status[i] */
	uint64_t done, reported;
	int last_status;
	int each;                 /* print every completion (zeroes) */
	const char *done_line, *status_line;
} rf HX_NOINIT;

static void rf_poll(void)
{
	uint32_t len;
	int id, kick = 0;

	/* At most one queue's worth per call: the heartbeat must get its
	 * turn even if the device completes as fast as we repost. */
	for (unsigned k = 0; k < rf.q.size && (id = virtq_poll(&rf.q, &len)) >= 0; k++) {
		unsigned i = (unsigned)id / rf.per;
		int st;

		if ((unsigned)id % rf.per || i >= rf.nreq) {
			hx_error("used element with a foreign head ", (uint64_t)id);
			continue;
		}
		st = rf.status[i];
		if (st != rf.last_status) {
			hx_say(rf.status_line, (uint64_t)st);
			rf.last_status = st;
		}
		rf.done++;
		if (rf.each)
			hx_say(rf.done_line, rf.done);
		rf.status[i] = 0xff;
		virtq_repost(&rf.q, (uint16_t)id);
		kick = 1;
	}
	if (kick)
		virtq_notify(&rf.q);
}

static void rf_report(void)
{
	if (!rf.each && rf.done != rf.reported) {
		hx_say(rf.done_line, rf.done);
		rf.reported = rf.done;
	}
}

/* First disk, VERSION_1 (+ wanted), queue 0 at its largest size (<= 256).
 * Returns the device, or NULL after HOSTILE-ERROR. */
static struct virtio_mmio_dev *rf_open(const char *name, uint64_t wanted)
{
	struct virtio_mmio_dev *d = hx_find(VIRTIO_ID_BLOCK, 0, "no virtio-blk device");
	uint16_t size;
	int e;

	if (!d)
		return NULL;
	if ((e = virtio_mmio_init(d, wanted))) {
		hx_error2(name, "init failed, err=", (uint64_t)-e);
		return NULL;
	}
	size = hx_queue_size(d, 0, 256);
	if (!size || virtq_init(&rf.q, size) ||
	    (e = virtio_mmio_setup_queue(d, 0, &rf.q)) ||
	    (e = virtio_mmio_driver_ok(d))) {
		hx_error2(name, "queue setup or DRIVER_OK failed, err=", (uint64_t)-e);
		return NULL;
	}
	rf.last_status = -1;
	rf.done = rf.reported = 0;
	return d;
}

extern char __image_end[];

/* 8 MiB of guest RAM at the first 2 MiB boundary past the image (the
 * dma pool is too small); NULL if there is no RAM there. */
static uint8_t *flood_buffer(void)
{
	const uint64_t magic = 0x484f5354494c4521ull;
	uint64_t base = ((uint64_t)__image_end + 0x1fffff) & ~0x1fffffull;
	volatile uint64_t *last = (volatile uint64_t *)(base + 8 * MIB - 8);
	struct line l;

	*last = magic;
	if (*last == magic)
		return (uint8_t *)base;
	line_init(&l);
	line_str(&l, "HOSTILE-ERROR blk-flood: no guest RAM for 8 MiB at ");
	line_hex(&l, base);
	line_send(&l);
	return NULL;
}

static void attack_blk_flood(void)
{
	struct virtio_mmio_dev *d = rf_open("blk-flood", 0);
	uint64_t sector = cmdline_get_u64("tg.blk.sector", 0), cap;
	struct virtq_buf bufs[10];
	struct blk_hdr *hdr;
	uint8_t *page, *data;

	if (!d)
		hx_just_tick();
	cap = virtio_mmio_config64(d, 0);
	if (sector > cap || cap - sector < 8 * MIB / 512) {
		hx_error("blk-flood: the disk has fewer sectors past tg.blk.sector than 8 MiB: ", cap);
		hx_just_tick();
	}
	if (!(data = flood_buffer()))
		hx_just_tick();
	if (!(page = dma_alloc(4096))) {
		hx_error("blk-flood: out of memory", HX_NO_VALUE);
		hx_just_tick();
	}
	rf.per = 10; /* header, 8 x 1 MiB, status */
	rf.nreq = rf.q.size / rf.per;
	if (!rf.nreq) {
		hx_error("blk-flood: queue too small: ", rf.q.size);
		hx_just_tick();
	}
	rf.status = page + 2048;
	rf.each = 0;
	rf.done_line = "HOSTILE-FLOOD-DONE ";
	rf.status_line = "HOSTILE-FLOOD-STATUS ";
	hdr = (struct blk_hdr *)page;
	for (unsigned i = 0; i < rf.nreq; i++) {
		hdr[i] = (struct blk_hdr){ BLK_T_IN, 0, sector };
		rf.status[i] = 0xff;
		bufs[0] = (struct virtq_buf){ &hdr[i], sizeof(*hdr), 0 };
		for (unsigned k = 0; k < 8; k++)
			bufs[1 + k] = (struct virtq_buf){ data + k * MIB, MIB,
							  VIRTQ_DESC_F_WRITE };
		bufs[9] = (struct virtq_buf){ (const void *)&rf.status[i], 1,
					      VIRTQ_DESC_F_WRITE };
		virtq_submit(&rf.q, bufs, 10); /* head = 10 * i */
	}
	virtq_notify(&rf.q);
	hx_say("HOSTILE-FLOOD-REQUESTS ", rf.nreq);
	hx_fired("blk-flood");
	hx_heartbeat(NULL, rf_poll, rf_report);
}

static void attack_zeroes(void)
{
	struct virtio_mmio_dev *d = rf_open("zeroes", BLK_F_WRITE_ZEROES);
	uint64_t cap, n;
	uint32_t max_sectors, max_seg;
	struct blk_hdr *hdr;
	uint8_t *page;
	struct {
		uint64_t sector;
		uint32_t num_sectors, flags;
	} *seg;

	if (!d)
		hx_just_tick();
	if (!(d->features & BLK_F_WRITE_ZEROES))
		hx_error("zeroes: WRITE_ZEROES not offered (sending anyway)", HX_NO_VALUE);
	cap = virtio_mmio_config64(d, 0);
	max_sectors = virtio_mmio_config32(d, BLK_CFG_MAX_WZ_SECTORS);
	max_seg = virtio_mmio_config32(d, BLK_CFG_MAX_WZ_SEG);
	if (!max_sectors) {
		hx_error("zeroes: max_write_zeroes_sectors is 0, using the capacity", HX_NO_VALUE);
		max_sectors = 0xffffffffu;
	}
	if (max_seg < 16)
		hx_error("zeroes: max_write_zeroes_seg below 16: ", max_seg);
	n = cap < max_sectors ? cap : max_sectors;
	if (!(page = dma_alloc(4096))) {
		hx_error("zeroes: out of memory", HX_NO_VALUE);
		hx_just_tick();
	}
	hdr = (struct blk_hdr *)page;           /* shared by every request */
	*hdr = (struct blk_hdr){ BLK_T_WRITE_ZEROES, 0, 0 };
	seg = (void *)(page + 64);              /* 16 segments, shared */
	for (int i = 0; i < 16; i++) {
		seg[i].sector = 0;
		seg[i].num_sectors = (uint32_t)n;
		seg[i].flags = 0;
	}
	rf.per = 3; /* header, segments, status */
	rf.nreq = rf.q.size / rf.per;
	rf.status = page + 2048;
	rf.each = 1;
	rf.done_line = "HOSTILE-ZEROES-DONE ";
	rf.status_line = "HOSTILE-ZEROES-STATUS ";
	for (unsigned i = 0; i < rf.nreq; i++) {
		rf.status[i] = 0xff;
		virtq_submit(&rf.q, (const struct virtq_buf[]){
			{ hdr, sizeof(*hdr), 0 },
			{ seg, 16 * sizeof(*seg), 0 },
			{ (const void *)&rf.status[i], 1, VIRTQ_DESC_F_WRITE } }, 3);
	}
	virtq_notify(&rf.q);
	hx_say("HOSTILE-ZEROES-SECTORS ", n);
	hx_fired("zeroes");
	hx_heartbeat(NULL, rf_poll, NULL);
}

/* ---- net-rx-small ------------------------------------------------------ */

static struct virtq nrx HX_NOINIT;
static int nrx_head;

static void rxsmall_check(void)
{
	uint32_t len;
	int id, kick = 0;

	for (unsigned k = 0; k < nrx.size && (id = virtq_poll(&nrx, &len)) >= 0; k++) {
		hx_say("NET-RX len=", len);
		if (id != nrx_head) {
			hx_error("net-rx-small: used element with a foreign head ", (uint64_t)id);
			continue;
		}
		virtq_repost(&nrx, (uint16_t)id);
		kick = 1;
	}
	if (kick)
		virtq_notify(&nrx);
}

static void attack_net_rx_small(void)
{
	static struct virtq txq HX_NOINIT;
	struct virtio_mmio_dev *d = hx_find(VIRTIO_ID_NET, 0, "no virtio-net device");
	uint8_t *buf;
	int e;

	if (!d)
		hx_just_tick();
	if ((e = virtio_mmio_init(d, 0)) ||
	    (e = virtq_init(&nrx, 16) || virtq_init(&txq, 16) ? VMMIO_ERR_QUEUE : 0) ||
	    (e = virtio_mmio_setup_queue(d, 0, &nrx)) ||
	    (e = virtio_mmio_setup_queue(d, 1, &txq)) ||
	    (e = (buf = dma_alloc(4096)) ? 0 : VMMIO_ERR_QUEUE)) {
		hx_error("net-rx-small: setup failed, err=", (uint64_t)-e);
		hx_just_tick();
	}
	nrx_head = virtq_submit(&nrx, &(struct virtq_buf){ buf, 100,
				VIRTQ_DESC_F_WRITE }, 1);
	if ((e = virtio_mmio_driver_ok(d))) {
		hx_error("net-rx-small: DRIVER_OK failed, err=", (uint64_t)-e);
		hx_just_tick();
	}
	virtq_notify(&nrx);
	hx_fired("net-rx-small");
	hx_heartbeat(rxsmall_check, NULL, NULL);
}

/* ---- log-flood ----------------------------------------------------------- */

#define LF_QSIZE 16
#define LF_OUTSIDE 0xfff00000000ull /* no guest RAM there */

struct lf_dev {
	struct virtq q[3];
	uint8_t *buf;   /* one page: headers, status bytes */
	int nq;         /* queues with rings */
};

static struct lf_dev lf[VIRTIO_MMIO_MAX] HX_NOINIT;

enum { LF_WIDTH1, LF_WIDTH2, LF_WIDTH8, LF_BAD_STATUS, LF_RINGS_OUTSIDE,
       LF_HEAD_OOR, LF_MALFORMED, LF_UNKNOWN_REG, LF_ACTIONS };

static int lf_queues(uint32_t id)
{
	return id == VIRTIO_ID_NET ? 2 : id == VIRTIO_ID_VSOCK ? 3 : 1;
}

/* Rings, once per device (sizes from QueueNumMax, at most 16). */
static int lf_alloc(struct virtio_mmio_dev *d, struct lf_dev *x)
{
	int want = lf_queues(d->device_id);

	hx_wr(d, VMMIO_STATUS, 0);
	x->nq = 0;
	if (!(x->buf = dma_alloc(4096)))
		return -1;
	for (int i = 0; i < want; i++) {
		uint16_t size = hx_queue_size(d, (uint32_t)i, LF_QSIZE);
		if (!size || virtq_init(&x->q[i], size))
			break;
		x->nq = i + 1;
	}
	return 0;
}

/* Reset, negotiate VERSION_1, rings (reset to empty), DRIVER_OK. */
static int lf_setup(struct virtio_mmio_dev *d, struct lf_dev *x)
{
	if (virtio_mmio_init(d, 0))
		return -1;
	for (int i = 0; i < x->nq; i++) {
		hx_virtq_reset(&x->q[i]);
		if (virtio_mmio_setup_queue(d, (uint32_t)i, &x->q[i]))
			return -1;
	}
	return virtio_mmio_driver_ok(d);
}

/* Sleeps until q has n more used elements, or ms have passed. */
static void lf_wait(struct virtq *q, uint16_t n, unsigned ms)
{
	uint16_t want = (uint16_t)(q->last_used + n);
	uint64_t start = tg_ticks;

	while (q->used->idx != want && tg_ticks - start < ms)
		hx_sleep();
	q->last_used = q->used->idx;
}

static void lf_width(struct virtio_mmio_dev *d, unsigned width)
{
	(void)hx_mmio_read(d->base + VMMIO_STATUS, width);
	(void)hx_mmio_read(d->base + VMMIO_QUEUE_NUM_MAX, width);
	hx_mmio_write(d->base + VMMIO_QUEUE_SEL, width, 0);
	hx_mmio_write(d->base + VMMIO_STATUS + 1, width == 8 ? 4 : width, 0);
}

static void lf_bad_status(struct virtio_mmio_dev *d)
{
	const uint32_t a = VIRTIO_STATUS_ACKNOWLEDGE, dr = VIRTIO_STATUS_DRIVER,
		       fo = VIRTIO_STATUS_FEATURES_OK, ok = VIRTIO_STATUS_DRIVER_OK;

	hx_wr(d, VMMIO_STATUS, 0);
	hx_wr(d, VMMIO_STATUS, a);
	hx_wr(d, VMMIO_STATUS, a | ok);          /* DRIVER_OK before FEATURES_OK */
	hx_wr(d, VMMIO_STATUS, a | dr);
	hx_wr(d, VMMIO_STATUS, a | dr | fo);     /* VERSION_1 not acked: refused */
	hx_wr(d, VMMIO_STATUS, a | dr | fo | ok);
	hx_wr(d, VMMIO_STATUS, a | fo);          /* DRIVER dropped */
	hx_wr(d, VMMIO_DRIVER_FEAT_SEL, 1);
	hx_wr(d, VMMIO_STATUS, 0);
	hx_wr(d, VMMIO_STATUS, a);
	hx_wr(d, VMMIO_DRIVER_FEATURES, 1);     /* features before DRIVER */
}

static void lf_rings_outside(struct virtio_mmio_dev *d)
{
	uint16_t size = hx_queue_size(d, 0, LF_QSIZE);

	if (virtio_mmio_init(d, 0) || !size)
		return;
	hx_wr(d, VMMIO_QUEUE_SEL, 0);
	hx_wr(d, VMMIO_QUEUE_NUM, size);
	hx_wr64(d, VMMIO_QUEUE_DESC, LF_OUTSIDE);
	hx_wr64(d, VMMIO_QUEUE_AVAIL, LF_OUTSIDE + 0x1000);
	hx_wr64(d, VMMIO_QUEUE_USED, LF_OUTSIDE + 0x2000);
	hx_wr(d, VMMIO_QUEUE_READY, 1);
	virtio_mmio_driver_ok(d);
	(void)hx_rd(d, VMMIO_STATUS);
}

static void lf_head_oor(struct virtio_mmio_dev *d, struct lf_dev *x)
{
	int t = x->nq > 1 ? 1 : 0; /* blk 0; net, vsock: tx */
	struct virtq *q = &x->q[t];

	if (!x->nq || lf_setup(d, x))
		return;
	q->avail->ring[0] = (uint16_t)(q->size + 3);
	q->avail->ring[1] = 0xffff;
	q->avail_idx = 2;
	*(volatile uint16_t *)&q->avail->idx = 2;
	virtq_notify(q);
	lf_wait(q, 1, 2);
}

static void lf_malformed(struct virtio_mmio_dev *d, struct lf_dev *x)
{
	uint8_t *b = x->buf;
	struct virtq *q;
	uint16_t n = 2;

	if (!x->nq || lf_setup(d, x))
		return;
	memset(b, 0, 256);
	b[254] = b[255] = 0xff;
	if (d->device_id == VIRTIO_ID_BLOCK) {
		q = &x->q[0];
		*(struct blk_hdr *)b = (struct blk_hdr){ 0x7777, 0, 0 }; /* bad type */
		virtq_submit(q, (const struct virtq_buf[]){
			{ b, 16, 0 }, { b + 255, 1, VIRTQ_DESC_F_WRITE } }, 2);
		virtq_submit(q, (const struct virtq_buf[]){ /* header too short */
			{ b + 64, 8, 0 }, { b + 254, 1, VIRTQ_DESC_F_WRITE } }, 2);
	} else if (x->nq > 1) {
		/* net: shorter than the virtio-net header; device-writable
		 * tx buffer. vsock: shorter than the packet header; a header
		 * whose len promises data that is not there, with op 99. */
		q = &x->q[1];
		uint32_t *h = (uint32_t *)(b + 64);
		if (d->device_id == VIRTIO_ID_VSOCK) {
			h[0] = (uint32_t)virtio_mmio_config64(d, 0); /* src_cid */
			h[2] = 2;            /* dst_cid (low) */
			h[4] = 1234;         /* src_port */
			h[5] = 5000;         /* dst_port */
			h[6] = 100;          /* len */
			h[7] = 1 | (99u << 16); /* type 1, op 99 */
		}
		virtq_submit(q, &(struct virtq_buf){ b, 4, 0 }, 1);
		virtq_submit(q, &(struct virtq_buf){ b + 64, 44,
			     d->device_id == VIRTIO_ID_VSOCK ? 0 : VIRTQ_DESC_F_WRITE }, 1);
	} else {
		return;
	}
	virtq_notify(q);
	lf_wait(q, n, 10);
}

static void lf_unknown_reg(struct virtio_mmio_dev *d, unsigned i)
{
	static const uint16_t regs[] = { 0x00c, 0x040, 0x058, 0x0c0, 0x0f8,
					 0x008, 0x034, 0x060 };

	hx_wr(d, regs[i % 8], 0x12345678);
	hx_wr(d, regs[(i + 1) % 8], 0xffffffff);
}

static void attack_log_flood(void)
{
	uint64_t steps = cmdline_get_u64("tg.steps", 2000), s;
	int idx[VIRTIO_MMIO_MAX], n = 0;

	hx_discover();
	for (int i = 0; i < hx_ndev; i++) {
		if (!hx_dev[i].device_id)
			continue;
		if (lf_alloc(&hx_dev[i], &lf[i])) {
			hx_error("log-flood: out of memory", HX_NO_VALUE);
			break;
		}
		idx[n++] = i;
	}
	if (!n) {
		hx_error("log-flood: no virtio device", HX_NO_VALUE);
		hx_just_tick();
	}
	for (s = 0; s < steps; s++) {
		int i = idx[s % (uint64_t)n];
		struct virtio_mmio_dev *d = &hx_dev[i];
		unsigned act = (unsigned)((s / (uint64_t)n) % LF_ACTIONS);

		switch (act) {
		case LF_WIDTH1: lf_width(d, 1); break;
		case LF_WIDTH2: lf_width(d, 2); break;
		case LF_WIDTH8: lf_width(d, 8); break;
		case LF_BAD_STATUS: lf_bad_status(d); break;
		case LF_RINGS_OUTSIDE: lf_rings_outside(d); break;
		case LF_HEAD_OOR: lf_head_oor(d, &lf[i]); break;
		case LF_MALFORMED: lf_malformed(d, &lf[i]); break;
		default: lf_unknown_reg(d, (unsigned)(s / (uint64_t)n / LF_ACTIONS)); break;
		}
		hx_wr(d, VMMIO_STATUS, 0); /* the next action starts clean */
		if ((s + 1) % 100 == 0)
			hx_say("HOSTILE-STEP ", s + 1);
	}
	hx_fired("log-flood");
	hx_say("HOSTILE-DONE steps=", steps);
	hx_just_tick();
}

/* ---- dispatch ------------------------------------------------------------ */

static const struct {
	const char *name;
	void (*run)(void);
} attacks[] = {
	{ "alias-blk", attack_alias_blk },
	{ "alias-net", attack_alias_net },
	{ "vsock-norx", hx_vsock_norx },
	{ "vsock-idle", hx_vsock_idle },
	{ "vsock-fill", hx_vsock_fill },
	{ "blk-flood", attack_blk_flood },
	{ "zeroes", attack_zeroes },
	{ "net-rx-small", attack_net_rx_small },
	{ "log-flood", attack_log_flood },
	{ "vsock-conn-flood", hx_vsock_conn_flood },
};

static void scenario_hostile(void)
{
	size_t len, slen;
	const char *a = cmdline_get("tg.attack", &len);
	struct line l;

	pic_mask_all();
	lapic_enable();
	lapic_mask_lint0();
	lapic_timer_periodic(VEC_TIMER, 1000000); /* tg_ticks: 1 per ms */
	/* Interrupts stay enabled from here on, so that tg_ticks counts
	 * time even while the guest is busy (a tick that finds IF=0 waits,
	 * and several such merge into one). timer_isr only counts. */
	__asm__ volatile("sti" : : : "memory");

	if (a ? len == 6 && !memcmp(a, "random", 6)
	      : cmdline_get("tg.seed", &slen) != NULL)
		hostile_random(cmdline_get_u64("tg.seed", 1));
	for (unsigned i = 0; a && i < sizeof(attacks) / sizeof(attacks[0]); i++)
		if (strlen(attacks[i].name) == len &&
		    !memcmp(attacks[i].name, a, len))
			attacks[i].run(); /* does not return */
	line_init(&l);
	line_str(&l, "HOSTILE-ERROR ");
	if (a) {
		line_str(&l, "unknown tg.attack=");
		line_strn(&l, a, len);
	} else {
		line_str(&l, "neither tg.attack nor tg.seed given");
	}
	line_send(&l);
	hx_just_tick();
}

TG_SCENARIO("hostile", scenario_hostile);
