//! What the block-device checks share: finding /dev/vda, its sysfs
//! attributes, and a mount on /mnt that is undone however a check ends.

use std::time::{Duration, Instant};

use crate::sys::{self, SysError};

/// The disk the checks look at: the VMM's first `--disk`.
pub const DISK: &str = "vda";
/// Where the checks mount it (present in both guest images).
pub const MOUNT_POINT: &str = "/mnt";
/// The file system the checks mount.
pub const FSTYPE: &str = "ext4";
/// Bytes per sector in sysfs `size`, whatever the device's block size.
pub const SECTOR_BYTES: u64 = 512;
/// How long to wait for the device node (the driver may probe
/// asynchronously), and how often to look.
const WAIT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);

/// `/dev/<name>`.
pub fn dev_path(name: &str) -> String {
    format!("/dev/{name}")
}

/// Waits until `path` exists (polling), then checks it is a block device.
pub fn wait_for_block_device(path: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match sys::stat(path) {
            Ok(st) if sys::is_block_device(&st) => return Ok(()),
            Ok(st) => return Err(format!("{path} is not a block device (mode {:o})", st.st_mode)),
            Err(e) if e.errno == libc::ENOENT && start.elapsed() < WAIT => std::thread::sleep(POLL),
            Err(e) if e.errno == libc::ENOENT => {
                return Err(format!("{e} after waiting {} ms", WAIT.as_millis()))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// `/sys/block/<name>/<attribute>`.
fn sysfs_attr(name: &str, attribute: &str) -> Result<String, String> {
    sys::read_text(&format!("/sys/block/{name}/{attribute}")).map_err(|e| e.to_string())
}

/// The device's size in bytes, from `/sys/block/<name>/size`.
pub fn size_bytes(name: &str) -> Result<u64, String> {
    let text = sysfs_attr(name, "size")?;
    parse_sectors_as_bytes(&text).ok_or_else(|| format!("/sys/block/{name}/size: bad value {text:?}"))
}

/// Whether the kernel sees the device read-only (`/sys/block/<name>/ro`).
pub fn read_only(name: &str) -> Result<bool, String> {
    let text = sysfs_attr(name, "ro")?;
    parse_flag(&text).ok_or_else(|| format!("/sys/block/{name}/ro: bad value {text:?}"))
}

/// The device number, `(major, minor)`, from `/sys/block/<name>/dev`.
pub fn device_number(name: &str) -> Result<(u32, u32), String> {
    let text = sysfs_attr(name, "dev")?;
    parse_dev(&text).ok_or_else(|| format!("/sys/block/{name}/dev: bad value {text:?}"))
}

/// A sysfs sector count (`32768\n`) as bytes; `None` if malformed or the
/// product overflows.
pub fn parse_sectors_as_bytes(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok()?.checked_mul(SECTOR_BYTES)
}

/// A sysfs boolean: `0` or `1`.
pub fn parse_flag(text: &str) -> Option<bool> {
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// A sysfs device number: `major:minor`.
pub fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Compares the device's size with the `hearth.blk.bytes` the command line
/// asked for (see [`crate::cmdline::Cmdline::get_u64`]).
pub fn check_size(actual: u64, expected: Option<Result<u64, String>>) -> Result<(), String> {
    match expected {
        None => Err(format!(
            "size={actual} but {} is not on the command line",
            crate::cmdline::BLK_BYTES_PARAM
        )),
        Some(Err(bad)) => Err(format!(
            "size={actual} but {}={bad:?} is not a number",
            crate::cmdline::BLK_BYTES_PARAM
        )),
        Some(Ok(want)) if want == actual => Ok(()),
        Some(Ok(want)) => Err(format!("size={actual} expected={want}")),
    }
}

/// A file system mounted by a check: unmounted by [`Mounted::unmount`]
/// (which reports the error), or else, best effort, when dropped.
#[derive(Debug)]
pub struct Mounted {
    target: &'static str,
    mounted: bool,
}

impl Mounted {
    /// Mounts `source` on `target` with `flags`.
    pub fn mount(
        source: &str,
        target: &'static str,
        fstype: &str,
        flags: libc::c_ulong,
    ) -> Result<Self, SysError> {
        sys::mount(source, target, fstype, flags)?;
        Ok(Self {
            target,
            mounted: true,
        })
    }

    /// Unmounts, reporting failure.
    pub fn unmount(mut self) -> Result<(), SysError> {
        self.mounted = false;
        sys::umount(self.target)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sys::umount(self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors() {
        assert_eq!(parse_sectors_as_bytes("32768\n"), Some(16 << 20));
        assert_eq!(parse_sectors_as_bytes("0"), Some(0));
        assert_eq!(parse_sectors_as_bytes(""), None);
        assert_eq!(parse_sectors_as_bytes("-1"), None);
        assert_eq!(parse_sectors_as_bytes("12x"), None);
        assert_eq!(parse_sectors_as_bytes(&u64::MAX.to_string()), None);
    }

    #[test]
    fn flags() {
        assert_eq!(parse_flag("1\n"), Some(true));
        assert_eq!(parse_flag("0\n"), Some(false));
        assert_eq!(parse_flag("2"), None);
        assert_eq!(parse_flag(""), None);
    }

    #[test]
    fn device_numbers() {
        assert_eq!(parse_dev("254:0\n"), Some((254, 0)));
        assert_eq!(parse_dev("8:16"), Some((8, 16)));
        assert_eq!(parse_dev("254"), None);
        assert_eq!(parse_dev("a:0"), None);
        assert_eq!(parse_dev("1:"), None);
    }

    #[test]
    fn size_against_the_command_line() {
        assert_eq!(check_size(16 << 20, Some(Ok(16 << 20))), Ok(()));
        assert_eq!(
            check_size(1024, Some(Ok(2048))),
            Err("size=1024 expected=2048".to_owned())
        );
        assert!(check_size(1024, None)
            .unwrap_err()
            .contains("hearth.blk.bytes is not on the command line"));
        assert!(check_size(1024, Some(Err("x".to_owned())))
            .unwrap_err()
            .contains("is not a number"));
    }

    #[test]
    fn missing_device_is_reported_after_the_wait() {
        let start = Instant::now();
        let e = wait_for_block_device("/nonexistent/hearth-vda").unwrap_err();
        assert!(start.elapsed() >= WAIT, "{:?}", start.elapsed());
        assert!(e.contains("ENOENT"), "{e}");
    }

    #[test]
    fn a_regular_file_is_not_a_block_device() {
        let e = wait_for_block_device("/proc/self/status").unwrap_err();
        assert!(e.contains("not a block device"), "{e}");
    }
}
