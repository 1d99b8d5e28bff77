//! `blk-write`: Linux's virtio-blk driver and ext4 write a file through
//! the VMM's device and read it back from the device.
//!
//! /dev/vda must be `hearth.blk.bytes` bytes and hold an ext4 file system.
//! The check mounts it read-write on /mnt, writes `/mnt/hearth-blk-test`
//! (`hearth.blk.len` bytes, default 1 MiB, in 64 KiB `write` calls; byte
//! `i` is `(i * 31 + 7) & 0xff` XOR the low byte of `hearth.blk.seed`,
//! default 0), fsyncs it, reads it back with `O_DIRECT` (so from the device,
//! not the page cache), compares and unmounts, which leaves the data on the
//! disk image for the host to check.

use super::blockdev::{self, Mounted};
use super::{Context, Outcome};
use crate::cmdline::{BLK_BYTES_PARAM, BLK_LEN_PARAM, BLK_SEED_PARAM};
use crate::sys::File;

/// The file written, relative to the mount point.
pub const FILE_NAME: &str = "hearth-blk-test";
/// Default `hearth.blk.len`.
pub const DEFAULT_LEN: u64 = 1 << 20;
/// Bytes per `write` (and `read`) call.
const CHUNK: usize = 64 << 10;
/// Buffer alignment `O_DIRECT` needs (a page covers any block size).
const DIRECT_ALIGN: usize = 4096;

pub fn run(ctx: &Context<'_>) -> Outcome {
    match execute(ctx) {
        Ok(detail) => Outcome::Pass(detail),
        Err(detail) => Outcome::Fail(detail),
    }
}

fn execute(ctx: &Context<'_>) -> Result<String, String> {
    let len = optional_param(ctx, BLK_LEN_PARAM, DEFAULT_LEN)?;
    let seed = optional_param(ctx, BLK_SEED_PARAM, 0)?;
    let dev = blockdev::dev_path(blockdev::DISK);
    blockdev::wait_for_block_device(&dev)?;
    let size = blockdev::size_bytes(blockdev::DISK)?;
    blockdev::check_size(size, ctx.cmdline.get_u64(BLK_BYTES_PARAM))?;

    let mounted =
        Mounted::mount(&dev, blockdev::MOUNT_POINT, blockdev::FSTYPE, 0).map_err(|e| e.to_string())?;
    let path = format!("{}/{FILE_NAME}", blockdev::MOUNT_POINT);
    write_pattern(&path, len, seed)?;
    read_back(&path, len, seed)?;
    mounted.unmount().map_err(|e| e.to_string())?;
    Ok(format!("bytes={size} wrote={len}"))
}

/// `key=N` if present, else `default`; an unparsable value is an error.
fn optional_param(ctx: &Context<'_>, key: &str, default: u64) -> Result<u64, String> {
    match ctx.cmdline.get_u64(key) {
        None => Ok(default),
        Some(Ok(n)) => Ok(n),
        Some(Err(bad)) => Err(format!("{key}={bad:?} is not a number")),
    }
}

/// Byte `offset` of the test file.
pub fn pattern_byte(offset: u64, seed: u64) -> u8 {
    // Only the low byte matters, so wrapping arithmetic gives the same
    // result as exact arithmetic would.
    let value = offset.wrapping_mul(31).wrapping_add(7) ^ seed;
    value.to_le_bytes()[0]
}

/// Fills `buf` with the pattern bytes of file offsets `offset..`.
pub fn fill_pattern(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, b) in (offset..).zip(buf.iter_mut()) {
        *b = pattern_byte(i, seed);
    }
}

/// The first byte of `buf` (at file offset `offset`) that differs from the
/// pattern: `(offset, expected, found)`.
pub fn first_mismatch(buf: &[u8], offset: u64, seed: u64) -> Option<(u64, u8, u8)> {
    (offset..)
        .zip(buf.iter())
        .map(|(i, &found)| (i, pattern_byte(i, seed), found))
        .find(|&(_, expected, found)| expected != found)
}

