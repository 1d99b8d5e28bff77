//! Guest memory in a snapshot: a file laid out like guest RAM (the RAM
//! ranges back to back), holding only pages that are non-zero. Pages the
//! guest never touched and pages of zeros stay holes, so a 128 MiB guest
//! that used 10 MiB writes about 10 MiB.
//!
//! A **diff** snapshot's memory file holds only the pages written since
//! the VM was restored from its parent (the kernel knows them: see
//! [`pagemap`](super::pagemap)), back to back, with the state listing
//! where each run goes. Restore maps the full snapshot at the root of the
//! chain, then each diff's runs over it, in order.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::seek_hole::SeekHole;

use super::state::Extent;
use crate::arch::x86_64::layout::ram_ranges;
use crate::memory::GuestMemoryMmap;

const PAGE: usize = 4096;
/// Non-zero pages are written in runs of up to this many bytes.
const RUN: usize = 1 << 20;

/// How restored memory is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMemory {
    /// Map the memory file privately: pages load on first touch and stay
    /// shared (copy-on-write) between VMs restored from the same file.
    #[default]
    Lazy,
    /// Read the whole file into anonymous memory up front.
    Eager,
}

/// What saving memory did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Guest memory size.
    pub size: u64,
    /// Bytes written (non-zero pages).
    pub written: u64,
}

/// Marks, one byte per page, the pages that may hold data: resident
/// ones (mincore) and, for file-backed regions, those over file data.
fn candidate_pages<R: GuestMemoryRegion>(region: &R, host: *mut u8, len: usize) -> io::Result<Vec<bool>> {
    let pages = len / PAGE;
    let mut resident = vec![0u8; pages];
    // SAFETY: `host..host + len` is the region's live mapping, page aligned,
    // and `resident` has one byte for each of its pages.
    let rc = unsafe { libc::mincore(host.cast(), len, resident.as_mut_ptr()) };
    let mut candidates: Vec<bool> = if rc == 0 {
        resident.iter().map(|r| r & 1 == 1).collect()
    } else {
        vec![true; pages]
    };
    if let Some(fo) = region.file_offset() {
        let mut file = fo.file().try_clone()?;
        let (start, end) = (fo.start(), fo.start() + len as u64);
        let mut pos = start;
        while pos < end {
            let Some(data) = file.seek_data(pos)? else { break };
            if data >= end {
                break;
            }
            let hole = file.seek_hole(data)?.unwrap_or(end).min(end);
            let first = ((data - start) as usize) / PAGE;
            let last = ((hole - start) as usize).div_ceil(PAGE);
            for c in candidates.iter_mut().take(last).skip(first) {
                *c = true;
            }
            pos = hole;
        }
    }
    Ok(candidates)
}

/// Writes guest memory to `path` as a sparse file.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> io::Result<MemoryStats> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    save_to(mem, &file)
}

/// Writes guest memory into `file` (empty) as a sparse image.
pub fn save_to(mem: &GuestMemoryMmap, file: &File) -> io::Result<MemoryStats> {
    let size: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(size)?;
    let mut stats = MemoryStats { size, written: 0 };
    let mut file_base = 0u64;
    let mut page = vec![0u8; PAGE];
    let mut run: Vec<u8> = Vec::with_capacity(RUN);
    let mut run_start = 0u64;
    let flush = |run: &mut Vec<u8>, at: u64, stats: &mut MemoryStats| -> io::Result<()> {
        if !run.is_empty() {
            file.write_all_at(run, at)?;
            stats.written += run.len() as u64;
            run.clear();
        }
        Ok(())
    };
    for region in mem.iter() {
        let len = region.len() as usize;
        let candidates = candidate_pages(region, region.as_ptr(), len)?;
        for (i, candidate) in candidates.iter().enumerate() {
            let offset = file_base + (i * PAGE) as u64;
            let addr = GuestAddress(region.start_addr().0 + (i * PAGE) as u64);
            let keep = *candidate && mem.read_slice(&mut page, addr).is_ok() && page.iter().any(|&b| b != 0);
            if !keep || run_start + run.len() as u64 != offset || run.len() + PAGE > RUN {
                flush(&mut run, run_start, &mut stats)?;
                run_start = offset;
            }
            if keep {
                if run.is_empty() {
                    run_start = offset;
                }
                run.extend_from_slice(&page);
            }
        }
        flush(&mut run, run_start, &mut stats)?;
        file_base += len as u64;
    }
    Ok(stats)
}

