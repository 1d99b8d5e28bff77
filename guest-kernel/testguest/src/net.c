/*
 * net: a polled virtio-net driver (virtio 1.2 section 5.1; VERSION_1 and
 * MAC only, no offloads) with just enough ARP, ICMP and UDP:
 *
 *   NET-READY mac=<mac> ip=<ip>
 *   NET-ARP-OK host_mac=<mac>     (ARP request for tg.net.host answered)
 *   NET-PING-OK                   (ICMP echo to the host answered)
 *   NET-UDP-SENT                  ("HELLO-UDP <ip>" to host:tg.net.port)
 *   NET-FAIL arp | NET-FAIL ping  (no answer within 4 s)
 *   NET-ERROR <detail>            (anything unexpected; keeps going)
 *
 * then serves forever: ARP requests for our address, ICMP echo requests to
 * it, and UDP datagrams to tg.net.listen (echoed to their sender) are
 * answered; everything else is dropped. Parameters: tg.net.ip, tg.net.host
 * (dotted IPv4, required), tg.net.port (default 7777), tg.net.listen
 * (default 7778). The MAC comes from config space (a fixed local one if the
 * device offers none).
 *
 * Replies go out of the rx buffer they came in (rewritten in place, sent
 * through the tx descriptor reserved for that buffer with virtq_reserve);
 * the buffer is reposted when that tx completes. Swapping the addresses
 * and ports keeps the IPv4 and UDP checksums valid; the ICMP one is
 * adjusted for the type change. Idle: after IDLE_SPINS empty polls the CPU
 * sleeps in `sti; hlt` until the next tick of a 1 ms LAPIC timer, whose
 * ticks (tg_ticks) also time the 4 s waits.
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

#define NET_F_MAC (1ull << 5)
#define RXQ_SIZE 64
#define TXQ_SIZE 128             /* descriptors 0..RXQ_SIZE-1: replies */
#define RX_BUF 2048              /* 12 + 1514 bytes, no MRG_RXBUF */
#define TX_BUF 128               /* our own frames (small), per head id */
#define VNET_HDR 12
#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define IP_ICMP 1
#define IP_UDP 17
#define ARP_LEN (VNET_HDR + 14 + 28)
#define IP_OFF (VNET_HDR + 14)   /* the IPv4 header in a buffer */
#define PING_ID 0x4854
#define PING_SEQ 1
#define WAIT_MS 4000
#define IDLE_SPINS 200
#define TX_WAIT_SPINS 10000000

struct __attribute__((packed)) arp {
	uint16_t htype, ptype;
	uint8_t hlen, plen;
	uint16_t op;
	uint8_t sha[6];
	uint32_t spa;
	uint8_t tha[6];
	uint32_t tpa;
};

struct __attribute__((packed)) ip4 {
	uint8_t vihl, tos;
	uint16_t len, id, frag;
	uint8_t ttl, proto;
	uint16_t csum;
	uint32_t src, dst;
};

/* A frame as it lies in a buffer: virtio-net header first. */
struct __attribute__((packed)) pkt {
	uint8_t vnet[VNET_HDR];
	uint8_t dst[6], src[6];
	uint16_t type;
	union {
		struct arp arp;
		struct __attribute__((packed)) {
			struct ip4 ip;
			union {
				struct __attribute__((packed)) {
					uint8_t type, code;
					uint16_t csum, id, seq;
				} icmp;
				struct __attribute__((packed)) {
					uint16_t sport, dport, len, csum;
				} udp;
			};
			uint8_t data[];
		};
	};
};

extern volatile uint64_t tg_ticks; /* counter.c; timer_isr counts */

static struct virtq rxq, txq;
static uint8_t *rxbuf, *txbuf;
static uint8_t my_mac[6], host_mac[6];
static uint32_t my_ip, host_ip;  /* network order, as in packets */
static uint16_t listen_be;       /* tg.net.listen, network order */
static volatile int arp_done, ping_done;
static int tx_kick, rx_kick;

static uint16_t be16(uint16_t v)
{
	return __builtin_bswap16(v);
}

