//! Which pages of a private file mapping the process has written since
//! the mapping was made: the kernel records it, as a written page of a
//! `MAP_PRIVATE` file mapping becomes an anonymous copy. `/proc/self/pagemap`
//! has one 64-bit entry per virtual page (Documentation/admin-guide/mm/
//! pagemap.rst): bit 63 present, bit 62 swapped, bit 61 "file page or
//! shared anonymous". A page is written (changed) when it is present and
//! anonymous, or swapped (only anonymous pages swap).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_OR_SHARED: u64 = 1 << 61;
/// Entries read per system call.
const BATCH: usize = 8192;

/// Whether a pagemap entry is a page written since a private file mapping.
pub(crate) fn is_changed(entry: u64) -> bool {
    (entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0) || entry & SWAPPED != 0
}

/// For each page of `[start, start + len)` in this process, whether it
/// was written since it was mapped privately from a file.
pub(crate) fn changed_pages(start: usize, len: usize) -> io::Result<Vec<bool>> {
    let file = File::open("/proc/self/pagemap")?;
    let pages = len / PAGE;
    let mut out = Vec::with_capacity(pages);
    let mut buf = vec![0u8; BATCH * 8];
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(BATCH);
        let offset = ((start / PAGE + done) * 8) as u64;
        file.read_exact_at(&mut buf[..n * 8], offset)?;
        for entry in buf[..n * 8].chunks_exact(8) {
            let mut e = [0u8; 8];
            e.copy_from_slice(entry);
            out.push(is_changed(u64::from_le_bytes(e)));
        }
        done += n;
    }
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
