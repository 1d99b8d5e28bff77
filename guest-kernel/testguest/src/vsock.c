/*
 * vsock: a polled virtio-vsock driver (virtio 1.2 section 5.10) serving an
 * echo port, and optionally connecting out to a host port.
 *
 *   VSOCK-READY cid=<cid> listen=<port>
 *   VSOCK-CONNECTED port=<P> | VSOCK-CONNECT-REFUSED port=<P>  (connect=P)
 *   VSOCK-TRANSPORT-RESET                (event 0: all connections dropped)
 *   VSOCK-ERROR <detail>                 (anything unexpected; keeps going)
 *
 * Parameters: tg.vsock.listen (default 5000), tg.vsock.connect (host port,
 * default none), tg.vsock.bufsize (buf_alloc per connection, default 16384).
 * Runs forever.
 *
 * Echo path: a received RW packet is sent back from its own rx buffer: the
 * header is rewritten in place and tx descriptor <rx head id>, reserved for
 * that buffer, is made available; when it completes the rx buffer is
 * reposted. So the payload is never copied (per packet: no descriptor
 * writes but the length). Only when the device's credit is short, or
 * earlier data still waits, is the payload copied into the connection's
 * echo ring (bufsize bytes, allocated on first use) and sent from there as
 * credit arrives. Received bytes count as consumed (fwd_cnt) when they are
 * queued for sending back, and every such packet carries the new fwd_cnt
 * itself, so nothing consumed is ever left unreported (no CREDIT_UPDATE is
 * ever needed). Ring space is reused only after the tx that read it
 * completed.
 *
 * Idle: the rings are polled; after IDLE_SPINS empty polls the CPU sleeps in
 * `sti; hlt` until the next tick of a 1 ms periodic LAPIC timer.
 */
#include <stdint.h>

#include "cmdline.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "machine.h"
#include "scenario.h"
#include "serial.h"
#include "virtio_mmio.h"
#include "virtq.h"

#define HOST_CID 2
#define TYPE_STREAM 1
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW,
       OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

#define RXQ_SIZE 64
#define TXQ_SIZE 128             /* descriptors 0..RXQ_SIZE-1: echoes */
#define EVQ_SIZE 2
#define HDR_LEN 44
#define RX_DATA 16384            /* = the default buf_alloc: the largest packet */
#define RX_STRIDE ((HDR_LEN + RX_DATA + 63) & ~63)
#define MAX_PKT (64u << 10)
#define MAX_CONN 128
#define NBUCKET 256              /* hash of (host port, guest port) */
#define ECHO_POOL (2u << 20)     /* echo rings: MAX_CONN * 16 KiB */
#define CONNECT_PORT 49152       /* our port for the outgoing connection */
#define IDLE_SPINS 200
#define TX_WAIT_SPINS 10000000   /* the device always consumes tx buffers */

struct __attribute__((packed)) vs_hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
};

enum { C_FREE, C_CONNECTING, C_OPEN };

struct conn {
	struct conn *next;           /* hash chain, or free list */
	uint8_t *ring;               /* echo ring, bufsize bytes (lazy) */
	uint32_t hport, gport;       /* host port, guest port */
	uint32_t peer_alloc, peer_fwd; /* device's latest buf_alloc, fwd_cnt */
	uint32_t tx_cnt;             /* data bytes sent */
	uint32_t fwd_cnt;            /* received bytes queued back (consumed) */
	uint32_t wr, sent, done;     /* ring: appended, queued, tx completed */
	uint32_t gen;                /* bumped on free: late tx are ignored */
	uint8_t state, creq;         /* creq: CREDIT_REQUEST sent, no credit */
};

/* What a completed tx chain (not an echo) gives back: ring space. */
struct txinfo {
	struct conn *c;              /* ring data of c (if c->gen == gen) */
	uint32_t gen, n;
};

static struct conn conns[MAX_CONN] __attribute__((section(".noinit")));
static struct conn *bucket[NBUCKET] __attribute__((section(".noinit")));
static struct txinfo txinfo[TXQ_SIZE] __attribute__((section(".noinit")));
static uint8_t echo_pool[ECHO_POOL] __attribute__((section(".noinit"), aligned(4096)));
static char hello[48] __attribute__((section(".noinit")));

