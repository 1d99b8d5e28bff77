//! The drain loop of the devices that answer each chain as it comes
//! (virtio-blk, the virtio-net transmit queue): take every available chain,
//! let the device handle it, put it in the used ring. When the rate limiter
//! holds a chain back, it stays available for the next pass.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::QueueOutcome;
use crate::rate_limiter::RateLimiter;
use crate::GuestMemoryMmap;

/// The queue is broken beyond what a status byte can report: the device
/// needs a reset.
#[derive(Debug, thiserror::Error)]
#[error("virtqueue error: {0}")]
pub struct QueueError(#[from] virtio_queue::Error);

/// Hands every available chain (its first `max_descs` descriptors, whatever
/// an indirect table says) to `handle`, which returns the used length, or
/// `Err(bytes)` having done nothing when the rate limiter holds it back:
/// the chain then goes back to the ring and the pass ends, throttled.
/// Notifications are off while draining and re-checked after re-enabling
/// them, so no chain is missed with EVENT_IDX; they stay off while
/// throttled.
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    limiter: &mut RateLimiter,
    max_descs: usize,
    mut handle: impl FnMut(&[Descriptor], &mut RateLimiter) -> Result<u32, u64>,
) -> Result<QueueOutcome, QueueError> {
    let mut descs = Vec::with_capacity(max_descs);
    let mut used_any = false;
    loop {
        queue.disable_notification(mem)?;
        loop {
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            descs.clear();
            descs.extend(chain.take(max_descs));
            match handle(&descs, limiter) {
                Ok(len) => {
                    queue.add_used(mem, head, len)?;
                    used_any = true;
                }
                Err(bytes) => {
                    queue.go_to_previous_position();
                    return Ok(QueueOutcome {
                        notify: used_any && queue.needs_notification(mem)?,
                        throttled: Some(limiter.wait_time(bytes)),
                    });
                }
            }
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(QueueOutcome {
        notify: used_any && queue.needs_notification(mem)?,
        throttled: None,
    })
}