static void mac_copy(uint8_t *d, const uint8_t *s)
{
	*(uint32_t *)d = *(const uint32_t *)s;
	*(uint16_t *)(d + 4) = *(const uint16_t *)(s + 4);
}

static void line_mac(struct line *l, const uint8_t *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			line_char(l, ':');
		line_char(l, "0123456789abcdef"[m[i] >> 4]);
		line_char(l, "0123456789abcdef"[m[i] & 0xf]);
	}
}

static void line_ip(struct line *l, uint32_t ip)
{
	for (int i = 0; i < 4; i++, ip >>= 8) {
		if (i)
			line_char(l, '.');
		line_dec(l, ip & 0xff);
	}
}

#define NO_VALUE (~0ull)

static void err(const char *what, uint64_t v)
{
	struct line l;

	line_init(&l);
	line_str(&l, "NET-ERROR ");
	line_str(&l, what);
	if (v != NO_VALUE)
		line_dec(&l, v);
	line_send(&l);
}

/* Dotted IPv4 value of key, in network order; -1 if absent or bad. */
static int get_ip(const char *key, uint32_t *ip)
{
	size_t len;
	const char *s = cmdline_get(key, &len), *end;
	uint32_t r = 0;
	uint64_t v;

	if (!s)
		return -1;
	end = s + len;
	for (int i = 0; i < 4; i++) {
		if (!(s = parse_u64(s, end, &v)) || v > 255 ||
		    (i < 3 ? s == end || *s++ != '.' : s != end))
			return -1;
		r |= (uint32_t)v << (8 * i);
	}
	*ip = r;
	return 0;
}

/* Internet checksum of n (even) bytes. */
static uint16_t csum(const void *p, uint32_t n)
{
	const uint16_t *w = p;
	uint32_t s = 0;

	for (; n > 1; n -= 2)
		s += *w++;
	s = (s & 0xffff) + (s >> 16);
	s += s >> 16;
	return (uint16_t)~s;
}

static void kick(void)
{
	if (tx_kick)
		virtq_notify(&txq);
	if (rx_kick)
		virtq_notify(&rxq);
	tx_kick = rx_kick = 0;
}

/* Completed tx chains: a reply's rx buffer is posted again. */
static void reap_tx(void)
{
	uint32_t len;
	int id;

	while ((id = virtq_poll(&txq, &len)) >= 0) {
		if (id < RXQ_SIZE) {
			virtq_repost(&rxq, (uint16_t)id);
			rx_kick = 1;
		} else {
			virtq_free(&txq, (uint16_t)id);
		}
	}
}

/* Sends rx buffer id back out, addressed to where it came from. */
static int reply(int id, struct pkt *p, uint32_t len)
{
	mac_copy(p->dst, p->src);
	mac_copy(p->src, my_mac);
	*(uint64_t *)p->vnet = 0;
	*(uint32_t *)(p->vnet + 8) = 0;
	txq.desc[id].len = len;
	virtq_repost(&txq, (uint16_t)id);
	tx_kick = 1;
	return 0;
}

/* One received frame (len includes the virtio-net header); returns 1 if
 * its buffer may be reposted, 0 if it went out again as the reply. */