static struct virtq rxq, txq, evq;
static struct vs_hdr *tx_hdr;    /* one per tx descriptor, by head id */
static struct conn *free_conns;
static uint64_t cid;
static uint32_t bufsize, listen_port, echo_used, hello_len;
static int tx_kick, rx_kick;

#define NO_VALUE (~0ull)

static void err(const char *what, uint64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, "VSOCK-ERROR ");
	line_str(&l, what);
	if (v != NO_VALUE)
		line_dec(&l, v);
	line_send(&l);
}

static void say(const char *what, uint64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, what);
	line_dec(&l, v);
	line_send(&l);
}

/* rep movsq + rep movsb: on PVM every rep iteration is emulated. */
static void copy(void *d, const void *s, uint32_t n)
{
	uint64_t q = n >> 3, b = n & 7;

	__asm__ volatile("rep movsq; mov %3, %%rcx; rep movsb"
			 : "+D"(d), "+S"(s), "+c"(q) : "r"(b) : "memory");
}

static struct conn **slot(uint32_t hport, uint32_t gport)
{
	return &bucket[(hport ^ gport ^ (hport >> 8)) & (NBUCKET - 1)];
}

static struct conn *conn_find(uint32_t hport, uint32_t gport)
{
	struct conn *c = *slot(hport, gport);

	while (c && (c->hport != hport || c->gport != gport))
		c = c->next;
	return c;
}

static struct conn *conn_new(uint32_t hport, uint32_t gport, uint8_t state,
			     const struct vs_hdr *h)
{
	struct conn *c = free_conns, **s = slot(hport, gport);

	if (!c)
		return NULL;
	free_conns = c->next;
	c->next = *s;
	*s = c;
	c->hport = hport;
	c->gport = gport;
	c->peer_alloc = h ? h->buf_alloc : 0;
	c->peer_fwd = h ? h->fwd_cnt : 0;
	c->tx_cnt = c->fwd_cnt = c->wr = c->sent = c->done = 0;
	c->state = state;
	c->creq = 0;
	return c;
}

static void conn_free(struct conn *c)
{
	struct conn **p = slot(c->hport, c->gport);

	while (*p != c)
		p = &(*p)->next;
	*p = c->next;
	c->state = C_FREE;
	c->gen++;
	c->next = free_conns;
	free_conns = c;
}

/* Every connection gone (start, TRANSPORT_RESET); the rings stay
 * allocated to their slots. */
static void conn_drop_all(void)
{
	free_conns = NULL;
	for (int i = 0; i < NBUCKET; i++)
		bucket[i] = NULL;
	for (int i = MAX_CONN - 1; i >= 0; i--) {
		conns[i].state = C_FREE;
		conns[i].gen++;
		conns[i].next = free_conns;
		free_conns = &conns[i];
	}
}

static uint32_t credit(const struct conn *c)
{
	uint32_t used = c->tx_cnt - c->peer_fwd;

	return used < c->peer_alloc ? c->peer_alloc - used : 0;
}

/* Completed tx chains: repost held rx buffers, release ring space. */
static void reap_tx(void)
{
	uint32_t len;
	int id;

	while ((id = virtq_poll(&txq, &len)) >= 0) {
		struct txinfo *t = &txinfo[id];
		if (id < RXQ_SIZE) { /* an echo: its rx buffer is free again */
			virtq_repost(&rxq, (uint16_t)id);
			rx_kick = 1;
			continue;
		}
		if (t->c && t->c->gen == t->gen)
			t->c->done += t->n;
		virtq_free(&txq, (uint16_t)id);
	}
}

/* Waits for the device to complete a tx chain; -1 if it never does. */
static int tx_wait(void)
{
	uint16_t seen = txq.last_used;

	virtq_notify(&txq);
	tx_kick = 0;
	for (uint32_t i = 0; i < TX_WAIT_SPINS; i++) {
		reap_tx();
		if (txq.last_used != seen)
			return 0;
	}
	err("tx queue stuck, free=", txq.num_free);
	return -1;
}

