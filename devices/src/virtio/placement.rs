//! Where a driver placed its rings, checked before a device goes live (at
//! DRIVER_OK and on restore): every ring of every ready queue lies inside
//! guest RAM, is aligned, and overlaps no other ring. Overlapping rings are
//! how a guest makes a device loop forever (a used ring over the avail
//! ring's index makes every completion look like new work), and no real
//! driver places them so.
//!
//! The check is ours rather than virtio-queue's `is_valid`, which logs at
//! error level on every call: a guest must not be able to write the
//! VMM's log.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::GuestMemoryMmap;

/// Which ring of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// The descriptor table.
    Descriptors,
    /// The available (driver) ring.
    Avail,
    /// The used (device) ring.
    Used,
}

impl std::fmt::Display for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ring::Descriptors => "descriptor table",
            Ring::Avail => "available ring",
            Ring::Used => "used ring",
        })
    }
}

/// Why a queue's placement is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The size is zero, not a power of two, or above the maximum.
    #[error("queue {queue} has an invalid size {size} (maximum {max})")]
    Size {
        /// Queue index.
        queue: usize,
        /// Its size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring is misaligned.
    #[error("queue {queue}'s {ring} at {addr:#x} is misaligned")]
    Misaligned {
        /// Queue index.
        queue: usize,
        /// Which ring.
        ring: Ring,
        /// Its address.
        addr: u64,
    },
    /// A ring is not (entirely) in guest RAM.
    #[error("queue {queue}'s {ring} at {addr:#x} lies outside guest memory")]
    OutsideMemory {
        /// Queue index.
        queue: usize,
        /// Which ring.
        ring: Ring,
        /// Its address.
        addr: u64,
    },
    /// Two rings share memory.
    #[error("queue {0}'s {1} overlaps queue {2}'s {3}")]
    Overlap(usize, Ring, usize, Ring),
}

/// A ring's extent: [start, end).
#[derive(Clone, Copy, Debug)]
struct Extent {
    queue: usize,
    ring: Ring,
    start: u64,
    end: u64,
}

fn extents(index: usize, q: &Queue) -> [Extent; 3] {
    let size = u64::from(q.size());
    let ext = |ring, start: u64, len: u64| Extent {
        queue: index,
        ring,
        start,
        end: start.saturating_add(len),
    };
    [
        ext(Ring::Descriptors, q.desc_table(), 16 * size),
        // flags, idx, ring[size], used_event
        ext(Ring::Avail, q.avail_ring(), 6 + 2 * size),
        // flags, idx, ring[size] of 8 bytes, avail_event
        ext(Ring::Used, q.used_ring(), 6 + 8 * size),
    ]
}

/// Checks every ready queue of one device (`queues`, with their maximum
/// sizes in `max_sizes`) against `mem`.
pub fn check(queues: &[Queue], max_sizes: &[u16], mem: &GuestMemoryMmap) -> Result<(), PlacementError> {
    let mut all: Vec<Extent> = Vec::with_capacity(queues.len() * 3);
    for (index, q) in queues.iter().enumerate().filter(|(_, q)| q.ready()) {
        let max = max_sizes.get(index).copied().unwrap_or(0);
        let size = q.size();
        if size == 0 || !size.is_power_of_two() || size > max {
            return Err(PlacementError::Size {
                queue: index,
                size,
                max,
            });
        }
        for (e, align) in extents(index, q).into_iter().zip([16u64, 2, 4]) {
            if e.start % align != 0 {
                return Err(PlacementError::Misaligned {
                    queue: index,
                    ring: e.ring,
                    addr: e.start,
                });
            }
            let len = usize::try_from(e.end - e.start).unwrap_or(usize::MAX);
            let access = match e.ring {
                Ring::Used => Permissions::Write,
                _ => Permissions::Read,
            };
            if e.end == u64::MAX || !mem.check_range(GuestAddress(e.start), len, access) {
                return Err(PlacementError::OutsideMemory {
                    queue: index,
                    ring: e.ring,
                    addr: e.start,
                });
            }
            if let Some(other) = all.iter().find(|o| o.start < e.end && e.start < o.end) {
                return Err(PlacementError::Overlap(other.queue, other.ring, e.queue, e.ring));
            }
            all.push(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn queue(desc: u64, avail: u64, used: u64, size: u16) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        q
    }

    #[test]
    fn linux_like_placement_passes() {
        let m = mem();
        let qs = [
            queue(0x1000, 0x2000, 0x3000, 256),
            queue(0x5000, 0x6000, 0x7000, 256),
        ];
        assert_eq!(check(&qs, &[256, 256], &m), Ok(()));
    }

    #[test]
    fn a_used_ring_over_the_avail_index_is_refused() {
        let m = mem();
        // used.flags shares memory with avail.idx: the freeze a hostile
        // guest set up.
        let qs = [queue(0x1000, 0x2002, 0x2004, 16)];
        assert_eq!(
            check(&qs, &[256], &m),
            Err(PlacementError::Overlap(0, Ring::Avail, 0, Ring::Used))
        );
    }

    #[test]
    fn rings_of_different_queues_may_not_overlap() {
        let m = mem();
        let qs = [
            queue(0x1000, 0x2000, 0x3000, 16),
            queue(0x5000, 0x6000, 0x3040, 16),
        ];
        assert_eq!(
            check(&qs, &[16, 16], &m),
            Err(PlacementError::Overlap(0, Ring::Used, 1, Ring::Used))
        );
    }

    #[test]
    fn outside_memory_misaligned_and_bad_sizes_are_refused() {
        let m = mem();
        assert!(matches!(
            check(&[queue(0x1000, 0x2000, 0xf_fff0, 16)], &[16], &m),
            Err(PlacementError::OutsideMemory { ring: Ring::Used, .. })
        ));
        assert!(matches!(
            check(&[queue(0xfff_ffff_fff0, 0x2000, 0x3000, 16)], &[16], &m),
            Err(PlacementError::OutsideMemory {
                ring: Ring::Descriptors,
                ..
            })
        ));
        assert!(matches!(
            check(&[queue(0x1000, 0x2000, 0x3000, 32)], &[16], &m),
            Err(PlacementError::Size { size: 32, .. })
        ));
        // A queue that is not ready is not checked.
        let mut q = queue(0, 0, 0, 16);
        q.set_ready(false);
        assert_eq!(check(&[q], &[16], &m), Ok(()));
    }
}
