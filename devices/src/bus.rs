//! An address-range bus: the vCPU threads dispatch PIO and MMIO exits
//! through it to the device that owns the address.
//!
//! The bus is built once, before any vCPU runs, and is immutable after that,
//! so a lookup takes no lock. Each device synchronises its own state.

use std::fmt;
use std::sync::Arc;

/// A device that answers reads and writes on a bus.
///
/// `offset` is relative to the base address the device was inserted at.
/// `data.len()` is the access width chosen by the guest; devices must accept
/// any width and ignore the ones they do not support (never panic).
pub trait BusDevice: Send + Sync {
    /// Handles a guest read; the device fills `data`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    /// Sorted by `base`.
    entries: Vec<Entry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for e in &self.entries {
            list.entry(&format_args!("{:#x}+{:#x}", e.base, e.len));
        }
        list.finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let pos = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev = pos
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .is_some_and(|prev| prev.base + prev.len > base);
        let overlaps_next = self.entries.get(pos).is_some_and(|next| next.base < end);
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    /// Finds the device whose range holds the whole access `[addr, addr + size)`,
    /// and the offset of `addr` inside it.
    pub fn resolve(&self, addr: u64, size: usize) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - entry.base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((&entry.device, offset))
    }

    /// Dispatches a read. Returns false, leaving `data` untouched, when no
    /// device owns the whole range.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns false when no device owns the whole range.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 5, b.clone()).unwrap();
        assert!(bus.write(0x3f9, &[7]));
        assert!(bus.write(0x64, &[0xfe]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert_eq!(*a.0.lock().unwrap(), vec![(1, vec![7])]);
        assert_eq!(*b.0.lock().unwrap(), vec![(4, vec![0xfe])]);
    }

    #[test]
    fn misses_outside_and_across_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, Arc::new(Recorder::default())).unwrap();
        let mut d = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut d));
        assert!(!bus.read(0x1100, &mut d));
        // Straddles the end of the device.
        assert!(!bus.read(0x10fe, &mut d));
        assert_eq!(d, [0xaa; 4]);
        assert!(bus.read(0x10fc, &mut d));
        assert!(!bus.write(u64::MAX, &[1, 2]));
    }

    #[test]
    fn refuses_overlap_and_bad_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x10, 0x10, Arc::new(Recorder::default())).unwrap();
        for (base, len) in [(0x8, 0x9), (0x1f, 1), (0x10, 1), (0x0, 0x100)] {
            assert_eq!(
                bus.insert(base, len, Arc::new(Recorder::default())),
                Err(BusError::Overlap { base, len })
            );
        }
        assert!(bus.insert(0x20, 1, Arc::new(Recorder::default())).is_ok());
        assert!(bus.insert(0x0, 0x10, Arc::new(Recorder::default())).is_ok());
        assert!(matches!(
            bus.insert(0x100, 0, Arc::new(Recorder::default())),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, Arc::new(Recorder::default())),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
