/*
 * hostile: the vsock attacks (README.md, "hostile").
 *
 *   vsock-norx        activated, rx and event queues set up but never
 *                     given a buffer; ticks notify the empty tx queue
 *   vsock-idle        the device is never touched at all
 *   vsock-fill        no rx buffers; REQUEST, then RW data straight away
 *   vsock-conn-flood  a polled driver (rx reposted) opening
 *                     tg.vsock.conns connections that send data within
 *                     the host's credit
 *
 * Queues: rx at most 64 entries, tx at most 256, event at most 2 (from
 * QueueNumMax). Waits are bounded by tg_ticks (1 ms LAPIC timer).
 */
#include <stdint.h>

#include "cmdline.h"
#include "hostile.h"
#include "io.h"
#include "serial.h"
#include "string.h"
#include "virtio_mmio.h"
#include "virtq.h"

#define HOST_CID 2
#define TYPE_STREAM 1
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW,
       OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

#define HDR_LEN 44
#define RXQ_MAX 64
#define TXQ_MAX 256
#define EVQ_MAX 2
#define RX_DATA 4096
#define RX_STRIDE (HDR_LEN + RX_DATA + 20) /* 4160, 64-aligned */
#define GUEST_BUF_ALLOC 65536              /* what we advertise */
#define MAX_PKT (64u << 10)                /* largest payload per packet */
#define FILL_PKT 4096
#define FILL_PORT 1234
#define DEFAULT_HOST_CREDIT 65536          /* assumed host buf_alloc */
#define STUCK_MS 5000

struct __attribute__((packed)) vs_hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
};

static struct virtio_mmio_dev *vd;
static struct virtq rxq HX_NOINIT, txq HX_NOINIT, evq HX_NOINIT;
static struct vs_hdr *tx_hdr; /* one per tx descriptor, by head id */
static uint64_t cid;
static int tx_kick, rx_kick;

/* Reset, VERSION_1, the three queues, rx and event buffers only if post,
 * DRIVER_OK. 0, or -1 after HOSTILE-ERROR. */
static int vs_open(const char *name, int post)
{
	uint16_t rs, ts, es;
	uint8_t *rxbuf = NULL, *evbuf = NULL;
	int e;

	if (!(vd = hx_find(VIRTIO_ID_VSOCK, 0, "no virtio-vsock device")))
		return -1;
	if ((e = virtio_mmio_init(vd, 0))) {
		hx_error2(name, "init failed, err=", (uint64_t)-e);
		return -1;
	}
	rs = hx_queue_size(vd, 0, RXQ_MAX);
	ts = hx_queue_size(vd, 1, TXQ_MAX);
	es = hx_queue_size(vd, 2, EVQ_MAX);
	if (!rs || !ts || !es || virtq_init(&rxq, rs) || virtq_init(&txq, ts) ||
	    virtq_init(&evq, es) ||
	    !(tx_hdr = dma_alloc(ts * sizeof(*tx_hdr))) ||
	    (post && (!(rxbuf = dma_alloc(rs * RX_STRIDE)) ||
		      !(evbuf = dma_alloc(es * 8))))) {
		hx_error2(name, "no queues or out of memory", HX_NO_VALUE);
		return -1;
	}
	if ((e = virtio_mmio_setup_queue(vd, 0, &rxq)) ||
	    (e = virtio_mmio_setup_queue(vd, 1, &txq)) ||
	    (e = virtio_mmio_setup_queue(vd, 2, &evq))) {
		hx_error2(name, "queue setup failed, err=", (uint64_t)-e);
		return -1;
	}
	for (int i = 0; post && i < rs; i++)
		virtq_submit(&rxq, &(struct virtq_buf){ rxbuf + i * RX_STRIDE,
			     HDR_LEN + RX_DATA, VIRTQ_DESC_F_WRITE }, 1);
	for (int i = 0; post && i < es; i++)
		virtq_submit(&evq, &(struct virtq_buf){ evbuf + i * 8, 8,
			     VIRTQ_DESC_F_WRITE }, 1);
	if ((e = virtio_mmio_driver_ok(vd))) {
		hx_error2(name, "DRIVER_OK failed, err=", (uint64_t)-e);
		return -1;
	}
	cid = virtio_mmio_config64(vd, 0);
	return 0;
}

/* Queues a packet from guest port gport to host port hport (header, and
 * len bytes at data if len); head id, or -1 if the tx queue is full. */
