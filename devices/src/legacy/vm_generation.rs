//! The VM generation device: I/O ports from which a guest learns that it
//! was restored or forked (the generation changed), gets fresh host
//! entropy to reseed its random number generator, and reads the host's
//! wall clock. docs/AGENT.md ("Clones are new machines") describes the
//! guest side.
//!
//! | port | what |
//! |---|---|
//! | 0x448-0x44f | generation, u64 LE, new at every boot and restore |
//! | 0x450-0x46f | seed, 32 bytes, new with the generation |
//! | 0x470-0x477 | host wall clock, Unix ns, u64 LE, latched when 0x470 is read |
//!
//! Reads of any width work (Linux's `/dev/port` reads a byte at a time);
//! writes are ignored.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// The first port.
pub const VM_GENERATION_PORT: u64 = 0x448;
/// How many ports.
pub const VM_GENERATION_LEN: u64 = 0x30;
/// Offsets within the range.
const GENERATION: usize = 0;
const SEED: usize = 8;
const CLOCK: usize = 40;

/// A generation and seed, fresh from the host's random source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The generation number.
    pub generation: u64,
    /// The seed.
    pub seed: [u8; 32],
}

impl Generation {
    /// 40 bytes from `getrandom(2)`; `None` if it fails (it does not once
    /// the host's pool is initialised).
    pub fn fresh() -> Option<Self> {
        let mut bytes = [0u8; 40];
        let mut filled = 0;
        while filled < bytes.len() {
            let rest = &mut bytes[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into
            // `rest`, which is valid writable memory of that length.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n <= 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return None;
            }
            filled += n as usize;
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[8..]);
        let mut g = [0u8; 8];
        g.copy_from_slice(&bytes[..8]);
        Some(Self {
            generation: u64::from_le_bytes(g),
            seed,
        })
    }
}

/// The device.
#[derive(Debug)]
pub struct VmGeneration {
    /// generation (8) | seed (32) | latched clock (8).
    regs: Mutex<[u8; 48]>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl VmGeneration {
    /// A device reporting `g`.
    pub fn new(g: Generation) -> Self {
        let mut regs = [0u8; 48];
        regs[GENERATION..SEED].copy_from_slice(&g.generation.to_le_bytes());
        regs[SEED..CLOCK].copy_from_slice(&g.seed);
        Self {
            regs: Mutex::new(regs),
        }
    }

    /// The generation it reports.
    pub fn generation(&self) -> u64 {
        let regs = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = [0u8; 8];
        g.copy_from_slice(&regs[..8]);
        u64::from_le_bytes(g)
    }
}

impl BusDevice for VmGeneration {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut regs = self.regs.lock().unwrap_or_else(|p| p.into_inner());
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start == CLOCK {
            regs[CLOCK..].copy_from_slice(&now_ns().to_le_bytes());
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = start
                .checked_add(i)
                .and_then(|at| regs.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write(&self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &VmGeneration, offset: u64, len: usize) -> Vec<u8> {
        // As /dev/port does: one byte at a time.
        (0..len as u64)
            .map(|i| {
                let mut b = [0u8];
                dev.read(offset + i, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn reports_generation_seed_and_a_latched_clock() {
        let g = Generation::fresh().unwrap();
        let dev = VmGeneration::new(g);
        assert_eq!(read(&dev, 0, 8), g.generation.to_le_bytes());
        assert_eq!(read(&dev, 8, 32), g.seed);
        let before = now_ns();
        let clock = u64::from_le_bytes(read(&dev, 40, 8).try_into().unwrap());
        assert!(clock >= before && clock - before < 1_000_000_000);
        // Past the end, and odd widths, read zeros without panicking.
        let mut wide = [0xffu8; 8];
        dev.read(44, &mut wide);
        assert_eq!(&wide[4..], &[0; 4]);
        dev.read(u64::MAX, &mut wide);
        assert_eq!(wide, [0; 8]);
        assert_eq!(dev.generation(), g.generation);
    }

    #[test]
    fn generations_differ() {
        let a = Generation::fresh().unwrap();
        let b = Generation::fresh().unwrap();
        assert_ne!(a, b);
    }
}