static void hdr_set(struct vs_hdr *h, uint32_t hport, uint32_t gport,
		    uint16_t op, uint32_t flags, uint32_t len, uint32_t fwd)
{
	h->src_cid = cid;
	h->dst_cid = HOST_CID;
	h->src_port = gport;
	h->dst_port = hport;
	h->len = len;
	h->type = TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = bufsize;
	h->fwd_cnt = fwd;
}

/* Queues a packet (header, then len bytes at data if len); its txinfo is
 * "nothing to release" until the caller says otherwise. Head id or -1. */
static int tx(uint32_t hport, uint32_t gport, uint16_t op, uint32_t flags,
	      uint32_t fwd, const void *data, uint32_t len)
{
	struct virtq_buf b[2];
	struct vs_hdr *h;
	int head;

	while (txq.num_free < 2)
		if (tx_wait())
			return -1;
	h = &tx_hdr[txq.free_head]; /* virtq_submit takes free_head as head */
	hdr_set(h, hport, gport, op, flags, len, fwd);
	b[0] = (struct virtq_buf){ h, HDR_LEN, 0 };
	b[1] = (struct virtq_buf){ data, len, 0 };
	head = virtq_submit(&txq, b, len ? 2 : 1);
	txinfo[head] = (struct txinfo){ NULL, 0, 0 };
	tx_kick = 1;
	return head;
}

static void tx_ctl(const struct conn *c, uint16_t op, uint32_t flags)
{
	tx(c->hport, c->gport, op, flags, c->fwd_cnt, NULL, 0);
}

/* Sends what the echo ring holds, as far as the device's credit goes. */
static void flush(struct conn *c)
{
	uint32_t n, cr, off;
	int head;

	while ((n = c->wr - c->sent)) {
		if (!(cr = credit(c))) {
			if (!c->creq) {
				c->creq = 1;
				tx_ctl(c, OP_CREDIT_REQUEST, 0);
			}
			return;
		}
		off = c->sent % bufsize;
		n = n < cr ? n : cr;
		n = n < bufsize - off ? n : bufsize - off;
		n = n < MAX_PKT ? n : MAX_PKT;
		c->sent += n;
		c->fwd_cnt += n;
		c->tx_cnt += n;
		c->creq = 0;
		if ((head = tx(c->hport, c->gport, OP_RW, 0, c->fwd_cnt,
			       c->ring + off, n)) < 0)
			return;
		txinfo[head] = (struct txinfo){ c, c->gen, n };
	}
}

/* Appends to the echo ring; -1 if it cannot (no memory, or more than the
 * credit we gave). */
static int ring_put(struct conn *c, const uint8_t *p, uint32_t n)
{
	uint32_t off, first;

	if (!c->ring) {
		if (bufsize > ECHO_POOL - echo_used) {
			err("echo ring pool exhausted, bufsize=", bufsize);
			return -1;
		}
		c->ring = echo_pool + echo_used;
		echo_used += (bufsize + 63) & ~63u;
	}
	if (c->wr - c->sent + n > bufsize) {
		err("device exceeded our credit, port=", c->hport);
		return -1;
	}
	while (c->wr - c->done + n > bufsize) /* space still being sent */
		if (tx_wait())
			return -1;
	off = c->wr % bufsize;
	first = n < bufsize - off ? n : bufsize - off;
	copy(c->ring + off, p, first);
	copy(c->ring, p + first, n - first);
	c->wr += n;
	return 0;
}

static void reset_conn(struct conn *c)
{
	tx_ctl(c, OP_RST, 0);
	conn_free(c);
}

/* RW on an open connection; returns 1 if the rx buffer may be reposted,
 * 0 if it was queued for the echo (reposted when that tx completes). */
static int echo(struct conn *c, struct vs_hdr *h, int id, uint32_t n)
{
	if (!n)
		return 1;
	if (c->wr == c->sent && credit(c) >= n) {
		c->fwd_cnt += n;
		c->tx_cnt += n;
		hdr_set(h, c->hport, c->gport, OP_RW, 0, n, c->fwd_cnt);
		txq.desc[id].len = HDR_LEN + n;
		virtq_repost(&txq, (uint16_t)id);
		tx_kick = 1;
		return 0;
	}
	if (ring_put(c, (const uint8_t *)(h + 1), n))
		reset_conn(c);
	else
		flush(c);
	return 1;
}

