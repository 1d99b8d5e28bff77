//! How much of guest memory is resident, and how much of that is the VM's
//! own (private) versus shared with a file: a snapshot's memory file that
//! clones map copy-on-write, a fork's memfd, or memfd backing.
//!
//! Read from the page tables through `/proc/self/pagemap`: with the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7+), which returns runs of pages with the
//! same flags and costs time in proportion to the resident pages; else by
//! reading one 64-bit entry per page (Documentation/admin-guide/mm/
//! pagemap.rst).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;
use crate::pagemap::{for_each_entry, pagemap, FILE_OR_SHARED, PRESENT, SWAPPED};

const PAGE: u64 = 4096;

/// Guest memory use at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemoryUsage {
    /// Guest RAM size.
    pub guest_bytes: u64,
    /// Pages present in memory or swapped out.
    pub resident_bytes: u64,
    /// Resident pages only this VM holds: anonymous memory, including the
    /// pages a clone copied on write.
    pub private_bytes: u64,
    /// Resident pages backed by a file or shared memory: for a clone, the
    /// snapshot's pages it reads without copying.
    pub shared_bytes: u64,
}

// linux/fs.h: struct pm_scan_arg, struct page_region, the categories.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub(crate) const PAGEMAP_SCAN: u64 = 0xc060_6610;
const REGIONS: usize = 256;

/// Adds up the pages of `[start, end)` by category.
#[derive(Default)]
struct Tally {
    resident: u64,
    private: u64,
    shared: u64,
}

impl Tally {
    fn add(&mut self, pages: u64, present_or_swapped: bool, file: bool) {
        if !present_or_swapped {
            return;
        }
        self.resident += pages;
        if file {
            self.shared += pages;
        } else {
            self.private += pages;
        }
    }
}

/// With PAGEMAP_SCAN; `Err` if the kernel does not have it.
fn scan(pagemap: &File, start: u64, end: u64, tally: &mut Tally) -> io::Result<()> {
    let mut regions = [PageRegion::default(); REGIONS];
    let mut from = start;
    while from < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: from,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: REGIONS as u64,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
            ..PmScanArg::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at
        // `regions`, REGIONS entries the kernel may fill; both outlive the
        // call. The ioctl only reads page tables.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in regions.iter().take(n as usize) {
            let pages = r.end.saturating_sub(r.start) / PAGE;
            tally.add(pages, true, r.categories & PAGE_IS_FILE != 0);
        }
        if arg.walk_end <= from {
            break;
        }
        from = arg.walk_end;
    }
    Ok(())
}

/// By reading every entry.
fn read_entries(pagemap: &File, start: u64, end: u64, tally: &mut Tally) -> io::Result<()> {
    for_each_entry(pagemap, start, end, |e| {
        tally.add(1, e & (PRESENT | SWAPPED) != 0, e & FILE_OR_SHARED != 0);
    })
}

/// Samples `mem`'s use now; `None` without `/proc/self/pagemap`.
pub(crate) fn sample(mem: &GuestMemoryMmap) -> Option<MemoryUsage> {
    let pagemap = pagemap()?;
    let mut tally = Tally::default();
    let mut guest_bytes = 0;
    for region in mem.iter() {
        let start = region.as_ptr() as u64;
        let len = region.len();
        guest_bytes += len;
        let end = start + len;
        if let Err(e) = scan(pagemap, start, end, &mut tally) {
            if e.raw_os_error() != Some(libc::ENOTTY) && e.raw_os_error() != Some(libc::EINVAL) {
                log::debug!("PAGEMAP_SCAN failed: {e}");
            }
            tally = Tally::default();
            for region in mem.iter() {
                let start = region.as_ptr() as u64;
                read_entries(pagemap, start, start + region.len(), &mut tally).ok()?;
            }
            break;
        }
    }
    Some(MemoryUsage {
        guest_bytes,
        resident_bytes: tally.resident * PAGE,
        private_bytes: tally.private * PAGE,
        shared_bytes: tally.shared * PAGE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(
        f: impl Fn(&File, u64, u64, &mut Tally) -> io::Result<()>,
        start: u64,
        len: u64,
    ) -> (u64, u64, u64) {
        let mut t = Tally::default();
        f(pagemap().unwrap(), start, start + len, &mut t).unwrap();
        (t.resident, t.private, t.shared)
    }

    #[test]
    fn private_and_shared_pages_of_a_private_file_mapping() {
        let path = std::env::temp_dir().join(format!("hearth-memuse-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let pages = 64u64;
        file.set_len(pages * PAGE).unwrap();
        let len = (pages * PAGE) as usize;
        // SAFETY: a fresh private mapping of our own file, unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let base = ptr as *mut u8;
        // Read 10 pages (shared with the page cache), write 4 others.
        for i in 0..10 {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::read_volatile(base.add(i * PAGE as usize)) };
        }
        for i in 20..24 {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(base.add(i * PAGE as usize), 1) };
        }
        let by_entries = count(read_entries, ptr as u64, pages * PAGE);
        // Read faults map neighbouring page-cache pages too (fault-around):
        // at least the 10 read are shared.
        let (resident, private, shared) = by_entries;
        assert_eq!(private, 4, "{by_entries:?}");
        assert!(shared >= 10 && resident == private + shared, "{by_entries:?}");
        let mut t = Tally::default();
        match scan(pagemap().unwrap(), ptr as u64, ptr as u64 + pages * PAGE, &mut t) {
            Ok(()) => assert_eq!((t.resident, t.private, t.shared), by_entries),
            Err(e) => eprintln!("no PAGEMAP_SCAN here ({e}); the fallback was checked"),
        }
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(ptr, len) };
    }
}
