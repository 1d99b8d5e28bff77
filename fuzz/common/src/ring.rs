//! The driver's side of one split virtqueue, built on
//! `hearth_devices::testing::QueueDriver`, plus the used-ring invariants:
//!
//! - every used entry's id is the head of a chain that was made available
//!   and not used yet (so each head is used at most once per availability);
//! - the used index advances by exactly the number of entries the device
//!   wrote (the slots past the old index are poisoned before each pass, so
//!   an advance over a slot the device did not write is caught), and never
//!   past the number of chains outstanding;
//! - each entry's length is at most the chain's device-writable bytes.
//!
//! Descriptors are allocated from a free list as a real driver does, so
//! the chains of outstanding heads are never overwritten. A driver that
//! misbehaves on purpose (a bogus avail index) turns the ring checks off;
//! raw descriptor writes also taint the memory checks.

use hearth_devices::testing::QueueDriver;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{Guest, INDIRECT_BASE, INDIRECT_SLOT, MAX_QUEUE_SIZE, RING_BASE, RING_STRIDE};

/// Most descriptors in an indirect table the harness builds.
pub const MAX_INDIRECT: usize = (INDIRECT_SLOT / 16) as usize;
const POISON: u32 = 0xffff_ffff;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

#[derive(Debug)]
struct Posted {
    head: u16,
    indices: Vec<u16>,
    writable: u64,
}

/// One queue seen from the driver.
#[derive(Debug)]
pub struct Ring {
    number: u64,
    driver: QueueDriver,
    size: u16,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    outstanding: Vec<Posted>,
    used_seen: u16,
    misbehaved: bool,
}

/// Most buffers in a chain a net target builds from its input.
const MAX_CHAIN: usize = 12;

/// The descriptors of a chain made of the input's first [`MAX_CHAIN`]
/// buffers, each turned into a [`Desc`] by `desc`, and whether to post it
/// through an indirect table: when the input's `indirect` byte is a
/// multiple of 8 and the chain fits one.
pub fn chain<B>(bufs: &[B], indirect: u8, desc: impl FnMut(&B) -> Desc) -> (Vec<Desc>, bool) {
    let descs: Vec<Desc> = bufs.iter().take(MAX_CHAIN).map(desc).collect();
    let indirect = indirect.is_multiple_of(8) && descs.len() <= MAX_INDIRECT;
    (descs, indirect)
}

/// A power-of-two queue size from a fuzzer byte (1..=32).
pub fn queue_size(b: u8) -> u16 {
    1 << (b % 6)
}

impl Ring {
    /// Queue `number` (0..3) of `size` entries (a power of two up to 32).
    pub fn new(g: &mut Guest, number: usize, size: u16) -> Self {
        let size = size.clamp(1, MAX_QUEUE_SIZE);
        let base = RING_BASE + number as u64 * RING_STRIDE;
        let driver = QueueDriver::new(&g.mem, base, size);
        let avail = base + 16 * u64::from(size);
        let used = (avail + 4 + 2 * u64::from(size) + 2 + 3) & !3;
        g.allow_used_ring(used, 4 + 8 * u64::from(size) + 2);
        Self {
            number: number as u64,
            driver,
            size,
            avail,
            used,
            free: (0..size).rev().collect(),
            outstanding: Vec::new(),
            used_seen: 0,
            misbehaved: false,
        }
    }