static void connected(struct conn *c)
{
	say("VSOCK-CONNECTED port=", c->hport);
	c->state = C_OPEN;
	c->tx_cnt += hello_len; /* the RESPONSE's credit is 256 KiB */
	tx(c->hport, c->gport, OP_RW, 0, c->fwd_cnt, hello, hello_len);
}

/* One received packet; returns 1 if its buffer may be reposted. */
static int rx_packet(int id, uint32_t len)
{
	struct vs_hdr *h = (struct vs_hdr *)rxq.desc[id].addr;
	uint32_t n = len - HDR_LEN;
	struct conn *c;

	if (len < HDR_LEN || h->len != n || h->src_cid != HOST_CID ||
	    h->dst_cid != cid) {
		err("bad rx packet, len=", len);
		return 1;
	}
	c = conn_find(h->src_port, h->dst_port);
	if (c && h->op == OP_REQUEST) {
		/* The device reuses the ports of connections it dropped (at a
		 * transport reset whose event we have not seen yet): a new one. */
		conn_free(c);
		c = NULL;
	}
	if (!c) {
		if (h->op == OP_REQUEST && h->type == TYPE_STREAM &&
		    h->dst_port == listen_port &&
		    (c = conn_new(h->src_port, h->dst_port, C_OPEN, h))) {
			tx_ctl(c, OP_RESPONSE, 0);
			return 1;
		}
		if (h->op == OP_REQUEST && h->dst_port == listen_port)
			err("too many connections, max=", MAX_CONN);
		if (h->op > OP_CREDIT_REQUEST || !h->op)
			err("unknown op=", h->op);
		if (h->op != OP_RST)
			tx(h->src_port, h->dst_port, OP_RST, 0, 0, NULL, 0);
		return 1;
	}
	c->peer_alloc = h->buf_alloc;
	c->peer_fwd = h->fwd_cnt;
	switch (h->op) {
	case OP_RW:
		if (c->state == C_OPEN)
			return echo(c, h, id, n);
		err("data before RESPONSE, port=", c->hport);
		reset_conn(c);
		return 1;
	case OP_RESPONSE:
		if (c->state != C_CONNECTING) {
			err("unexpected RESPONSE, port=", c->hport);
			reset_conn(c);
			return 1;
		}
		connected(c);
		break;
	case OP_RST:
		if (c->state == C_CONNECTING)
			say("VSOCK-CONNECT-REFUSED port=", c->hport);
		conn_free(c);
		return 1;
	case OP_SHUTDOWN:
		reset_conn(c);
		return 1;
	case OP_CREDIT_UPDATE:
		break;
	case OP_CREDIT_REQUEST:
		tx_ctl(c, OP_CREDIT_UPDATE, 0);
		break;
	default:
		err("unknown op=", h->op);
		return 1;
	}
	if (c->wr != c->sent)
		flush(c);
	return 1;
}

static void events(void)
{
	uint32_t len;
	int id;

	while ((id = virtq_poll(&evq, &len)) >= 0) {
		uint32_t ev = *(volatile uint32_t *)evq.desc[id].addr;
		if (len >= 4 && ev == 0) {
			serial_puts("VSOCK-TRANSPORT-RESET\n");
			conn_drop_all();
		} else if (len < 4) {
			err("short event, len=", len);
		} else {
			err("unknown event id=", ev);
		}
		virtq_repost(&evq, (uint16_t)id);
		virtq_notify(&evq);
	}
}

/* One pass over the queues (events first: a transport reset comes before
 * the packets of new connections). */
static void poll_once(void)
{
	uint32_t len;
	int id;

	if (evq.used->idx != evq.last_used)
		events();
	reap_tx();
	while ((id = virtq_poll(&rxq, &len)) >= 0)
		if (rx_packet(id, len)) {
			virtq_repost(&rxq, (uint16_t)id);
			rx_kick = 1;
		}
	/* The device refills rx after handling tx: one notify does both. */
	if (tx_kick)
		virtq_notify(&txq);
	else if (rx_kick)
		virtq_notify(&rxq);
	tx_kick = rx_kick = 0;
}

