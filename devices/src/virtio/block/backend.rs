//! Disk backends: the storage behind a virtio-blk device.
//!
//! [`DiskBackend`] is public so that library users can supply their own
//! storage; [`FileDisk`] (a raw image file or block device) and
//! [`MemoryDisk`] (for tests) ship here.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::request::SECTOR_SIZE;

/// Storage for a virtio-blk device. Offsets and lengths are in bytes and
/// have been checked against [`capacity`](Self::capacity).
pub trait DiskBackend: Send {
    /// Size in bytes (a multiple of 512).
    fn capacity(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Deallocates a range (it then reads as zeros).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeroes a range; `unmap` allows deallocating it.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The copy-on-write overlay this backend is, if it is one (snapshots
    /// and forks freeze it).
    fn overlay(&mut self) -> Option<&mut super::overlay::OverlayDisk> {
        None
    }
}

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The file cannot be opened.
    #[error("cannot open disk {}: {source}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path is a directory (or another non-disk file).
    #[error("disk {} is not a regular file or block device", path.display())]
    NotADisk {
        /// The path.
        path: PathBuf,
    },
    /// A read-only file asked for read-write.
    #[error("disk {} is read-only (mode {mode:o}); attach it with ro", path.display())]
    ReadOnlyFile {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The size is not a whole number of sectors.
    #[error("disk {} is {size} bytes, not a multiple of 512", path.display())]
    BadSize {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// A raw disk image file (or block device).
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    capacity: u64,
}

impl FileDisk {
    /// Opens `path`, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let is_blockdev = std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type());
        if !meta.is_file() && !is_blockdev {
            return Err(DiskError::NotADisk { path: path.into() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        // Root may open a file without write bits read-write; refuse anyway,
        // since the file's owner marked it read-only.
        if !read_only && mode & 0o222 == 0 {
            return Err(DiskError::ReadOnlyFile {
                path: path.into(),
                mode,
            });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let capacity = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if capacity % SECTOR_SIZE != 0 {
            return Err(DiskError::BadSize {
                path: path.into(),
                size: capacity,
            });
        }
        Ok(Self { file, capacity })
    }
}

impl DiskBackend for FileDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(io::Error::from)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            FallocateMode::PunchHole
        } else {
            FallocateMode::ZeroRange
        };
        match fallocate(&self.file, mode, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == libc::EOPNOTSUPP => write_zeroes_slowly(self, offset, len),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes zeros in 64 KiB pieces, for files that cannot fallocate.
fn write_zeroes_slowly(disk: &mut dyn DiskBackend, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; 64 << 10];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        disk.write_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A disk in memory, for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct MemoryDisk {
    data: Vec<u8>,
    /// Count of flushes, so tests can check them.
    pub flushes: u64,
}

impl MemoryDisk {
    /// A zeroed disk of `sectors` sectors.
    pub fn new(sectors: u64) -> Self {
        Self::from_bytes(vec![0; (sectors * SECTOR_SIZE) as usize])
    }

    /// A disk holding `data` (its length is rounded down to sectors).
    pub fn from_bytes(mut data: Vec<u8>) -> Self {
        data.truncate(data.len() - data.len() % SECTOR_SIZE as usize);
        Self { data, flushes: 0 }
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    fn range(&mut self, offset: u64, len: usize) -> io::Result<&mut [u8]> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        self.data
            .get_mut(start..end)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

impl DiskBackend for MemoryDisk {
    fn capacity(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(self.range(offset, buf.len())?);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.range(offset, buf.len())?.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.range(offset, len)?.fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str, size: u64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    #[test]
    fn file_disk_reads_writes_discards() {
        let p = tmpfile("rw.img", 1 << 20);
        let mut d = FileDisk::open(&p, false).unwrap();
        assert_eq!(d.capacity(), 1 << 20);
        d.write_at(&[0xab; 4096], 8192).unwrap();
        d.flush().unwrap();
        let mut buf = [0u8; 4096];
        d.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [0xab; 4096]);
        d.discard(8192, 4096).unwrap();
        d.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [0; 4096]);
        d.write_at(&[1; 512], 0).unwrap();
        d.write_zeroes(0, 512, false).unwrap();
        d.read_at(&mut buf[..512], 0).unwrap();
        assert_eq!(buf[..512], [0; 512]);
        assert!(
            d.read_at(&mut buf, (1 << 20) - 512).is_err(),
            "reads past the end fail"
        );
    }

    #[test]
    fn file_disk_refuses_bad_inputs() {
        let odd = tmpfile("odd.img", 1000);
        assert!(matches!(
            FileDisk::open(&odd, true),
            Err(DiskError::BadSize { size: 1000, .. })
        ));
        assert!(matches!(
            FileDisk::open(Path::new("/nonexistent.img"), true),
            Err(DiskError::Open { .. })
        ));
        assert!(matches!(
            FileDisk::open(&std::env::temp_dir(), true),
            Err(DiskError::NotADisk { .. })
        ));
        let ro = tmpfile("ro.img", 4096);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
        let e = FileDisk::open(&ro, false).unwrap_err();
        assert!(e.to_string().contains("read-only"), "{e}");
        assert!(FileDisk::open(&ro, true).is_ok());
    }

    #[test]
    fn read_only_disk_cannot_write() {
        let p = tmpfile("ro2.img", 4096);
        let mut d = FileDisk::open(&p, true).unwrap();
        assert!(d.write_at(&[1; 512], 0).is_err());
    }

    #[test]
    fn memory_disk_bounds() {
        let mut d = MemoryDisk::new(2);
        assert_eq!(d.capacity(), 1024);
        d.write_at(&[7; 512], 512).unwrap();
        assert!(d.write_at(&[7; 512], 1000).is_err());
        assert!(d.read_at(&mut [0; 8], u64::MAX).is_err());
        assert_eq!(d.bytes()[512], 7);
    }
}