static int tx_post(uint32_t gport, uint32_t hport, uint16_t op,
		   const void *data, uint32_t len)
{
	struct virtq_buf b[2];
	struct vs_hdr *h;
	int head;

	if (txq.num_free < (len ? 2 : 1))
		return -1;
	h = &tx_hdr[txq.free_head]; /* virtq_submit takes free_head as head */
	*h = (struct vs_hdr){ cid, HOST_CID, gport, hport, len, TYPE_STREAM,
			      op, 0, GUEST_BUF_ALLOC, 0 };
	b[0] = (struct virtq_buf){ h, HDR_LEN, 0 };
	b[1] = (struct virtq_buf){ data, len, 0 };
	head = virtq_submit(&txq, b, len ? 2 : 1);
	tx_kick = 1;
	return head;
}

/* Completed tx chains go back to the free list. */
static void tx_reap(void)
{
	uint32_t len;
	int id;

	while ((id = virtq_poll(&txq, &len)) >= 0)
		virtq_free(&txq, (uint16_t)id);
}

/* ---- vsock-norx, vsock-idle ---------------------------------------------- */

void hx_vsock_norx(void)
{
	if (vs_open("vsock-norx", 0))
		hx_just_tick();
	hx_fired("vsock-norx");
	hx_tick_notify(vd, 1, 0);
}

void hx_vsock_idle(void)
{
	hx_fired("vsock-idle");
	hx_just_tick();
}

/* ---- vsock-fill ------------------------------------------------------------ */

void hx_vsock_fill(void)
{
	uint64_t port = cmdline_get_u64("tg.vsock.port", 5000);
	uint64_t bytes = cmdline_get_u64("tg.vsock.bytes", 131072);
	uint64_t credit = cmdline_get_u64("tg.vsock.credit", DEFAULT_HOST_CREDIT);
	uint64_t total = bytes < credit ? bytes : credit, sent = 0, packets = 0;
	uint8_t *data;
	struct line l;

	if (vs_open("vsock-fill", 0))
		hx_just_tick();
	if (!(data = dma_alloc(FILL_PKT))) {
		hx_error("vsock-fill: out of memory", HX_NO_VALUE);
		hx_just_tick();
	}
	for (uint32_t i = 0; i < FILL_PKT; i++)
		data[i] = (uint8_t)('a' + i % 26);
	tx_post(FILL_PORT, (uint32_t)port, OP_REQUEST, NULL, 0);
	while (sent < total) {
		uint32_t n = total - sent < FILL_PKT ? (uint32_t)(total - sent) : FILL_PKT;
		uint64_t start = tg_ticks;
		int posted;

		while (!(posted = tx_post(FILL_PORT, (uint32_t)port, OP_RW,
					  data, n) >= 0) &&
		       tg_ticks - start < STUCK_MS) {
			virtq_notify(&txq); /* room comes from completions */
			tx_kick = 0;
			hx_sleep();
			tx_reap();
		}
		if (!posted) {
			hx_error("vsock-fill: tx queue stuck after bytes=", sent);
			break;
		}
		sent += n;
		packets++;
	}
	virtq_notify(&txq);
	tx_kick = 0;
	line_init(&l);
	line_str(&l, "HOSTILE-VSOCK-SENT bytes=");
	line_dec(&l, sent);
	line_str(&l, " packets=");
	line_dec(&l, packets);
	line_send(&l);
	hx_fired("vsock-fill");
	hx_tick_notify(vd, 1, 0);
}

/* ---- vsock-conn-flood -------------------------------------------------------- */

#define MAX_CONNS 4096
#define BASE_PORT 2000
#define TX_RESERVE 16 /* while REQUESTs are being sent, data leaves these */

enum { CS_IDLE, CS_REQUESTED, CS_OPEN, CS_CLOSED };

struct cf_conn {
	uint32_t sent;                 /* data bytes sent */
	uint32_t peer_alloc, peer_fwd; /* the host's latest buf_alloc, fwd_cnt */
	uint8_t state, queued;
};

static struct cf_conn conns[MAX_CONNS] HX_NOINIT;
static uint16_t pend[MAX_CONNS] HX_NOINIT;
static uint32_t pend_head, pend_count, nconns, per_conn, host_port;
static uint32_t tx_reserve;
static uint64_t n_response, n_rst;
static uint8_t *cf_data; /* MAX_PKT bytes of payload, shared */

static uint32_t credit(const struct cf_conn *c)
{
	uint32_t used = c->sent - c->peer_fwd;

	return used < c->peer_alloc ? c->peer_alloc - used : 0;
}

static void cf_queue(uint32_t i)
{
	struct cf_conn *c = &conns[i];

	if (c->queued || c->state != CS_OPEN || c->sent >= per_conn ||
	    !credit(c))
		return;
	c->queued = 1;
	pend[(pend_head + pend_count++) % MAX_CONNS] = (uint16_t)i;
}

