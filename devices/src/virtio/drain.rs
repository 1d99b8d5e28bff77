//! The drain loop of the devices that answer each chain as it comes
//! (virtio-blk, the virtio-net transmit queue): take available chains, let
//! the device handle each, put it in the used ring.
//!
//! One call is one bounded **turn**: at most [`TURN_CHAINS`] chains, and
//! the device may stop earlier when its own budget (bytes moved) runs
//! out. A turn that stops with work left says so
//! ([`QueueOutcome::more`]), and the device's event handler comes back
//! after the event loop has served everything else. So no guest, however
//! it fills or aliases its queue, holds the event loop, a device lock or a
//! pause request for more than one turn.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::QueueOutcome;
use crate::guest_log::GuestLog;
use crate::rate_limiter::RateLimiter;
use crate::GuestMemoryMmap;

/// Most chains one turn takes from a queue.
pub const TURN_CHAINS: usize = 256;

/// The queue is broken beyond what a status byte can report: the device
/// needs a reset.
#[derive(Debug, thiserror::Error)]
#[error("virtqueue error: {0}")]
pub struct QueueError(#[from] virtio_queue::Error);

/// What the device did with one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// Done: put it in the used ring with this length.
    Done(u32),
    /// Nothing done: the rate limiter holds back `bytes`; the chain goes
    /// back to the ring and the turn ends, throttled.
    Throttled(u64),
    /// Nothing done: the device's turn budget is spent; the chain goes
    /// back to the ring and the turn ends with more to do.
    Yield,
    /// Started but not finished: the device keeps the chain (its head) and
    /// finishes it in a later turn; this turn ends with more to do.
    Started,
}

/// Hands available chains (their first `max_descs` descriptors, whatever
/// an indirect table says) to `handle`, for one turn.
///
/// Notifications are off while draining and re-checked after re-enabling
/// them, so no chain is missed with EVENT_IDX; they stay off while
/// throttled or when the turn ends early. A head index out of the queue's
/// range is skipped (no used entry can name it) and logged through `log`.
pub(crate) fn drain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    limiter: &mut RateLimiter,
    max_descs: usize,
    log: &GuestLog,
    mut handle: impl FnMut(u16, &[Descriptor], &mut RateLimiter) -> Handled,
) -> Result<QueueOutcome, QueueError> {
    let mut descs = Vec::with_capacity(max_descs);
    let mut used_any = false;
    // Chains taken and re-checks of the ring both count: a guest whose
    // rings alias can make every re-check find "more" without a chain.
    let mut taken = 0usize;
    let end = |queue: &mut Queue, used_any: bool, throttled, more| -> Result<QueueOutcome, QueueError> {
        Ok(QueueOutcome {
            notify: used_any && queue.needs_notification(mem)?,
            throttled,
            more,
        })
    };
    loop {
        queue.disable_notification(mem)?;
        loop {
            if taken == TURN_CHAINS {
                return end(queue, used_any, None, true);
            }
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            taken += 1;
            let head = chain.head_index();
            if head >= queue.size() {
                log.warn(format_args!(
                    "skipped avail entry with head {head} beyond the queue size {}",
                    queue.size()
                ));
                continue;
            }
            descs.clear();
            descs.extend(chain.take(max_descs));
            match handle(head, &descs, limiter) {
                Handled::Done(len) => {
                    queue.add_used(mem, head, len)?;
                    used_any = true;
                }
                Handled::Throttled(bytes) => {
                    queue.go_to_previous_position();
                    return end(queue, used_any, Some(limiter.wait_time(bytes)), false);
                }
                Handled::Yield => {
                    queue.go_to_previous_position();
                    return end(queue, used_any, None, true);
                }
                Handled::Started => return end(queue, used_any, None, true),
            }
        }
        if !queue.enable_notification(mem)? {
            break;
        }
        taken += 1;
    }
    end(queue, used_any, None, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::QueueDriver;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn a_turn_takes_at_most_its_budget_of_chains() {
        let m = mem();
        let mut d = QueueDriver::new(&m, 0x1000, 256);
        let mut q = d.queue();
        for i in 0..256u64 {
            d.post(&[(0x8_0000 + i * 16, 16, 0)]);
        }
        let log = GuestLog::new("test");
        let mut limiter = RateLimiter::default();
        let mut calls = 0;
        let o = drain(&mut q, &m, &mut limiter, 4, &log, |_, _, _| {
            calls += 1;
            if calls > 100 {
                Handled::Yield
            } else {
                Handled::Done(0)
            }
        })
        .unwrap();
        assert!(o.more && o.notify && o.throttled.is_none());
        assert_eq!((calls, d.used().len()), (101, 100));
        // The yielded chain is the next one taken.
        let mut first = None;
        let o = drain(&mut q, &m, &mut limiter, 4, &log, |head, _, _| {
            first.get_or_insert(head);
            Handled::Done(0)
        })
        .unwrap();
        assert!(!o.more);
        assert_eq!(first, Some(100));
        assert_eq!(d.used().len(), 156);
    }

    /// The freeze a hostile guest set up: with the used ring at the avail
    /// ring + 2 (so every used-ring write changes avail.idx) the queue
    /// never runs dry. The transport refuses such rings at DRIVER_OK; even
    /// so, a turn ends after its budget.
    #[test]
    fn an_aliased_used_ring_cannot_hold_a_turn() {
        let m = mem();
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2002), Some(0));
        q.set_used_ring_address(Some(0x2004), Some(0));
        q.set_ready(true);
        // One valid descriptor, avail idx 1 (which is also used.flags).
        m.write_obj(0x8_0000u64, GuestAddress(0x1000)).unwrap();
        m.write_obj(16u32, GuestAddress(0x1008)).unwrap();
        m.write_obj(1u16, GuestAddress(0x2004)).unwrap();
        let log = GuestLog::new("test");
        let o = drain(&mut q, &m, &mut RateLimiter::default(), 4, &log, |_, _, _| {
            Handled::Done(0)
        })
        .unwrap();
        assert!(o.more, "the budget ended the turn");
    }

    #[test]
    fn heads_beyond_the_queue_are_skipped_and_logged() {
        let m = mem();
        let mut d = QueueDriver::new(&m, 0x1000, 16);
        let mut q = d.queue();
        d.post(&[(0x8_0000, 16, 0)]);
        // Overwrite that avail entry with a head out of range.
        d.corrupt_last_avail(999);
        d.post(&[(0x8_0100, 16, 0)]);
        let log = GuestLog::new("test");
        let mut seen = Vec::new();
        drain(&mut q, &m, &mut RateLimiter::default(), 4, &log, |head, _, _| {
            seen.push(head);
            Handled::Done(0)
        })
        .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(log.counters().warnings, 1);
    }
}
