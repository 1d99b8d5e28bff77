//! A small guest memory, reused across iterations, with the bookkeeping
//! the "no write outside what the guest made writable" invariant needs.
//!
//! Layout (two regions with an unmapped hole between them):
//!
//! ```text
//! 0x0_0000 .. 0x0_3000   virtqueue rings, 0x1000 per queue (up to 3)
//! 0x0_3000 .. 0x0_6000   indirect descriptor tables, 0x1000 per queue
//! 0x0_6000 .. 0x1_0000   data buffers
//! 0x1_0000 .. 0x1_1000   hole: not guest memory
//! 0x1_1000 .. 0x1_4000   data buffers (second region)
//! ```
//!
//! Before each device pass the harness snapshots all of memory; after it,
//! every changed byte must lie in a range the guest made device-writable
//! (a descriptor with VRING_DESC_F_WRITE that the harness posted) or in a
//! used ring. If a writable buffer overlaps a ring or an indirect table,
//! the guest has given the device licence to rewrite its own control
//! structures, so the run is "tainted" and only the no-panic invariant
//! is checked from then on.

use std::cell::RefCell;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// First region: rings, indirect tables and data.
pub const REGION_A: (u64, u64) = (0, 0x1_0000);
/// Second region, after a one-page hole.
pub const REGION_B: (u64, u64) = (0x1_1000, 0x3000);
/// The hole between the regions.
pub const HOLE: (u64, u64) = (0x1_0000, 0x1000);
/// Where queue `i`'s rings start: `RING_BASE + i * RING_STRIDE`.
pub const RING_BASE: u64 = 0x100;
/// Space for one queue's rings.
pub const RING_STRIDE: u64 = 0x1000;
/// Start of the indirect tables (`INDIRECT_BASE + queue * 0x1000 + head * 128`).
pub const INDIRECT_BASE: u64 = 0x3000;
/// Bytes of one indirect table slot (8 descriptors).
pub const INDIRECT_SLOT: u64 = 128;
/// The data area of the first region.
pub const DATA_A: (u64, u64) = (0x6000, 0xa000);
/// The largest queue the layout has room for.
pub const MAX_QUEUE_SIZE: u16 = 32;

thread_local! {
    static MEMORY: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION_A.0), REGION_A.1 as usize),
        (GuestAddress(REGION_B.0), REGION_B.1 as usize),
    ])
    .unwrap_or_default();
    static ZEROES: RefCell<Vec<u8>> = RefCell::new(vec![0; REGION_A.1 as usize]);
    /// The snapshot buffers, reused by every iteration.
    static BUFFERS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

const MEM_BYTES: usize = (REGION_A.1 + REGION_B.1) as usize;
/// Memory is compared in blocks of this size before byte by byte.
const BLOCK: usize = 64;

/// Where a guest buffer goes. Mostly a fresh buffer in the data area;
/// sometimes anywhere, including the hole, region ends and wild addresses.
#[derive(Clone, Copy, Debug)]
pub enum AddrSpec {
    /// A fresh buffer from the bump allocator.
    Fresh,
    /// An offset into the first data area.
    Data(u16),
    /// An offset into the second region.
    RegionB(u16),
    /// `n` bytes before the end of the first region (may straddle the hole).
    NearEnd(u8),
    /// Inside the hole.
    Hole(u16),
    /// Any address at all.
    Raw(u64),
}

impl<'a> Arbitrary<'a> for AddrSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=179 => Self::Fresh,
            180..=209 => Self::Data(u.arbitrary()?),
            210..=229 => Self::RegionB(u.arbitrary()?),
            230..=239 => Self::NearEnd(u.arbitrary()?),
            240..=247 => Self::Hole(u.arbitrary()?),
            _ => Self::Raw(u.arbitrary()?),
        })
    }
}