fn write_pattern(path: &str, len: u64, seed: u64) -> Result<(), String> {
    let file =
        File::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    while written < len {
        let want = usize::try_from(len - written).map_or(CHUNK, |rest| rest.min(CHUNK));
        let chunk = buf.get_mut(..want).unwrap_or_default();
        fill_pattern(chunk, written, seed);
        let n = file
            .write(chunk)
            .map_err(|e| format!("{e} at offset {written}"))?;
        if n == 0 {
            return Err(format!("write({path}) wrote nothing at offset {written}"));
        }
        // A short write is fine: the next call regenerates from `written`.
        written += n as u64;
    }
    file.fsync().map_err(|e| e.to_string())?;
    file.close().map_err(|e| e.to_string())
}

/// A buffer of `len` bytes starting on a [`DIRECT_ALIGN`] boundary.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        Self { storage, start, len }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.storage
            .get_mut(self.start..self.start + self.len)
            .unwrap_or_default()
    }
}

fn read_back(path: &str, len: u64, seed: u64) -> Result<(), String> {
    let file = File::open(path, libc::O_RDONLY | libc::O_DIRECT, 0).map_err(|e| e.to_string())?;
    let mut aligned = AlignedBuf::new(CHUNK);
    let buf = aligned.as_mut_slice();
    let mut read = 0u64;
    loop {
        let n = file.read(buf).map_err(|e| format!("{e} at offset {read}"))?;
        let data = buf.get(..n).unwrap_or_default();
        if let Some((at, expected, found)) = first_mismatch(data, read, seed) {
            return Err(format!(
                "read back {path}: byte {at} is {found:#04x}, expected {expected:#04x}"
            ));
        }
        read += n as u64;
        if read > len {
            return Err(format!("read back {path}: more than the {len} bytes written"));
        }
        // With O_DIRECT a short read means end of file: do not issue an
        // unaligned read past it.
        if n < CHUNK {
            break;
        }
    }
    if read != len {
        return Err(format!("read back {path}: {read} bytes, wrote {len}"));
    }
    file.close().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_definition() {
        for seed in [0u64, 5, 0xff, 0x1234] {
            for i in (0u64..1000).chain([u64::MAX - 3, 1 << 40]) {
                let exact = ((u128::from(i) * 31 + 7) & 0xff) as u8 ^ (seed & 0xff) as u8;
                assert_eq!(pattern_byte(i, seed), exact, "i={i} seed={seed}");
            }
        }
        assert_eq!(pattern_byte(0, 0), 7);
        assert_eq!(pattern_byte(1, 0), 38);
        assert_eq!(pattern_byte(0, 5), 2);
        // Only the seed's low byte counts.
        assert_eq!(pattern_byte(9, 0x105), pattern_byte(9, 5));
    }

    #[test]
    fn fill_and_compare_at_an_offset() {
        let mut buf = vec![0u8; 300];
        fill_pattern(&mut buf, 65536, 5);
        assert_eq!(buf[0], pattern_byte(65536, 5));
        assert_eq!(buf[299], pattern_byte(65835, 5));
        assert_eq!(first_mismatch(&buf, 65536, 5), None);
        assert_eq!(first_mismatch(&buf, 65536, 6).map(|(at, _, _)| at), Some(65536));
        buf[17] ^= 1;
        assert_eq!(
            first_mismatch(&buf, 65536, 5),
            Some((65553, pattern_byte(65553, 5), pattern_byte(65553, 5) ^ 1))
        );
    }

    #[test]
    fn aligned_buffer() {
        let mut b = AlignedBuf::new(CHUNK);
        let s = b.as_mut_slice();
        assert_eq!(s.len(), CHUNK);
        assert_eq!(s.as_ptr() as usize % DIRECT_ALIGN, 0);
    }

    #[test]
    fn write_and_read_back_on_host() {
        let dir = std::env::temp_dir().join(format!("hearth-init-blkw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        let path = path.to_str().unwrap();
        // Not a multiple of the chunk nor of a block: exercises the tail.
        let len = 3 * CHUNK as u64 + 1000;
        write_pattern(path, len, 5).unwrap();
        let data = std::fs::read(path).unwrap();
        assert_eq!(data.len() as u64, len);
        assert_eq!(first_mismatch(&data, 0, 5), None);
        // O_DIRECT may be refused by the host's temp file system (tmpfs).
        match read_back(path, len, 5) {
            Ok(()) => {
                assert!(read_back(path, len, 6).unwrap_err().contains("byte 0"));
                assert!(read_back(path, len + 1, 5).unwrap_err().contains("bytes, wrote"));
            }
            Err(e) => assert!(e.contains("EINVAL"), "{e}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