static int setup(struct virtio_mmio_dev *d)
{
	uint8_t *rxbuf, *evbuf;
	int err;

	if ((err = virtio_mmio_init(d, 0)) ||
	    (err = virtq_init(&rxq, RXQ_SIZE) || virtq_init(&txq, TXQ_SIZE) ||
			   virtq_init(&evq, EVQ_SIZE) ? VMMIO_ERR_QUEUE : 0) ||
	    (err = virtio_mmio_setup_queue(d, 0, &rxq)) ||
	    (err = virtio_mmio_setup_queue(d, 1, &txq)) ||
	    (err = virtio_mmio_setup_queue(d, 2, &evq)))
		return err;
	rxbuf = dma_alloc(RXQ_SIZE * RX_STRIDE);
	tx_hdr = dma_alloc(TXQ_SIZE * sizeof(*tx_hdr));
	evbuf = dma_alloc(EVQ_SIZE * 8);
	if (!rxbuf || !tx_hdr || !evbuf)
		return VMMIO_ERR_QUEUE;
	virtq_reserve(&txq, RXQ_SIZE);
	for (int i = 0; i < RXQ_SIZE; i++) { /* rx head i = buffer i */
		virtq_submit(&rxq, &(struct virtq_buf){ rxbuf + i * RX_STRIDE,
			     HDR_LEN + RX_DATA, VIRTQ_DESC_F_WRITE }, 1);
		txq.desc[i] = (struct virtq_desc){ (uint64_t)rxbuf + i * RX_STRIDE,
						   0, 0, 0 };
	}
	for (int i = 0; i < EVQ_SIZE; i++)
		virtq_submit(&evq, &(struct virtq_buf){ evbuf + i * 8, 8,
			     VIRTQ_DESC_F_WRITE }, 1);
	return virtio_mmio_driver_ok(d);
}

static void scenario_vsock(void)
{
	struct virtio_mmio_dev devs[VIRTIO_MMIO_MAX], *d;
	uint64_t port;
	struct line l;
	int n = virtio_mmio_discover(devs, VIRTIO_MMIO_MAX), e;

	listen_port = (uint32_t)cmdline_get_u64("tg.vsock.listen", 5000);
	bufsize = (uint32_t)cmdline_get_u64("tg.vsock.bufsize", 16384);
	if (!bufsize || bufsize > ECHO_POOL)
		bufsize = 16384;
	if (!(d = virtio_mmio_find(devs, n, VIRTIO_ID_VSOCK, 0))) {
		err("no virtio-vsock device", NO_VALUE);
		return;
	}
	if ((e = setup(d))) {
		err("init failed, err=", (uint64_t)-e);
		return;
	}
	cid = virtio_mmio_config64(d, 0);
	for (int i = 0; i < MAX_CONN; i++)
		conns[i].ring = NULL;
	conn_drop_all();

	line_init(&l);
	line_str(&l, "VSOCK-READY cid=");
	line_dec(&l, cid);
	line_str(&l, " listen=");
	line_dec(&l, listen_port);
	line_send(&l);

	port = cmdline_get_u64("tg.vsock.connect", 0);
	if (port && port <= 0xffffffffu) {
		struct conn *c = conn_new((uint32_t)port, CONNECT_PORT,
					  C_CONNECTING, NULL);
		line_str(&l, "HELLO-FROM-GUEST cid=");
		line_dec(&l, cid);
		l.buf[l.len++] = '\n';
		copy(hello, l.buf, hello_len = (uint32_t)l.len);
		line_init(&l);
		tx_ctl(c, OP_REQUEST, 0);
		virtq_notify(&txq);
		tx_kick = 0;
	}

	pic_mask_all();
	lapic_enable();
	lapic_mask_lint0();
	lapic_timer_periodic(VEC_TIMER, 1000000);
	for (unsigned idle = 0;;) {
		if (txq.used->idx != txq.last_used ||
		    rxq.used->idx != rxq.last_used ||
		    evq.used->idx != evq.last_used) {
			poll_once();
			idle = 0;
		} else if (++idle >= IDLE_SPINS) {
			sti_hlt();
			cli();
		}
	}
}

TG_SCENARIO("vsock", scenario_vsock);
