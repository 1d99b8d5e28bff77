//! `/proc/self/pagemap`: one 64-bit entry per virtual page of this process
//! (Documentation/admin-guide/mm/pagemap.rst): bit 63 present, bit 62
//! swapped, bit 61 "file page or shared anonymous". Opened once, read in
//! batches; used for guest memory accounting (`observe::memory`) and for
//! which pages a VM restored from a snapshot has written since
//! (`snapshot::memory`, diff snapshots): a written page of a `MAP_PRIVATE`
//! file mapping becomes an anonymous copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

const PAGE: usize = 4096;
/// Entry bit: the page is present.
pub(crate) const PRESENT: u64 = 1 << 63;
/// Entry bit: the page is swapped out.
pub(crate) const SWAPPED: u64 = 1 << 62;
/// Entry bit: a file page or shared anonymous.
pub(crate) const FILE_OR_SHARED: u64 = 1 << 61;
/// Entries read per system call.
const BATCH: usize = 8192;

/// `/proc/self/pagemap`, opened once (before any seccomp filter or jail
/// took `/proc` away). `None` where it cannot be opened.
pub(crate) fn pagemap() -> Option<&'static File> {
    static FILE: OnceLock<Option<File>> = OnceLock::new();
    FILE.get_or_init(|| File::open("/proc/self/pagemap").ok())
        .as_ref()
}

/// Calls `f` with the entry of each page of `[start, end)` (page-aligned
/// addresses), in order.
pub(crate) fn for_each_entry(pagemap: &File, start: u64, end: u64, mut f: impl FnMut(u64)) -> io::Result<()> {
    let mut buf = vec![0u8; BATCH * 8];
    let mut page = start / PAGE as u64;
    let last = end / PAGE as u64;
    while page < last {
        let n = (last - page).min(BATCH as u64) as usize;
        let bytes = buf.get_mut(..n * 8).unwrap_or_default();
        pagemap.read_exact_at(bytes, page * 8)?;
        for e in bytes.chunks_exact(8) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(e);
            f(u64::from_le_bytes(raw));
        }
        page += n as u64;
    }
    Ok(())
}

/// Whether a pagemap entry is a page written since a private file mapping
/// (present and anonymous, or swapped: only anonymous pages swap).
pub(crate) fn is_changed(entry: u64) -> bool {
    (entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0) || entry & SWAPPED != 0
}

/// For each page of `[start, start + len)` in this process, whether it
/// was written since it was mapped privately from a file.
pub(crate) fn changed_pages(start: usize, len: usize) -> io::Result<Vec<bool>> {
    let file = pagemap().ok_or_else(|| io::Error::other("/proc/self/pagemap could not be opened"))?;
    let mut out = Vec::with_capacity(len / PAGE);
    for_each_entry(file, start as u64, (start + len) as u64, |e| {
        out.push(is_changed(e))
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn written_pages_of_a_private_file_mapping_are_changed() {
        let path = std::env::temp_dir().join(format!("hearth-pagemap-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&[7u8; 16 * PAGE], 0).unwrap();
        let len = 16 * PAGE;
        // SAFETY: a fresh private mapping of our own file, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p.cast::<u8>();
        // SAFETY: offsets within the 16-page mapping.
        unsafe {
            let _ = std::ptr::read_volatile(base.add(PAGE)); // read: still the file's
            std::ptr::write_volatile(base.add(3 * PAGE), 1); // written: a private copy
            std::ptr::write_volatile(base.add(9 * PAGE + 17), 2);
        }
        let changed = changed_pages(base as usize, len).unwrap();
        let which: Vec<usize> = changed
            .iter()
            .enumerate()
            .filter(|(_, c)| **c)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(which, vec![3, 9]);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
        let _ = std::fs::remove_file(&path);
    }
}