/// Writes the pages of `mem` written since it was mapped from its parent
/// snapshot (zeros included: a page that became zero is a change) to
/// `path`, back to back; returns the stats and the runs.
pub fn save_diff(mem: &GuestMemoryMmap, path: &Path) -> io::Result<(MemoryStats, Vec<Extent>)> {
    let size: u64 = mem.iter().map(|r| r.len()).sum();
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut stats = MemoryStats { size, written: 0 };
    let mut extents: Vec<Extent> = Vec::new();
    let mut file_base = 0u64;
    let mut run = vec![0u8; RUN];
    for region in mem.iter() {
        let len = region.len() as usize;
        let changed = crate::pagemap::changed_pages(region.as_ptr() as usize, len)?;
        let mut i = 0;
        while i < changed.len() {
            if !changed[i] {
                i += 1;
                continue;
            }
            let first = i;
            while i < changed.len() && changed[i] && (i - first + 1) * PAGE <= RUN {
                i += 1;
            }
            let n = (i - first) * PAGE;
            let addr = GuestAddress(region.start_addr().0 + (first * PAGE) as u64);
            mem.read_slice(&mut run[..n], addr)
                .map_err(|e| invalid(format!("reading guest memory: {e}")))?;
            file.write_all_at(&run[..n], stats.written)?;
            let offset = file_base + (first * PAGE) as u64;
            match extents.last_mut() {
                Some(last) if last.offset + last.len == offset && last.at + last.len == stats.written => {
                    last.len += n as u64;
                }
                _ => extents.push(Extent {
                    offset,
                    len: n as u64,
                    at: stats.written,
                }),
            }
            stats.written += n as u64;
        }
        file_base += len as u64;
    }
    Ok((stats, extents))
}

/// One memory file of a restore chain: the full snapshot at the root
/// (`extents: None`), or a diff with its runs.
#[derive(Clone, Debug)]
pub(crate) struct MemoryLayer {
    pub path: std::path::PathBuf,
    pub extents: Option<Vec<Extent>>,
}

/// Mappings a lazy restore may add for diff runs; past it, runs are read
/// into memory instead (the process has a mapping-count limit, 65 530 by
/// default).
pub(crate) const MAX_DIFF_MAPPINGS: usize = 4096;

/// Where the flat-layout offset `offset` (a run of `len` bytes) is in
/// `mem`: its host address, or `None` if the run is not inside one region.
fn host_address(mem: &GuestMemoryMmap, offset: u64, len: u64) -> Option<*mut u8> {
    let mut base = 0u64;
    for region in mem.iter() {
        let rlen = region.len();
        if offset >= base && offset.checked_add(len)? <= base + rlen {
            let within = usize::try_from(offset - base).ok()?;
            // The region's mapping is at least `within + len` long.
            return Some(region.as_ptr().wrapping_add(within));
        }
        base += rlen;
    }
    None
}