static int rx_frame(int id, uint32_t len)
{
	struct pkt *p = (struct pkt *)(rxbuf + id * RX_BUF);
	uint32_t n, s;

	if (len < IP_OFF) {
		err("short frame, len=", len);
		return 1;
	}
	if (p->type == be16(ETH_ARP)) {
		if (len < ARP_LEN || p->arp.htype != be16(1) ||
		    p->arp.ptype != be16(ETH_IP) || p->arp.tpa != my_ip)
			return 1;
		if (p->arp.op == be16(2) && p->arp.spa == host_ip && !arp_done) {
			mac_copy(host_mac, p->arp.sha);
			arp_done = 1;
		}
		if (p->arp.op != be16(1))
			return 1;
		p->arp.op = be16(2);
		mac_copy(p->arp.tha, p->arp.sha);
		p->arp.tpa = p->arp.spa;
		mac_copy(p->arp.sha, my_mac);
		p->arp.spa = my_ip;
		return reply(id, p, ARP_LEN);
	}
	if (p->type != be16(ETH_IP) || len < IP_OFF + 28 ||
	    p->ip.vihl != 0x45 || p->ip.dst != my_ip ||
	    (p->ip.frag & be16(0x3fff)) || (n = be16(p->ip.len)) < 28 ||
	    n > len - IP_OFF)
		return 1;
	if (p->ip.proto == IP_ICMP && p->icmp.type == 0) {
		if (p->ip.src == host_ip && p->icmp.id == be16(PING_ID) &&
		    p->icmp.seq == be16(PING_SEQ))
			ping_done = 1;
		return 1;
	}
	if (p->ip.proto == IP_ICMP && p->icmp.type == 8 && !p->icmp.code) {
		/* Type 8 -> 0: one's complement checksum grows by 0x0800. */
		p->icmp.type = 0;
		s = be16(p->icmp.csum) + 0x0800u;
		p->icmp.csum = be16((uint16_t)(s + (s >> 16)));
	} else if (p->ip.proto == IP_UDP && p->udp.dport == listen_be) {
		p->udp.dport = p->udp.sport;
		p->udp.sport = listen_be;
	} else {
		return 1;
	}
	p->ip.dst = p->ip.src;
	p->ip.src = my_ip;
	return reply(id, p, IP_OFF + n);
}

/* One pass over both used rings. */
static void poll_once(void)
{
	uint32_t len;
	int id;

	reap_tx();
	while ((id = virtq_poll(&rxq, &len)) >= 0)
		if (rx_frame(id, len)) {
			virtq_repost(&rxq, (uint16_t)id);
			rx_kick = 1;
		}
	kick();
}

/* Polls (sleeping when idle) until *flag is set (0) or ms have passed
 * (-1); with flag NULL, forever. */
static int run(volatile int *flag, uint64_t ms)
{
	uint64_t start = tg_ticks;

	for (unsigned idle = 0; !flag || !*flag;) {
		if (txq.used->idx != txq.last_used ||
		    rxq.used->idx != rxq.last_used) {
			poll_once();
			idle = 0;
		} else if (++idle >= IDLE_SPINS) {
			if (flag && tg_ticks - start >= ms)
				return -1;
			sti_hlt();
			cli();
		}
	}
	return 0;
}

/* A tx buffer for our own frame, Ethernet header filled in, or NULL. */
static struct pkt *tx_new(uint16_t type, const uint8_t *dst)
{
	struct pkt *p;

	for (uint32_t i = 0; !txq.num_free && i < TX_WAIT_SPINS; i++)
		reap_tx();
	if (!txq.num_free) {
		err("tx queue stuck", NO_VALUE);
		return NULL;
	}
	p = (struct pkt *)(txbuf + txq.free_head * TX_BUF); /* = the head */
	memset(p, 0, TX_BUF);
	mac_copy(p->dst, dst);
	mac_copy(p->src, my_mac);
	p->type = be16(type);
	return p;
}

/* An IPv4 frame to the host with l4 bytes after the IPv4 header. */
static struct pkt *ip_new(uint8_t proto, uint32_t l4)
{
	struct pkt *p = tx_new(ETH_IP, host_mac);

	if (p) {
		p->ip = (struct ip4){ 0x45, 0, be16((uint16_t)(20 + l4)), 0,
				      0, 64, proto, 0, my_ip, host_ip };
		p->ip.csum = csum(&p->ip, 20);
	}
	return p;
}

static void tx_send(struct pkt *p, uint32_t len)
{
	virtq_submit(&txq, &(struct virtq_buf){ p, len, 0 }, 1);
	tx_kick = 1;
	kick();
}

static int setup(struct virtio_mmio_dev *d)
{
	int e;

	if ((e = virtio_mmio_init(d, NET_F_MAC)) ||
	    (e = virtq_init(&rxq, RXQ_SIZE) || virtq_init(&txq, TXQ_SIZE) ?
			 VMMIO_ERR_QUEUE : 0) ||
	    (e = virtio_mmio_setup_queue(d, 0, &rxq)) ||
	    (e = virtio_mmio_setup_queue(d, 1, &txq)))
		return e;
	if (!(rxbuf = dma_alloc(RXQ_SIZE * RX_BUF)) ||
	    !(txbuf = dma_alloc(TXQ_SIZE * TX_BUF)))
		return VMMIO_ERR_QUEUE;
	virtq_reserve(&txq, RXQ_SIZE);
	for (int i = 0; i < RXQ_SIZE; i++) { /* rx head i = buffer i */
		virtq_submit(&rxq, &(struct virtq_buf){ rxbuf + i * RX_BUF,
			     RX_BUF, VIRTQ_DESC_F_WRITE }, 1);
		txq.desc[i] = (struct virtq_desc){ (uint64_t)rxbuf + i * RX_BUF,
						   0, 0, 0 };
	}
	return virtio_mmio_driver_ok(d);
}