/// One fuzz iteration's view of guest memory.
#[derive(Debug)]
pub struct Guest {
    /// The memory (shared by every iteration of this thread).
    pub mem: GuestMemoryMmap,
    allowed: Vec<(u64, u64)>,
    control: Vec<(u64, u64)>,
    tainted: bool,
    before: Vec<u8>,
    after: Vec<u8>,
    bump: u64,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl Guest {
    /// Zeroed memory, nothing writable yet.
    pub fn new() -> Self {
        let mem = MEMORY.with(Clone::clone);
        ZEROES.with(|z| {
            let z = z.borrow();
            let _ = mem.write_slice(&z[..REGION_A.1 as usize], GuestAddress(REGION_A.0));
            let _ = mem.write_slice(&z[..REGION_B.1 as usize], GuestAddress(REGION_B.0));
        });
        let (mut before, mut after) = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
        before.resize(MEM_BYTES, 0);
        after.resize(MEM_BYTES, 0);
        Self {
            mem,
            allowed: Vec::new(),
            // Rings and indirect tables: the device never writes there
            // except through the used rings, which are allowed one by one.
            control: vec![(0, DATA_A.0)],
            tainted: false,
            before,
            after,
            bump: DATA_A.0,
        }
    }

    /// The guest allows the device to write `[addr, addr + len)`.
    pub fn allow_write(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let r = (addr, addr.saturating_add(len));
        if self.control.iter().any(|&c| overlaps(c, r)) {
            self.tainted = true;
        }
        self.allowed.push(r);
    }

    /// A used ring: the device writes there.
    pub fn allow_used_ring(&mut self, addr: u64, len: u64) {
        self.allowed.push((addr, addr + len));
    }

    /// The invariants no longer hold by construction (the guest corrupted
    /// its own rings); only the absence of panics is checked.
    pub fn taint(&mut self) {
        self.tainted = true;
    }

    /// Whether the memory invariants are off.
    pub fn tainted(&self) -> bool {
        self.tainted
    }

    /// `len` bytes from the data bump allocator (8-byte aligned; wraps).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = (len.max(1) + 7) & !7;
        let end = DATA_A.0 + DATA_A.1;
        if len > DATA_A.1 {
            return DATA_A.0;
        }
        if self.bump + len > end {
            self.bump = DATA_A.0;
        }
        let a = self.bump;
        self.bump += len;
        a
    }

    /// Resolves an address choice for a buffer of `len` bytes.
    pub fn addr(&mut self, spec: AddrSpec, len: u64) -> u64 {
        match spec {
            AddrSpec::Fresh => self.alloc(len),
            AddrSpec::Data(o) => DATA_A.0 + u64::from(o) % DATA_A.1,
            AddrSpec::RegionB(o) => REGION_B.0 + u64::from(o) % REGION_B.1,
            AddrSpec::NearEnd(n) => REGION_A.1 - u64::from(n),
            AddrSpec::Hole(o) => HOLE.0 + u64::from(o) % HOLE.1,
            AddrSpec::Raw(a) => a,
        }
    }

    /// Writes guest data (what the driver puts in its buffers). Only the
    /// data areas are written; anything else is ignored.
    pub fn write_data(&self, addr: u64, bytes: &[u8]) {
        let end = addr.saturating_add(bytes.len() as u64);
        let in_a = addr >= DATA_A.0 && end <= REGION_A.1;
        let in_b = addr >= REGION_B.0 && end <= REGION_B.0 + REGION_B.1;
        if in_a || in_b {
            let _ = self.mem.write_slice(bytes, GuestAddress(addr));
        }
    }

    fn read_all(mem: &GuestMemoryMmap, out: &mut [u8]) {
        let (a, b) = out.split_at_mut(REGION_A.1 as usize);
        let _ = mem.read_slice(a, GuestAddress(REGION_A.0));
        let _ = mem.read_slice(b, GuestAddress(REGION_B.0));
    }

    fn offset_to_addr(i: usize) -> u64 {
        let i = i as u64;
        if i < REGION_A.1 {
            REGION_A.0 + i
        } else {
            REGION_B.0 + (i - REGION_A.1)
        }
    }

    /// Remembers memory as it is before the device runs.
    pub fn before_device(&mut self) {
        if !self.tainted {
            Self::read_all(&self.mem, &mut self.before);
        }
    }

    /// Checks that the device wrote only where it was allowed to.
    pub fn after_device(&mut self, what: &str) {
        if self.tainted {
            return;
        }
        Self::read_all(&self.mem, &mut self.after);
        if self.before == self.after {
            return;
        }
        let blocks = self.before.chunks(BLOCK).zip(self.after.chunks(BLOCK));
        for (n, (before, after)) in blocks.enumerate() {
            if before == after {
                continue;
            }
            for (k, (b, a)) in before.iter().zip(after).enumerate() {
                if b == a {
                    continue;
                }
                let addr = Self::offset_to_addr(n * BLOCK + k);
                let ok = self.allowed.iter().any(|&(s, e)| s <= addr && addr < e);
                assert!(
                    ok,
                    "{what}: the device wrote guest memory at {addr:#x} ({b:#x} -> {a:#x}), \
                     outside every device-writable buffer and used ring"
                );
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let bufs = (std::mem::take(&mut self.before), std::mem::take(&mut self.after));
        BUFFERS.with(|b| *b.borrow_mut() = bufs);
    }
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}