/// Applies a diff's runs over `mem`: maps them from the file (lazy,
/// within `budget` mappings) or reads them in.
fn apply_diff(mem: &GuestMemoryMmap, layer: &MemoryLayer, lazy: bool, budget: &mut usize) -> io::Result<()> {
    let Some(extents) = &layer.extents else {
        return Ok(());
    };
    let file = File::open(&layer.path)?;
    let flat_to_guest = |offset: u64| -> Option<GuestAddress> {
        let mut base = 0u64;
        for region in mem.iter() {
            if offset >= base && offset < base + region.len() {
                return Some(GuestAddress(region.start_addr().0 + (offset - base)));
            }
            base += region.len();
        }
        None
    };
    for e in extents {
        let host = host_address(mem, e.offset, e.len)
            .ok_or_else(|| invalid(format!("diff run at {:#x} is outside guest memory", e.offset)))?;
        let len = usize::try_from(e.len).map_err(|_| invalid("diff run too long".into()))?;
        if lazy && *budget > 0 {
            *budget -= 1;
            // SAFETY: `host..host + len` lies inside a guest RAM mapping this
            // function's caller created and still owns, page-aligned (the
            // runs are whole pages, checked when the snapshot was opened),
            // and nothing references those pages yet (no vCPU or device runs
            // before restore completes). MAP_FIXED replaces that part of the
            // private mapping with a private mapping of the diff file; the
            // region's own munmap later covers it.
            let p = unsafe {
                libc::mmap(
                    host.cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    i64::try_from(e.at).map_err(|_| invalid("diff offset too large".into()))?,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        } else {
            let addr = flat_to_guest(e.offset)
                .ok_or_else(|| invalid(format!("diff run at {:#x} is outside guest memory", e.offset)))?;
            let mut f = &file;
            f.seek(SeekFrom::Start(e.at))?;
            mem.read_exact_volatile_from(addr, &mut f, len)
                .map_err(|err| invalid(format!("reading {}: {err}", layer.path.display())))?;
        }
    }
    Ok(())
}

/// Maps (or reads) one full memory file already open (a fork's memfd).
pub fn load_file(file: &File, size: u64, mode: RestoreMemory) -> io::Result<GuestMemoryMmap> {
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file)));
    load(&path, size, mode)
}

/// Maps (or reads) a chain of memory files, root first, as guest memory.
pub fn load_chain(layers: &[MemoryLayer], size: u64, mode: RestoreMemory) -> io::Result<GuestMemoryMmap> {
    let root = layers
        .first()
        .ok_or_else(|| invalid("no memory file in the snapshot chain".into()))?;
    let mem = load(&root.path, size, mode)?;
    let mut budget = MAX_DIFF_MAPPINGS;
    for layer in &layers[1..] {
        apply_diff(&mem, layer, mode == RestoreMemory::Lazy, &mut budget)?;
    }
    Ok(mem)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Maps (or reads) a memory file of `size` bytes as guest memory.
pub fn load(path: &Path, size: u64, mode: RestoreMemory) -> io::Result<GuestMemoryMmap> {
    let mut file = File::open(path)?;
    let found = file.metadata()?.len();
    if found != size {
        return Err(invalid(format!(
            "memory file {} is {found} bytes, but the snapshot's guest has {size}",
            path.display()
        )));
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len).map_err(|_| invalid("memory too large".into()))?;
        let builder =
            MmapRegionBuilder::<()>::new(len_usize).with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        let region = match mode {
            RestoreMemory::Lazy => builder
                .with_file_offset(FileOffset::new(file.try_clone()?, offset))
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build(),
            RestoreMemory::Eager => builder
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                .build(),
        }
        .map_err(|e| invalid(format!("cannot map guest memory: {e}")))?;
        regions.push(
            vm_memory::GuestRegionMmap::new(region, GuestAddress(start))
                .ok_or_else(|| invalid("guest memory region overflows".into()))?,
        );
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| invalid(e.to_string()))?;
    if mode == RestoreMemory::Eager {
        read_data_extents(&mut file, &mem, size)?;
    }
    Ok(mem)
}

