//! `blk-ro`: a disk the VMM attaches read-only is read-only to Linux, and
//! every way of writing to it is refused.
//!
//! In order: `/sys/block/vda/ro` reads 1; a read-write ext4 mount of
//! /dev/vda fails (EROFS or EACCES); a read-only mount succeeds; creating a
//! file on it fails with EROFS; after unmounting, opening /dev/vda `O_WRONLY`
//! fails (EROFS, EACCES or EPERM) or, if the open succeeds (Linux 6.1 lets
//! it), writing sector 0 back unchanged with `pwrite` fails. If
//! `hearth.blk.bytes` is given, the size must match too.
//!
//! Nothing here can change the image even if a refusal is missing: the
//! probe file is only created when the file system is already writable,
//! and the sector written is the one just read.

use super::blockdev::{self, Mounted};
use super::{Context, Outcome};
use crate::cmdline::BLK_BYTES_PARAM;
use crate::sys::{File, SysError};

/// The file whose creation must be refused, relative to the mount point.
const PROBE_NAME: &str = "hearth-ro-probe";
const SECTOR: usize = 512;

pub fn run(ctx: &Context<'_>) -> Outcome {
    match execute(ctx) {
        Ok(detail) => Outcome::Pass(detail),
        Err(detail) => Outcome::Fail(detail),
    }
}

/// Whether a refusal came with an acceptable errno.
fn refused_with(err: &SysError, allowed: &[i32]) -> Result<String, String> {
    if allowed.contains(&err.errno) {
        Ok(err.name())
    } else {
        Err(format!("refused with an unexpected errno: {err}"))
    }
}

fn execute(ctx: &Context<'_>) -> Result<String, String> {
    let dev = blockdev::dev_path(blockdev::DISK);
    blockdev::wait_for_block_device(&dev)?;
    let mut detail = Vec::new();
    if let Some(expected) = ctx.cmdline.get_u64(BLK_BYTES_PARAM) {
        let size = blockdev::size_bytes(blockdev::DISK)?;
        blockdev::check_size(size, Some(expected))?;
        detail.push(format!("bytes={size}"));
    }

    if !blockdev::read_only(blockdev::DISK)? {
        return Err(format!("/sys/block/{}/ro is 0", blockdev::DISK));
    }
    detail.push("sysfs_ro=1".to_owned());

    // A read-write mount must be refused.
    match Mounted::mount(&dev, blockdev::MOUNT_POINT, blockdev::FSTYPE, 0) {
        Ok(mounted) => {
            let _ = mounted.unmount();
            return Err(format!(
                "mount({dev}, {}, ext4, rw) succeeded",
                blockdev::MOUNT_POINT
            ));
        }
        Err(e) => detail.push(format!(
            "mount_rw={}",
            refused_with(&e, &[libc::EROFS, libc::EACCES])?
        )),
    }

    // A read-only mount must work, and creating a file on it must not.
    let mounted = Mounted::mount(&dev, blockdev::MOUNT_POINT, blockdev::FSTYPE, libc::MS_RDONLY)
        .map_err(|e| e.to_string())?;
    detail.push("mount_ro=ok".to_owned());
    let probe = format!("{}/{PROBE_NAME}", blockdev::MOUNT_POINT);
    match File::open(&probe, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644) {
        Ok(file) => {
            drop(file);
            // The file system is writable after all: leave it as it was.
            let _ = std::fs::remove_file(&probe);
            return Err(format!("creating {probe} on the read-only mount succeeded"));
        }
        Err(e) => detail.push(format!("create={}", refused_with(&e, &[libc::EROFS])?)),
    }
    mounted.unmount().map_err(|e| e.to_string())?;

    // Writing to the device node itself.
    detail.push(device_write_refusal(&dev)?);
    Ok(detail.join(" "))
}

/// Opens the device `O_WRONLY`; if that is allowed, writes its sector 0
/// back unchanged. One of the two must be refused.
fn device_write_refusal(dev: &str) -> Result<String, String> {
    let mut sector = [0u8; SECTOR];
    let reader = File::open(dev, libc::O_RDONLY, 0).map_err(|e| e.to_string())?;
    let n = reader.pread(&mut sector, 0).map_err(|e| e.to_string())?;
    if n != SECTOR {
        return Err(format!("pread({dev}) read {n} of {SECTOR} bytes"));
    }
    drop(reader);
    let writer = match File::open(dev, libc::O_WRONLY, 0) {
        Ok(file) => file,
        Err(e) => {
            let name = refused_with(&e, &[libc::EROFS, libc::EACCES, libc::EPERM])?;
            return Ok(format!("open_wronly={name}"));
        }
    };
    match writer.pwrite(&sector, 0) {
        Ok(n) => Err(format!("pwrite({dev}, {SECTOR} bytes at 0) wrote {n} bytes")),
        Err(e) => Ok(format!("open_wronly=ok pwrite={}", e.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_errnos() {
        let e = SysError::new("mount(x)", libc::EACCES);
        assert_eq!(
            refused_with(&e, &[libc::EROFS, libc::EACCES]),
            Ok("EACCES".to_owned())
        );
        let e = SysError::new("open(x)", libc::ENOSPC);
        let err = refused_with(&e, &[libc::EROFS]).unwrap_err();
        assert!(
            err.contains("unexpected errno") && err.contains("ENOSPC"),
            "{err}"
        );
    }
}
