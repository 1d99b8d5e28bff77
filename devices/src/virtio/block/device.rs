//! The virtio-blk device: features, config space and activation.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::DiskBackend;
use super::handler::{process_queue, RequestHandler};
use super::metrics::BlockMetrics;
use super::request::{Limits, SECTOR_SIZE};
use crate::guest_log::GuestLog;
use crate::rate_limiter::RateLimit;
use crate::throttle::Throttle;
use crate::virtio::device::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice};
use crate::virtio::persist::{DeviceRestoreError, DeviceState};
use crate::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::GuestMemoryMmap;

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request (seg_max).
pub const SEG_MAX: u32 = 128;
/// Largest data descriptor (size_max).
pub const SIZE_MAX: u32 = 1 << 20;
/// Discard/write-zeroes segments per request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Largest discard/write-zeroes range, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Size of the config space we expose.
const CONFIG_LEN: usize = 60;

/// How a block device presents itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockOptions {
    /// Offer VIRTIO_BLK_F_RO and refuse writes.
    pub read_only: bool,
    /// The GET_ID serial (up to 20 bytes).
    pub id: String,
    /// Bandwidth and request-rate limits.
    pub rate_limit: RateLimit,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-blk device.
pub struct Block {
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: [EventFd; 1],
    pub(super) activate_evt: EventFd,
    handler: RequestHandler,
    pub(super) throttle: Throttle,
    active: Option<Active>,
    metrics: Arc<BlockMetrics>,
    log: Arc<GuestLog>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("features", &format_args!("{:#x}", self.features))
            .field("active", &self.active.is_some())
            .finish()
    }
}

fn config_space(capacity_sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &capacity_sectors.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &8u32.to_le_bytes()); // discard alignment: 4 KiB
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(52, &MAX_DISCARD_SEG.to_le_bytes());
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl Block {
    /// A device over `backend`.
    pub fn new(backend: Box<dyn DiskBackend>, options: &BlockOptions) -> std::io::Result<Self> {
        let capacity_sectors = backend.capacity() / SECTOR_SIZE;
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if options.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let limits = Limits {
            capacity_sectors,
            read_only: options.read_only,
            max_segments: SEG_MAX as usize,
            max_segment_len: SIZE_MAX,
            max_discard_segments: MAX_DISCARD_SEG,
            max_discard_sectors: MAX_DISCARD_SECTORS,
        };
        let metrics = Arc::new(BlockMetrics::default());
        let log = Arc::new(GuestLog::new("virtio-blk"));
        Ok(Self {
            features,
            config: config_space(capacity_sectors),
            queue_evts: [EventFd::new(EFD_NONBLOCK)?],
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            handler: RequestHandler::new(backend, limits, &options.id, metrics.clone(), log.clone()),
            throttle: Throttle::new(options.rate_limit)?,
            active: None,
            metrics,
            log,
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Freezes the disk's copy-on-write state into a new layer at `dest`
    /// (see `OverlayDisk::freeze_into`); `Ok(None)` if the disk has no
    /// overlay. Call it with the VM paused.
    pub fn freeze_overlay(
        &mut self,
        dest: &std::path::Path,
    ) -> Result<Option<u64>, super::overlay::OverlayError> {
        match self.handler.backend_mut().overlay() {
            Some(o) => o.freeze_into(dest).map(Some),
            None => Ok(None),
        }
    }

    /// The request limits (capacity, read-only).
    pub fn limits(&self) -> &super::request::Limits {
        self.handler.limits()
    }

    /// The rate limits in force.
    pub fn rate_limit(&self) -> RateLimit {
        self.throttle.config()
    }

    /// Replaces the rate limits; takes effect on the next request.
    pub fn set_rate_limit(&mut self, limit: RateLimit) {
        self.throttle.update(limit);
    }

    /// Processes the request queue for one bounded turn (the event loop
    /// calls this on a notify and when the rate limiter's timer fires). A
    /// turn that ends with work left signals the queue's eventfd, so the
    /// event loop comes back after serving everything else.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.throttle.is_blocked() {
            return;
        }
        match process_queue(
            &mut active.queue,
            &active.mem,
            &mut self.handler,
            self.throttle.limiter(),
        ) {
            Ok(outcome) => {
                if outcome.notify {
                    active.interrupt.signal_used_queue();
                }
                if let Some(wait) = outcome.throttled {
                    BlockMetrics::add(&self.metrics.throttled, 1);
                    BlockMetrics::add(
                        &self.metrics.throttled_us,
                        u64::try_from(wait.as_micros()).unwrap_or(u64::MAX),
                    );
                    self.throttle.block_for(wait);
                }
                if outcome.more {
                    let _ = self.queue_evts[0].write(1);
                }
            }
            Err(e) => {
                self.log.warn(format_args!("{e}; the device needs a reset"));
                active.interrupt.set_needs_reset();
                self.handler.abandon();
                self.active = None;
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn guest_log(&self) -> &Arc<GuestLog> {
        &self.log
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::QueueNotReady(0))?;
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.handler.abandon();
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        // Let the event loop start watching the queue.
        let _ = self.activate_evt.write(1);
        Ok(())
    }

    /// A request still in flight is saved as not yet taken: the restored
    /// device runs it again from the start.
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| {
            let mut state = a.queue.state();
            if self.handler.has_in_flight() {
                state.next_avail = state.next_avail.wrapping_sub(1);
            }
            vec![state]
        })
    }

    fn save_device(&self) -> Option<DeviceState> {
        Some(self.save_state())
    }

    fn restore_device(&mut self, state: &DeviceState) -> Result<(), DeviceRestoreError> {
        self.check_state(state)
    }

    fn reset(&mut self) {
        self.active = None;
        self.handler.abandon();
        let _ = self.activate_evt.write(1);
    }
}
