/*
 * blk: virtio-blk through the virtio-mmio driver layer (virtio_mmio.c,
 * virtq.c), polled. The first virtio-blk device is a read-write disk, the
 * second (optional) one a read-only disk. Prints, one line per step:
 *   BLK-CAPACITY <sectors>
 *   BLK-SECTOR0 <first 16 bytes of sector 0, hex>
 *   BLK-ID <GET_ID string>
 *   BLK-WRITE-OK sector=<S> count=<N>  (write, flush, read back, compare)
 *   BLK-HOLD, BLK-READBACK-OK          (tg.blk.hold=N: N times, wait for
 *                                       a COM1 byte, then read back again)
 *   BLK-OOR-IOERR                      (read at sector = capacity)
 *   BLK-RO-REFUSED                     (second disk: RO offered, write fails)
 *   BLK-BENCH-START / BLK-BENCH-END <K> (tg.blk.bench=K 4 KiB reads)
 *   BLK-OK
 * or BLK-FAIL <reason> at the first failure. Parameters: tg.blk.sector
 * (default 8), tg.blk.count (default 8), tg.blk.bench (default 0),
 * tg.blk.hold (default 0).
 */
#include <stdint.h>

#include "cmdline.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"
#include "string.h"
#include "virtio_mmio.h"
#include "virtq.h"

#define BLK_T_IN     0
#define BLK_T_OUT    1
#define BLK_T_FLUSH  4
#define BLK_T_GET_ID 8
#define BLK_S_IOERR  1
#define BLK_F_SEG_MAX  (1ull << 2)
#define BLK_F_RO       (1ull << 5)
#define BLK_F_BLK_SIZE (1ull << 6)
#define BLK_F_FLUSH    (1ull << 9)
#define BLK_ID_BYTES 20
#define BLK_QUEUE_SIZE 16
#define BLK_MAX_COUNT 2048      /* one data descriptor of at most 1 MiB */
#define BENCH_SECTORS 2048      /* bench reads cycle within the first 1 MiB */

struct blk_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

struct blk {
	struct virtio_mmio_dev *dev;
	struct virtq q;
	struct blk_hdr *hdr;        /* DMA page: header, then the status byte */
	volatile uint8_t *status;
};

/* Header, status poison and the chain of a request with at most one data
 * buffer; returns the number of buffers. */
static unsigned blk_chain(struct blk *b, uint32_t type, uint64_t sector,
			  void *buf, uint32_t len, struct virtq_buf *bufs)
{
	unsigned n = 0;

	b->hdr->type = type;
	b->hdr->reserved = 0;
	b->hdr->sector = sector;
	*b->status = 0xff;
	bufs[n++] = (struct virtq_buf){ b->hdr, sizeof(*b->hdr), 0 };
	if (len)
		bufs[n++] = (struct virtq_buf){
			buf, len, type == BLK_T_OUT ? 0 : VIRTQ_DESC_F_WRITE };
	bufs[n++] = (struct virtq_buf){ (const void *)b->status, 1,
					VIRTQ_DESC_F_WRITE };
	return n;
}

/* One request; returns the status byte, or -1 on timeout (or a broken
 * queue); *used = the used element's length. */
static int blk_req(struct blk *b, uint32_t type, uint64_t sector, void *buf,
		   uint32_t len, uint32_t *used)
{
	struct virtq_buf bufs[3];
	unsigned n = blk_chain(b, type, sector, buf, len, bufs);

	if (virtq_run(&b->q, bufs, n, VIRTQ_TIMEOUT_NS, used))
		return -1;
	return *b->status;
}

/* "BLK-FAIL <what>[<key>[<v>]]" (v printed if >= 0). */
static void fail(const char *what, const char *key, int64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, "BLK-FAIL ");
	line_str(&l, what);
	if (key)
		line_str(&l, key);
	if (v >= 0)
		line_dec(&l, (uint64_t)v);
	line_send(&l);
}

/* Status check for a step: prints the failure (timeout or status). */
static int check(int st, int want, const char *what)
{
	if (st == want)
		return 0;
	fail(what, st < 0 ? " timeout" : " status=", st);
	return -1;
}

static int blk_open(struct blk *b, struct virtio_mmio_dev *d, const char *name)
{
	int err;
	uint8_t *page;

	b->dev = d;
	if ((err = virtio_mmio_init(d, BLK_F_SEG_MAX | BLK_F_RO |
					       BLK_F_BLK_SIZE | BLK_F_FLUSH)) ||
	    (err = virtq_init(&b->q, BLK_QUEUE_SIZE) ? VMMIO_ERR_QUEUE : 0) ||
	    (err = virtio_mmio_setup_queue(d, 0, &b->q)) ||
	    (err = virtio_mmio_driver_ok(d)) ||
	    !(page = dma_alloc(4096))) {
		fail(name, " init err=", -err);
		return -1;
	}
	b->hdr = (struct blk_hdr *)page;
	b->status = page + sizeof(struct blk_hdr);
	return 0;
}