static void scenario_net(void)
{
	static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const char ping_data[16] = "hearth-testguest";
	struct virtio_mmio_dev devs[VIRTIO_MMIO_MAX], *d;
	uint16_t port = (uint16_t)cmdline_get_u64("tg.net.port", 7777);
	struct pkt *p;
	struct line l;
	int e;

	listen_be = be16((uint16_t)cmdline_get_u64("tg.net.listen", 7778));
	if (get_ip("tg.net.ip", &my_ip) || get_ip("tg.net.host", &host_ip)) {
		err("bad or missing tg.net.ip or tg.net.host", NO_VALUE);
		return;
	}
	e = virtio_mmio_discover(devs, VIRTIO_MMIO_MAX); /* count */
	if (!(d = virtio_mmio_find(devs, e, VIRTIO_ID_NET, 0))) {
		err("no virtio-net device", NO_VALUE);
		return;
	}
	if ((e = setup(d))) {
		err("init failed, err=", (uint64_t)-e);
		return;
	}
	if (d->features & NET_F_MAC) {      /* config: mac[6] first */
		*(uint32_t *)my_mac = virtio_mmio_config32(d, 0);
		*(uint16_t *)(my_mac + 4) = (uint16_t)virtio_mmio_config32(d, 4);
	} else {                            /* a local address of our own */
		my_mac[0] = 0x02;
		my_mac[5] = 0x01;
	}
	pic_mask_all();
	lapic_enable();
	lapic_mask_lint0();
	lapic_timer_periodic(VEC_TIMER, 1000000);

	line_init(&l);
	line_str(&l, "NET-READY mac=");
	line_mac(&l, my_mac);
	line_str(&l, " ip=");
	line_ip(&l, my_ip);
	line_send(&l);

	if (!(p = tx_new(ETH_ARP, bcast)))
		goto serve;
	p->arp = (struct arp){ be16(1), be16(ETH_IP), 6, 4, be16(1), { 0 },
			       my_ip, { 0 }, host_ip };
	mac_copy(p->arp.sha, my_mac);
	tx_send(p, ARP_LEN);
	if (run(&arp_done, WAIT_MS)) {
		serial_puts("NET-FAIL arp\n");
		goto serve;
	}
	line_str(&l, "NET-ARP-OK host_mac=");
	line_mac(&l, host_mac);
	line_send(&l);

	if ((p = ip_new(IP_ICMP, 8 + sizeof(ping_data)))) {
		p->icmp.type = 8;
		p->icmp.id = be16(PING_ID);
		p->icmp.seq = be16(PING_SEQ);
		memcpy(p->data, ping_data, sizeof(ping_data));
		p->icmp.csum = csum(&p->icmp, 8 + sizeof(ping_data));
		tx_send(p, IP_OFF + 28 + sizeof(ping_data));
		serial_puts(run(&ping_done, WAIT_MS) ? "NET-FAIL ping\n"
						     : "NET-PING-OK\n");
	}

	line_str(&l, "HELLO-UDP ");
	line_ip(&l, my_ip);
	if ((p = ip_new(IP_UDP, 8 + l.len))) {
		p->udp.sport = listen_be;
		p->udp.dport = be16(port);
		p->udp.len = be16((uint16_t)(8 + l.len));
		memcpy(p->data, l.buf, l.len);
		tx_send(p, IP_OFF + 28 + (uint32_t)l.len);
		serial_puts("NET-UDP-SENT\n");
	}
	line_init(&l);
serve:
	run(NULL, 0);
}

TG_SCENARIO("net", scenario_net);