/// Copies the file's data extents (not its holes) into guest memory.
fn read_data_extents(file: &mut File, mem: &GuestMemoryMmap, size: u64) -> io::Result<()> {
    let ranges = ram_ranges(size);
    let mut pos = 0u64;
    while pos < size {
        let Some(data) = file.seek_data(pos)? else { break };
        let hole = file.seek_hole(data)?.unwrap_or(size).min(size);
        // Map file offsets back to guest addresses, range by range.
        let mut file_base = 0u64;
        for &(start, len) in &ranges {
            let (lo, hi) = (data.max(file_base), hole.min(file_base + len));
            if lo < hi {
                file.seek(SeekFrom::Start(lo))?;
                mem.read_exact_volatile_from(
                    GuestAddress(start + (lo - file_base)),
                    file,
                    (hi - lo) as usize,
                )
                .map_err(|e| invalid(format!("reading the memory file: {e}")))?;
            }
            file_base += len;
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MemoryBacking};

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-snapmem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn only_nonzero_pages_are_written_and_come_back() {
        let mem = create_guest_memory(64 << 20, MemoryBacking::Anonymous).unwrap();
        mem.write_slice(&[0xaa; 3 * PAGE], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x3ff_fffc)).unwrap();
        // A touched page of zeros is skipped too.
        mem.write_slice(&[0u8; PAGE], GuestAddress(0x20_0000)).unwrap();
        let path = tmp("mem1");
        let stats = save(&mem, &path).unwrap();
        assert_eq!(stats.size, 64 << 20);
        assert_eq!(stats.written, 4 * PAGE as u64);
        assert!(allocated_bytes(&path) <= 64 << 10, "the file must be sparse");
        for mode in [RestoreMemory::Lazy, RestoreMemory::Eager] {
            let back = load(&path, 64 << 20, mode).unwrap();
            let mut b = vec![0u8; 3 * PAGE];
            back.read_slice(&mut b, GuestAddress(0x10_0000)).unwrap();
            assert!(b.iter().all(|&x| x == 0xaa), "{mode:?}");
            assert_eq!(
                back.read_obj::<u32>(GuestAddress(0x3ff_fffc)).unwrap(),
                0x1234_5678
            );
            assert_eq!(back.read_obj::<u64>(GuestAddress(0x50_0000)).unwrap(), 0);
        }
    }

    #[test]
    fn private_mapping_does_not_write_back_and_resaves_fully() {
        let mem = create_guest_memory(16 << 20, MemoryBacking::Anonymous).unwrap();
        mem.write_obj(7u64, GuestAddress(0x1000)).unwrap();
        let path = tmp("mem2");
        save(&mem, &path).unwrap();
        let restored = load(&path, 16 << 20, RestoreMemory::Lazy).unwrap();
        restored.write_obj(9u64, GuestAddress(0x2000)).unwrap();
        // The file is untouched by the guest's write...
        let again = load(&path, 16 << 20, RestoreMemory::Lazy).unwrap();
        assert_eq!(again.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 0);
        // ...and a snapshot of the restored VM has both the file's pages and
        // the new one, even for file pages it never touched.
        let path2 = tmp("mem3");
        let stats = save(&restored, &path2).unwrap();
        assert_eq!(stats.written, 2 * PAGE as u64);
        let third = load(&path2, 16 << 20, RestoreMemory::Eager).unwrap();
        assert_eq!(third.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 7);
        assert_eq!(third.read_obj::<u64>(GuestAddress(0x2000)).unwrap(), 9);
    }

    #[test]
    fn wrong_size_or_missing_file_is_refused() {
        let mem = create_guest_memory(8 << 20, MemoryBacking::Anonymous).unwrap();
        let path = tmp("mem4");
        save(&mem, &path).unwrap();
        let e = load(&path, 16 << 20, RestoreMemory::Lazy).unwrap_err();
        assert!(e.to_string().contains("is 8388608 bytes"), "{e}");
        assert!(load(&tmp("nope"), 8 << 20, RestoreMemory::Lazy).is_err());
    }
}