/* byte i = (i * 31 + 7) & 0xff: period 256, so the first 256 bytes are
 * computed and the rest copied as qwords (fewer emulated instructions). */
static void fill_pattern(uint8_t *p, uint32_t len)
{
	uint64_t *q = (uint64_t *)p;

	for (uint32_t i = 0; i < 256 && i < len; i++)
		p[i] = (uint8_t)(i * 31 + 7);
	for (uint32_t i = 32; i < len / 8; i++)
		q[i] = q[i - 32];
}

/* Index of the first differing qword, or len / 8 if equal. */
static uint32_t diff_qwords(const void *a, const void *b, uint32_t len)
{
	const uint64_t *x = a, *y = b;
	uint32_t i;

	for (i = 0; i < len / 8 && x[i] == y[i]; i++)
		;
	return i;
}

static void line_hex_bytes(struct line *l, const uint8_t *p, unsigned n)
{
	while (n--) {
		line_char(l, "0123456789abcdef"[*p >> 4]);
		line_char(l, "0123456789abcdef"[*p++ & 0xf]);
	}
}

/* Reads len bytes at sector into rbuf (poisoned first: the data must come
 * from disk) and compares them with wbuf; prints "BLK-FAIL <what> read
 * ..." if the read fails, "BLK-FAIL <what> ..." on a difference. */
static int readback(struct blk *b, uint64_t sector, const uint8_t *wbuf,
		    uint8_t *rbuf, uint32_t len, const char *what,
		    const char *read_what)
{
	uint32_t used, i;

	for (i = 0; i < len / 8; i++)
		((uint64_t *)rbuf)[i] = ~((const uint64_t *)wbuf)[i];
	if (check(blk_req(b, BLK_T_IN, sector, rbuf, len, &used), 0,
		  read_what))
		return -1;
	if (used != len + 1) {
		fail(what, " used-len=", used);
		return -1;
	}
	if ((i = diff_qwords(wbuf, rbuf, len)) != len / 8) {
		for (i *= 8; wbuf[i] == rbuf[i]; i++)
			;
		fail(what, " mismatch at byte ", i);
		return -1;
	}
	return 0;
}

/* tg.blk.hold=N (each of N times): "BLK-HOLD", then wait for a byte on COM1 (the host may
 * snapshot and restore the VM meanwhile), sleeping in `sti; hlt` on a 1 ms
 * LAPIC timer between polls of the UART's data-ready bit. Afterwards the
 * LAPIC timer is virtq_wait's free-running clock again. */
static void hold(void)
{
	serial_puts("BLK-HOLD\n");
	pic_mask_all();
	lapic_enable();
	lapic_mask_lint0();
	lapic_timer_periodic(VEC_TIMER, 1000000);
	while (!(inb(COM1_PORT + 5) & 1)) { /* LSR data ready */
		sti_hlt();
		cli();
	}
	inb(COM1_PORT);
	lapic_timer_free_running();
}

static int step_write_readback(struct blk *b, uint64_t cap)
{
	uint64_t sector = cmdline_get_u64("tg.blk.sector", 8);
	uint64_t count = cmdline_get_u64("tg.blk.count", 8);
	uint32_t len = (uint32_t)count * 512, used;
	uint8_t *wbuf, *rbuf;
	struct line l;

	if (!count || count > BLK_MAX_COUNT || sector >= cap ||
	    count > cap - sector) {
		fail("write-readback bad sector/count", NULL, -1);
		return -1;
	}
	if (!(wbuf = dma_alloc(len)) || !(rbuf = dma_alloc(len))) {
		fail("write-readback out of memory", NULL, -1);
		return -1;
	}
	fill_pattern(wbuf, len);
	if (check(blk_req(b, BLK_T_OUT, sector, wbuf, len, &used), 0,
		  "write-readback write") ||
	    check(blk_req(b, BLK_T_FLUSH, 0, NULL, 0, &used), 0,
		  "write-readback flush") ||
	    readback(b, sector, wbuf, rbuf, len, "write-readback",
		     "write-readback read"))
		return -1;
	line_init(&l);
	line_str(&l, "BLK-WRITE-OK sector=");
	line_dec(&l, sector);
	line_str(&l, " count=");
	line_dec(&l, count);
	line_send(&l);
	for (uint64_t n = cmdline_get_u64("tg.blk.hold", 0); n > 0; n--) {
		hold();
		if (readback(b, sector, wbuf, rbuf, len, "readback",
			     "readback read"))
			return -1;
		serial_puts("BLK-READBACK-OK\n");
	}
	return 0;
}

