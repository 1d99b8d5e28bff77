/*
 * virtio-mmio transport, version 2 only (virtio 1.2 section 4.2), polled.
 *
 * Devices come from the kernel command line, one
 * `virtio_mmio.device=<size>@<base>:<irq>` token each (what the VMM, like
 * Linux, uses), in command-line order. Bring-up:
 *
 *   n = virtio_mmio_discover(devs, VIRTIO_MMIO_MAX);
 *   d = virtio_mmio_find(devs, n, VIRTIO_ID_BLOCK, 0);
 *   virtio_mmio_init(d, wanted);               reset .. FEATURES_OK
 *   virtq_init(&q, 16); virtio_mmio_setup_queue(d, 0, &q);   per queue
 *   virtio_mmio_driver_ok(d);                  the device goes live
 *
 * Every register access is a VM exit: the functions read back only what
 * tells whether the device accepted a step. Error codes are negative.
 */
#ifndef TG_VIRTIO_MMIO_H
#define TG_VIRTIO_MMIO_H

#include <stdint.h>

#include "virtq.h"

#define VIRTIO_ID_NET    1
#define VIRTIO_ID_BLOCK  2
#define VIRTIO_ID_VSOCK  19

#define VIRTIO_F_VERSION_1 (1ull << 32)  /* always requested */

/* Registers. */
#define VMMIO_MAGIC            0x000
#define VMMIO_VERSION          0x004
#define VMMIO_DEVICE_ID        0x008
#define VMMIO_DEVICE_FEATURES  0x010
#define VMMIO_DEVICE_FEAT_SEL  0x014
#define VMMIO_DRIVER_FEATURES  0x020
#define VMMIO_DRIVER_FEAT_SEL  0x024
#define VMMIO_QUEUE_SEL        0x030
#define VMMIO_QUEUE_NUM_MAX    0x034
#define VMMIO_QUEUE_NUM        0x038
#define VMMIO_QUEUE_READY      0x044
#define VMMIO_QUEUE_NOTIFY     0x050
#define VMMIO_INTERRUPT_STATUS 0x060
#define VMMIO_INTERRUPT_ACK    0x064
#define VMMIO_STATUS           0x070
#define VMMIO_QUEUE_DESC       0x080 /* low; high at +4 */
#define VMMIO_QUEUE_AVAIL      0x090
#define VMMIO_QUEUE_USED       0x0a0
#define VMMIO_CONFIG_GEN       0x0fc
#define VMMIO_CONFIG           0x100

/* Status bits. */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

/* Errors. */
#define VMMIO_ERR_NODEV     (-1) /* no valid version-2 device there */
#define VMMIO_ERR_VERSION_1 (-2) /* VIRTIO_F_VERSION_1 not offered */
#define VMMIO_ERR_FEATURES  (-3) /* FEATURES_OK refused */
#define VMMIO_ERR_QUEUE     (-4) /* no such queue, too small, or refused */
#define VMMIO_ERR_STATUS    (-5) /* DRIVER_OK refused or NEEDS_RESET */

struct virtio_mmio_dev {
	uint64_t base;      /* physical = virtual */
	uint32_t irq;
	uint32_t device_id; /* 0: no valid virtio-mmio v2 device there */
	uint64_t offered;   /* device features (set by virtio_mmio_init) */
	uint64_t features;  /* negotiated features (set by virtio_mmio_init) */
};

/* Fills devs[0..max) in command-line order (reads magic, version and
 * device id of each); returns how many were found. */
int virtio_mmio_discover(struct virtio_mmio_dev *devs, int max);

/* The nth (0-based) device with this id, or NULL. */
struct virtio_mmio_dev *virtio_mmio_find(struct virtio_mmio_dev *devs, int n,
					 uint32_t device_id, int nth);

/* Reset, ACKNOWLEDGE, DRIVER, negotiate (wanted | VERSION_1) & offered,
 * FEATURES_OK. Sets d->offered and d->features; 0 or VMMIO_ERR_*. */
int virtio_mmio_init(struct virtio_mmio_dev *d, uint64_t wanted);

/* Queue `index` on the rings of q (virtq_init'ed; q->size <= QueueNumMax);
 * between virtio_mmio_init and virtio_mmio_driver_ok. 0 or VMMIO_ERR_*. */
int virtio_mmio_setup_queue(struct virtio_mmio_dev *d, uint32_t index,
			    struct virtq *q);

/* DRIVER_OK; 0 or VMMIO_ERR_STATUS (device refused or needs a reset). */
int virtio_mmio_driver_ok(struct virtio_mmio_dev *d);

/* Device config space (offset from 0x100); 64-bit reads are two 32-bit
 * reads, retried until ConfigGeneration is stable. */
uint32_t virtio_mmio_config32(const struct virtio_mmio_dev *d, uint32_t off);
uint64_t virtio_mmio_config64(const struct virtio_mmio_dev *d, uint32_t off);

#endif