/* RW packets for the queued connections, within credit and tx room. */
static void cf_send(void)
{
	while (pend_count && txq.num_free >= 2 + tx_reserve) {
		uint32_t i = pend[pend_head];
		struct cf_conn *c = &conns[i];
		uint32_t n = per_conn - c->sent, cr = credit(c);

		n = n < cr ? n : cr;
		n = n < MAX_PKT ? n : MAX_PKT;
		if (c->state == CS_OPEN && n) {
			tx_post(BASE_PORT + i, host_port, OP_RW, cf_data, n);
			c->sent += n;
		}
		if (c->state != CS_OPEN || c->sent >= per_conn || !credit(c)) {
			c->queued = 0;
			pend_head = (pend_head + 1) % MAX_CONNS;
			pend_count--;
		}
	}
}

static void cf_packet(const struct vs_hdr *h, uint32_t len)
{
	uint32_t i = h->dst_port - BASE_PORT;
	struct cf_conn *c;

	if (len < HDR_LEN)
		return;
	if (h->op == OP_RST)
		n_rst++;
	else if (h->op == OP_RESPONSE)
		n_response++;
	if (i >= nconns || h->src_port != host_port || h->src_cid != HOST_CID)
		return;
	c = &conns[i];
	switch (h->op) {
	case OP_RESPONSE:
		if (c->state == CS_REQUESTED)
			c->state = CS_OPEN;
		break;
	case OP_RST:
	case OP_SHUTDOWN:
		c->state = CS_CLOSED;
		return;
	default: /* RW, CREDIT_UPDATE, CREDIT_REQUEST: no answer */
		break;
	}
	c->peer_alloc = h->buf_alloc;
	c->peer_fwd = h->fwd_cnt;
	cf_queue(i);
}

/* One pass: completed tx, events, received packets (buffers reposted),
 * pending data; then the notifies. */
static void cf_service(void)
{
	uint32_t len;
	int id;

	tx_reap();
	for (unsigned k = 0; k < evq.size && (id = virtq_poll(&evq, &len)) >= 0; k++) {
		virtq_repost(&evq, (uint16_t)id);
		virtq_notify(&evq);
	}
	/* At most one queue's worth: the heartbeat gets its turn. */
	for (unsigned k = 0; k < rxq.size && (id = virtq_poll(&rxq, &len)) >= 0; k++) {
		cf_packet((const struct vs_hdr *)rxq.desc[id].addr, len);
		virtq_repost(&rxq, (uint16_t)id);
		rx_kick = 1;
	}
	cf_send();
	if (tx_kick)
		virtq_notify(&txq);
	if (rx_kick)
		virtq_notify(&rxq);
	tx_kick = rx_kick = 0;
}

static void cf_report(void)
{
	hx_say("VSOCK-RESPONSE ", n_response);
	hx_say("VSOCK-RST ", n_rst);
}

void hx_vsock_conn_flood(void)
{
	uint64_t n = cmdline_get_u64("tg.vsock.conns", 1100);
	uint32_t i;

	host_port = (uint32_t)cmdline_get_u64("tg.vsock.port", 5000);
	per_conn = (uint32_t)cmdline_get_u64("tg.vsock.bytes", 65536);
	if (n > MAX_CONNS) {
		hx_error("vsock-conn-flood: tg.vsock.conns capped at ", MAX_CONNS);
		n = MAX_CONNS;
	}
	nconns = (uint32_t)n;
	if (vs_open("vsock-conn-flood", 1))
		hx_just_tick();
	if (!(cf_data = dma_alloc(MAX_PKT))) {
		hx_error("vsock-conn-flood: out of memory", HX_NO_VALUE);
		hx_just_tick();
	}
	for (i = 0; i < MAX_PKT; i++)
		cf_data[i] = (uint8_t)('A' + i % 26);
	for (i = 0; i < nconns; i++)
		conns[i] = (struct cf_conn){ 0, 0, 0, CS_IDLE, 0 };
	pend_head = pend_count = 0;
	tx_reserve = TX_RESERVE < txq.size / 2 ? TX_RESERVE : 0;

	for (i = 0; i < nconns; i++) {
		uint64_t start = tg_ticks;

		while (!txq.num_free && tg_ticks - start < STUCK_MS) {
			cf_service();
			if (!txq.num_free)
				hx_sleep();
		}
		if (!txq.num_free) {
			hx_error("vsock-conn-flood: tx queue stuck at connection ", i);
			break;
		}
		tx_post(BASE_PORT + i, host_port, OP_REQUEST, NULL, 0);
		conns[i].state = CS_REQUESTED;
		if (i % 16 == 15)
			cf_service();
	}
	cf_service();
	hx_say("HOSTILE-VSOCK-REQUESTS ", i);
	hx_fired("vsock-conn-flood");
	tx_reserve = 0;
	hx_heartbeat(NULL, cf_service, cf_report);
}