static int step_ro(struct virtio_mmio_dev *d)
{
	struct blk ro;
	uint32_t used;
	uint8_t *buf;

	if (blk_open(&ro, d, "ro"))
		return -1;
	if (!(d->offered & BLK_F_RO)) {
		fail("ro feature not offered", NULL, -1);
		return -1;
	}
	if (!(buf = dma_alloc(512))) {
		fail("ro out of memory", NULL, -1);
		return -1;
	}
	if (check(blk_req(&ro, BLK_T_OUT, 0, buf, 512, &used), BLK_S_IOERR,
		  "ro write"))
		return -1;
	serial_puts("BLK-RO-REFUSED\n");
	return 0;
}

/* k 4 KiB reads, one at a time. The chain is written once and reposted:
 * per read only the header's sector changes (fewest guest instructions). */
static int bench(struct blk *b, uint64_t cap, uint64_t k)
{
	uint64_t span = (cap < BENCH_SECTORS ? cap : BENCH_SECTORS) & ~7ull;
	uint64_t i = 0, sector = 0;
	struct virtq_buf bufs[3];
	uint32_t used;
	uint8_t *buf;
	int head, st = 0;
	struct line l;

	if (!span || !(buf = dma_alloc(4096))) {
		fail("bench setup", NULL, -1);
		return -1;
	}
	serial_puts("BLK-BENCH-START\n");
	head = virtq_submit(&b->q, bufs,
			    blk_chain(b, BLK_T_IN, 0, buf, 4096, bufs));
	while (head >= 0) {
		virtq_notify(&b->q);
		st = virtq_wait(&b->q, VIRTQ_TIMEOUT_NS, &used) == head ?
			     *b->status : -1;
		if (st || ++i == k)
			break;
		if ((sector += 8) >= span)
			sector = 0;
		b->hdr->sector = sector;
		*b->status = 0xff;
		virtq_repost(&b->q, (uint16_t)head);
	}
	if (head < 0 || check(st, 0, "bench read"))
		return -1;
	virtq_free(&b->q, (uint16_t)head);
	line_init(&l);
	line_str(&l, "BLK-BENCH-END ");
	line_dec(&l, k);
	line_send(&l);
	return 0;
}

static void scenario_blk(void)
{
	struct virtio_mmio_dev devs[VIRTIO_MMIO_MAX], *ro_dev;
	struct blk b;
	uint64_t cap, k;
	uint32_t used;
	uint8_t *buf;
	struct line l;
	int n = virtio_mmio_discover(devs, VIRTIO_MMIO_MAX);

	b.dev = virtio_mmio_find(devs, n, VIRTIO_ID_BLOCK, 0);
	ro_dev = virtio_mmio_find(devs, n, VIRTIO_ID_BLOCK, 1);
	if (!b.dev) {
		fail("no virtio-blk device", NULL, -1);
		return;
	}
	if (blk_open(&b, b.dev, "rw") || !(buf = dma_alloc(512)))
		return;

	cap = virtio_mmio_config64(b.dev, 0);
	line_init(&l);
	line_str(&l, "BLK-CAPACITY ");
	line_dec(&l, cap);
	line_send(&l);

	if (check(blk_req(&b, BLK_T_IN, 0, buf, 512, &used), 0, "sector0"))
		return;
	line_str(&l, "BLK-SECTOR0 ");
	line_hex_bytes(&l, buf, 16);
	line_send(&l);

	memset(buf, 0, BLK_ID_BYTES);
	if (check(blk_req(&b, BLK_T_GET_ID, 0, buf, BLK_ID_BYTES, &used), 0,
		  "get-id"))
		return;
	line_str(&l, "BLK-ID ");
	for (unsigned i = 0; i < BLK_ID_BYTES && buf[i]; i++)
		line_char(&l, (char)buf[i]);
	line_send(&l);

	if (step_write_readback(&b, cap))
		return;

	if (check(blk_req(&b, BLK_T_IN, cap, buf, 512, &used), BLK_S_IOERR,
		  "out-of-range"))
		return;
	serial_puts("BLK-OOR-IOERR\n");

	if (ro_dev && step_ro(ro_dev))
		return;

	if ((k = cmdline_get_u64("tg.blk.bench", 0)) && bench(&b, cap, k))
		return;

	serial_puts("BLK-OK\n");
}

TG_SCENARIO("blk", scenario_blk);
