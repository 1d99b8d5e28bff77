//! A guest driver's side of a split virtqueue, for tests, benchmarks and
//! fuzz targets: lays the rings out in guest memory, posts descriptor
//! chains and reads the used ring back, as a real driver would.
//!
//! (virtio-queue's own `MockSplitQueue::create` places the used ring
//! inside the avail ring from slot N/2 on, rust-vmm/vm-virtio#400.)

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;

/// One split virtqueue seen from the driver.
#[derive(Debug)]
pub struct QueueDriver {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl QueueDriver {
    /// A queue of `size` entries whose rings start at `base` (they take
    /// `16 * size + 2 * size + 6 + 8 * size + 6` bytes, plus alignment).
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 4 + 2 * u64::from(size) + 2 + 3) & !3;
        let d = Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        for addr in [avail, avail + 2, used, used + 2] {
            let _ = d.mem.write_obj(0u16, GuestAddress(addr));
        }
        d
    }

    /// The queue a device gets, ready, with this layout.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap_or_default();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// The end of the rings (first free byte after them).
    pub fn end(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size) + 2
    }

    /// Writes `descs` verbatim at the next descriptor indices and makes
    /// the first one available. Returns its index.
    pub fn post_raw(&mut self, descs: &[Descriptor]) -> u16 {
        let head = self.next_desc;
        for d in descs {
            let at = self.desc + 16 * u64::from(self.next_desc);
            let _ = self.mem.write_obj(RawDescriptor::from(*d), GuestAddress(at));
            self.next_desc = (self.next_desc + 1) % self.size;
        }
        self.make_available(head);
        head
    }

    /// Puts `head` on the avail ring.
    pub fn make_available(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = self.mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2));
    }

    /// Posts a chain of `(addr, len, flags)` buffers linked with NEXT
    /// (the NEXT flag and `next` fields are filled in). Returns its head.
    pub fn post(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let n = bufs.len();
        let descs: Vec<Descriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == n;
                let next = (self.next_desc + i as u16 + 1) % self.size;
                let next_flag = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
                Descriptor::new(addr, len, flags | next_flag, if last { 0 } else { next })
            })
            .collect();
        self.post_raw(&descs)
    }

    /// Used entries since the last call, as `(head, len)`.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.used + 2))
            .unwrap_or(self.used_seen);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let elem = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap_or(u32::MAX);
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap_or(0);
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Overwrites descriptor `index` (to build malformed chains).
    pub fn write_descriptor(&self, index: u16, d: Descriptor) {
        let at = self.desc + 16 * u64::from(index % self.size);
        let _ = self.mem.write_obj(RawDescriptor::from(d), GuestAddress(at));
    }

    /// Replaces the head of the most recently made available entry (a
    /// misbehaving driver).
    pub fn corrupt_last_avail(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx.wrapping_sub(1) % self.size);
        let _ = self.mem.write_obj(head, GuestAddress(slot));
    }

    /// Publishes an arbitrary avail index (a misbehaving driver).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        let _ = self.mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    /// The descriptor at `index`.
    pub fn descriptor(&self, index: u16) -> Descriptor {
        let at = self.desc + 16 * u64::from(index % self.size);
        self.mem
            .read_obj::<RawDescriptor>(GuestAddress(at))
            .map(Descriptor::from)
            .unwrap_or_else(|_| Descriptor::new(0, 0, 0, 0))
    }

    /// The avail index the driver published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueOwnedT;

    #[test]
    fn rings_do_not_overlap_and_wrap() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut d = QueueDriver::new(&mem, 0x1000, 16);
        let mut q = d.queue();
        assert!(q.is_valid(&mem));
        for round in 0..5u32 {
            let heads: Vec<u16> = (0..16).map(|i| d.post(&[(0x8_0000 + i * 64, 64, 0)])).collect();
            let chains: Vec<_> = q.iter(&mem).unwrap().collect();
            assert_eq!(chains.len(), 16, "round {round}");
            for c in &chains {
                q.add_used(&mem, c.head_index(), 7).unwrap();
            }
            let used = d.used();
            assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
            assert!(used.iter().all(|u| u.1 == 7));
        }
    }
}