    /// The queue as the device gets it after activation.
    pub fn queue(&self, event_idx: bool) -> Queue {
        let mut q = self.driver.queue();
        q.set_event_idx(event_idx);
        q
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Chains made available and not used yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether the driver broke the rules (ring checks are off).
    pub fn misbehaved(&self) -> bool {
        self.misbehaved
    }

    /// Posts a chain (linked with NEXT), directly or through an indirect
    /// table (at most [`MAX_INDIRECT`] descriptors). Returns its head, or
    /// `None`, having done nothing, if the ring has no room or the chain is
    /// empty.
    pub fn post(&mut self, g: &mut Guest, descs: &[Desc], indirect: bool) -> Option<u16> {
        let n = descs.len();
        let needed = if indirect { 1 } else { n };
        if n == 0 || self.free.len() < needed || (indirect && n > MAX_INDIRECT) {
            return None;
        }
        let at = self.free.len() - needed;
        let indices: Vec<u16> = self.free.drain(at..).rev().collect();
        let head = indices[0];
        let mut writable = 0u64;
        for d in descs {
            if d.write {
                g.allow_write(d.addr, u64::from(d.len));
                writable += u64::from(d.len);
            }
        }
        let flags = |d: &Desc, last: bool| (if d.write { WRITE } else { 0 }) | (if last { 0 } else { NEXT });
        if indirect {
            let table = INDIRECT_BASE + self.number * 0x1000 + u64::from(head) * INDIRECT_SLOT;
            for (i, d) in descs.iter().enumerate() {
                let last = i + 1 == n;
                let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, flags(d, last), i as u16 + 1));
                let _ = g.mem.write_obj(raw, GuestAddress(table + 16 * i as u64));
            }
            self.driver
                .write_descriptor(head, Descriptor::new(table, 16 * n as u32, INDIRECT, 0));
        } else {
            for (i, d) in descs.iter().enumerate() {
                let last = i + 1 == n;
                let next = indices.get(i + 1).copied().unwrap_or(0);
                self.driver
                    .write_descriptor(indices[i], Descriptor::new(d.addr, d.len, flags(d, last), next));
            }
        }
        self.driver.make_available(head);
        self.outstanding.push(Posted {
            head,
            indices,
            writable,
        });
        Some(head)
    }

    /// Sets the used_event field (EVENT_IDX notification threshold).
    pub fn set_used_event(&self, g: &Guest, value: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        let _ = g.mem.write_obj(value, GuestAddress(at));
    }

    /// Publishes an arbitrary avail index (a misbehaving driver).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.misbehaved = true;
        self.driver.set_avail_idx(idx);
    }

    /// Overwrites a descriptor with anything (a misbehaving driver).
    pub fn raw_descriptor(&mut self, g: &mut Guest, index: u16, d: Descriptor) {
        self.misbehaved = true;
        g.taint();
        self.driver.write_descriptor(index, d);
    }

    /// Call before the device runs: poisons the used slots it may fill.
    pub fn before_device(&self, g: &Guest) {
        for k in 0..self.outstanding.len() as u16 {
            let slot = self.used_seen.wrapping_add(k) % self.size;
            let at = self.used + 4 + 8 * u64::from(slot);
            let _ = g.mem.write_obj([POISON, POISON], GuestAddress(at));
        }
    }

    /// Call after the device ran: checks and collects the new used
    /// entries. Returns them as (head, len).
    pub fn after_device(&mut self, g: &Guest, what: &str) -> Vec<(u16, u32)> {
        let checked = !self.misbehaved && !g.tainted();
        let idx: u16 = g
            .mem
            .read_obj(GuestAddress(self.used + 2))
            .unwrap_or(self.used_seen);
        let delta = idx.wrapping_sub(self.used_seen);
        if checked {
            assert!(
                usize::from(delta) <= self.outstanding.len(),
                "{what}: used idx advanced by {delta} with only {} chains outstanding",
                self.outstanding.len()
            );
        }
        let mut entries = Vec::with_capacity(usize::from(delta));
        for _ in 0..delta {
            let slot = self.used_seen % self.size;
            let at = self.used + 4 + 8 * u64::from(slot);
            let [id, len]: [u32; 2] = g.mem.read_obj(GuestAddress(at)).unwrap_or([POISON, POISON]);
            self.used_seen = self.used_seen.wrapping_add(1);
            let found = self.outstanding.iter().position(|p| u32::from(p.head) == id);
            if checked {
                assert!(
                    !(id == POISON && len == POISON),
                    "{what}: used idx advanced over slot {slot}, which the device never wrote"
                );
                assert!(
                    found.is_some(),
                    "{what}: used entry id {id} is not an outstanding head"
                );
            }
            if let Some(i) = found {
                let p = self.outstanding.swap_remove(i);
                if checked {
                    assert!(
                        u64::from(len) <= p.writable,
                        "{what}: used len {len} for head {id} exceeds its {} writable bytes",
                        p.writable
                    );
                }
                self.free.extend(p.indices);
                entries.push((p.head, len));
            }
        }
        entries
    }
}
