//! Guest RAM: one anonymous mapping per RAM range by default, or a memfd
//! (shareable, snapshot-friendly) when asked.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use serde::{Deserialize, Serialize};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_ranges;

/// Guest memory as the rest of Hearth sees it.
pub(crate) type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
type GuestRegionMmap = vm_memory::GuestRegionMmap<()>;

/// What backs guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryBacking {
    /// Private anonymous memory (the default, and the cheapest).
    #[default]
    Anonymous,
    /// A memfd mapped shared: the memory has a file descriptor that other
    /// processes or a snapshot writer can map.
    Memfd,
}

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The memfd could not be created or sized.
    #[error("cannot create a {size_mib} MiB memfd for guest memory: {source}")]
    Memfd {
        /// Requested size.
        size_mib: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The mapping failed.
    #[error("cannot map {size_mib} MiB of guest memory: {reason}")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// What went wrong.
        reason: String,
    },
}

pub(crate) fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string and the flags are
    // constants; the call creates a new descriptor and touches no memory.
    let fd = unsafe { libc::memfd_create(c"hearth-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by no one else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Allocates `size` bytes of guest RAM laid out around the MMIO gap.
pub(crate) fn create_guest_memory(size: u64, backing: MemoryBacking) -> Result<GuestMemoryMmap, MemoryError> {
    let size_mib = size >> 20;
    let map_err = |e: &dyn std::fmt::Display| MemoryError::Map {
        size_mib,
        reason: e.to_string(),
    };
    let ranges = ram_ranges(size);
    let file = match backing {
        MemoryBacking::Anonymous => None,
        MemoryBacking::Memfd => Some(memfd(size).map_err(|source| MemoryError::Memfd { size_mib, source })?),
    };
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        let file_offset = match &file {
            Some(f) => Some(FileOffset::new(
                f.try_clone()
                    .map_err(|source| MemoryError::Memfd { size_mib, source })?,
                offset,
            )),
            None => None,
        };
        let len = usize::try_from(len).map_err(|e| map_err(&e))?;
        regions.push(
            GuestRegionMmap::from_range(GuestAddress(start), len, file_offset).map_err(|e| map_err(&e))?,
        );
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(&e))
}

/// Host virtual address and length of each region, for KVM memslots.
pub(crate) fn host_regions(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u64)> {
    use vm_memory::GuestMemoryBackend;
    mem.iter()
        .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as u64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn anonymous_and_memfd_memory_work() {
        for backing in [MemoryBacking::Anonymous, MemoryBacking::Memfd] {
            let m = create_guest_memory(8 << 20, backing).unwrap();
            assert_eq!(m.num_regions(), 1);
            m.write_obj(0xdead_beefu32, GuestAddress(0x7ff_ffc)).unwrap();
            assert_eq!(m.read_obj::<u32>(GuestAddress(0x7ff_ffc)).unwrap(), 0xdead_beef);
            assert!(m.read_obj::<u32>(GuestAddress(8 << 20)).is_err());
            assert_eq!(host_regions(&m)[0].1, 8 << 20);
        }
    }
}
