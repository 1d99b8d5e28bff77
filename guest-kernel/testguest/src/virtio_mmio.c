#include "virtio_mmio.h"
#include "cmdline.h"
#include "io.h"

#define VMMIO_MAGIC_VALUE 0x74726976 /* "virt" */
#define MAX_ADDR 0x100000000ull      /* the identity map ends at 4 GiB */

static uint32_t rd(const struct virtio_mmio_dev *d, uint32_t reg)
{
	return mmio_read32(d->base + reg);
}

static void wr(const struct virtio_mmio_dev *d, uint32_t reg, uint32_t v)
{
	mmio_write32(d->base + reg, v);
}

static void wr64(const struct virtio_mmio_dev *d, uint32_t reg, uint64_t v)
{
	wr(d, reg, (uint32_t)v);
	wr(d, reg + 4, (uint32_t)(v >> 32));
}

/* "<size>[KMG]@<base>:<irq>[:<id>]" -> base, irq; 0 if malformed. */
static int parse_token(const char *p, const char *end,
		       struct virtio_mmio_dev *d)
{
	uint64_t size, base, irq;

	if (!(p = parse_u64(p, end, &size)))
		return 0;
	if (p < end && (*p == 'K' || *p == 'k' || *p == 'M' || *p == 'm' ||
			*p == 'G' || *p == 'g'))
		p++;
	if (p >= end || *p++ != '@' || !(p = parse_u64(p, end, &base)) ||
	    p >= end || *p++ != ':' || !(p = parse_u64(p, end, &irq)))
		return 0;
	d->base = base;
	d->irq = (uint32_t)irq;
	return 1;
}

int virtio_mmio_discover(struct virtio_mmio_dev *devs, int max)
{
	const char *v = NULL;
	size_t len = 0;
	int n = 0;

	while (n < max && (v = cmdline_find("virtio_mmio.device", v ? v + len : NULL,
					    &len))) {
		struct virtio_mmio_dev *d = &devs[n];
		if (!parse_token(v, v + len, d))
			continue;
		d->device_id = 0;
		d->offered = d->features = 0;
		if (d->base + 0x1000 <= MAX_ADDR &&
		    rd(d, VMMIO_MAGIC) == VMMIO_MAGIC_VALUE &&
		    rd(d, VMMIO_VERSION) == 2)
			d->device_id = rd(d, VMMIO_DEVICE_ID);
		n++;
	}
	return n;
}

struct virtio_mmio_dev *virtio_mmio_find(struct virtio_mmio_dev *devs, int n,
					 uint32_t device_id, int nth)
{
	for (int i = 0; i < n; i++)
		if (devs[i].device_id == device_id && !nth--)
			return &devs[i];
	return NULL;
}

int virtio_mmio_init(struct virtio_mmio_dev *d, uint64_t wanted)
{
	uint64_t f;

	if (!d->device_id)
		return VMMIO_ERR_NODEV;
	wr(d, VMMIO_STATUS, 0);
	wr(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	wr(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	wr(d, VMMIO_DEVICE_FEAT_SEL, 1);
	f = (uint64_t)rd(d, VMMIO_DEVICE_FEATURES) << 32;
	wr(d, VMMIO_DEVICE_FEAT_SEL, 0);
	d->offered = f | rd(d, VMMIO_DEVICE_FEATURES);
	if (!(d->offered & VIRTIO_F_VERSION_1))
		return VMMIO_ERR_VERSION_1;
	d->features = f = (wanted | VIRTIO_F_VERSION_1) & d->offered;
	wr(d, VMMIO_DRIVER_FEAT_SEL, 1);
	wr(d, VMMIO_DRIVER_FEATURES, (uint32_t)(f >> 32));
	wr(d, VMMIO_DRIVER_FEAT_SEL, 0);
	wr(d, VMMIO_DRIVER_FEATURES, (uint32_t)f);
	wr(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
				    VIRTIO_STATUS_FEATURES_OK);
	if (!(rd(d, VMMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
		return VMMIO_ERR_FEATURES;
	return 0;
}

int virtio_mmio_setup_queue(struct virtio_mmio_dev *d, uint32_t index,
			    struct virtq *q)
{
	wr(d, VMMIO_QUEUE_SEL, index);
	if (rd(d, VMMIO_QUEUE_NUM_MAX) < q->size)
		return VMMIO_ERR_QUEUE;
	wr(d, VMMIO_QUEUE_NUM, q->size);
	wr64(d, VMMIO_QUEUE_DESC, (uint64_t)q->desc);
	wr64(d, VMMIO_QUEUE_AVAIL, (uint64_t)q->avail);
	wr64(d, VMMIO_QUEUE_USED, (uint64_t)q->used);
	wr(d, VMMIO_QUEUE_READY, 1);
	if (rd(d, VMMIO_QUEUE_READY) != 1)
		return VMMIO_ERR_QUEUE;
	q->notify = d->base + VMMIO_QUEUE_NOTIFY;
	q->index = (uint16_t)index;
	return 0;
}

int virtio_mmio_driver_ok(struct virtio_mmio_dev *d)
{
	const uint32_t ok = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
			    VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK;

	wr(d, VMMIO_STATUS, ok);
	return rd(d, VMMIO_STATUS) == ok ? 0 : VMMIO_ERR_STATUS;
}

uint32_t virtio_mmio_config32(const struct virtio_mmio_dev *d, uint32_t off)
{
	return rd(d, VMMIO_CONFIG + off);
}

uint64_t virtio_mmio_config64(const struct virtio_mmio_dev *d, uint32_t off)
{
	uint32_t gen, lo, hi;

	do {
		gen = rd(d, VMMIO_CONFIG_GEN);
		lo = rd(d, VMMIO_CONFIG + off);
		hi = rd(d, VMMIO_CONFIG + off + 4);
	} while (rd(d, VMMIO_CONFIG_GEN) != gen);
	return ((uint64_t)hi << 32) | lo;
}
