//! `rootfs`: `/` is the ext4 file system on /dev/vda, i.e. the guest booted
//! with `root=/dev/vda` from the virtio-blk disk and no initramfs.
//!
//! The kernel names the root it mounted itself `/dev/root` in /proc/mounts,
//! so the source may be `/dev/vda` or `/dev/root`; either way the device
//! number of `/` must be that of vda (`/sys/block/vda/dev`).

use super::blockdev;
use super::{Context, Outcome};
use crate::sys;

const PROC_MOUNTS: &str = "/proc/mounts";

/// One line of /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mounted device (or a pseudo name such as `proc`).
    pub source: String,
    /// Where it is mounted.
    pub target: String,
    /// The file system type.
    pub fstype: String,
    /// The mount options, comma-separated.
    pub options: String,
}

pub fn run(_ctx: &Context<'_>) -> Outcome {
    let entries = match sys::read_text(PROC_MOUNTS) {
        Ok(text) => parse_mounts(&text),
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    let root_dev = sys::stat("/")
        .map(|st| (libc::major(st.st_dev), libc::minor(st.st_dev)))
        .map_err(|e| e.to_string());
    evaluate(
        root_entry(&entries),
        blockdev::device_number(blockdev::DISK),
        root_dev,
    )
}

/// Decides from the root's mount entry, vda's device number and the device
/// number of `/`.
fn evaluate(
    root: Option<&MountEntry>,
    vda_dev: Result<(u32, u32), String>,
    root_dev: Result<(u32, u32), String>,
) -> Outcome {
    let Some(root) = root else {
        return Outcome::Fail(format!("no / in {PROC_MOUNTS}"));
    };
    let seen = format!(
        "source={} fstype={} opts={}",
        root.source, root.fstype, root.options
    );
    let vda = blockdev::dev_path(blockdev::DISK);
    if root.fstype != blockdev::FSTYPE || (root.source != vda && root.source != "/dev/root") {
        return Outcome::Fail(format!("/ is not ext4 on {vda} or /dev/root: {seen}"));
    }
    let vda_dev = match vda_dev {
        Ok(dev) => dev,
        Err(e) => return Outcome::Fail(format!("{seen} but {e}")),
    };
    let root_dev = match root_dev {
        Ok(dev) => dev,
        Err(e) => return Outcome::Fail(format!("{seen} but {e}")),
    };
    if root_dev != vda_dev {
        return Outcome::Fail(format!(
            "{seen} but / is on device {}:{}, {vda} is {}:{}",
            root_dev.0, root_dev.1, vda_dev.0, vda_dev.1
        ));
    }
    Outcome::Pass(format!(
        "source={} fstype={} dev={}:{} opts={}",
        root.source, root.fstype, root_dev.0, root_dev.1, root.options
    ))
}

/// Parses /proc/mounts: `source target fstype options dump pass` per line,
/// with spaces, tabs, newlines and backslashes in names escaped as octal
/// (`\040`). Malformed lines are skipped.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(MountEntry {
                source: unescape(fields.next()?),
                target: unescape(fields.next()?),
                fstype: unescape(fields.next()?),
                options: unescape(fields.next()?),
            })
        })
        .collect()
}

/// The entry mounted last on `/`: the one a process sees as its root.
pub fn root_entry(entries: &[MountEntry]) -> Option<&MountEntry> {
    entries.iter().rev().find(|e| e.target == "/")
}

/// Undoes the kernel's octal escapes (`\NNN`) in a /proc/mounts field.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| b == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(value) => {
                out.push(value);
                i += 4;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK_BOOT: &str = "\
/dev/root / ext4 ro,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime,size=60000k,nr_inodes=15000,mode=755 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
";

    const INITRAMFS_BOOT: &str = "\
rootfs / rootfs rw,size=60000k,nr_inodes=15000 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/vda /mnt ext4 rw,relatime 0 0
";

    fn entry(source: &str, fstype: &str) -> MountEntry {
        MountEntry {
            source: source.to_owned(),
            target: "/".to_owned(),
            fstype: fstype.to_owned(),
            options: "ro,relatime".to_owned(),
        }
    }

    #[test]
    fn parses_proc_mounts() {
        let entries = parse_mounts(DISK_BOOT);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0], entry("/dev/root", "ext4"));
        assert_eq!(entries[1].target, "/dev");
        assert_eq!(root_entry(&entries), Some(&entries[0]));
    }

    #[test]
    fn initramfs_root_is_rootfs() {
        let entries = parse_mounts(INITRAMFS_BOOT);
        let root = root_entry(&entries).unwrap();
        assert_eq!((root.source.as_str(), root.fstype.as_str()), ("rootfs", "rootfs"));
        assert!(matches!(
            evaluate(Some(root), Ok((254, 0)), Ok((0, 1))),
            Outcome::Fail(d) if d.contains("is not ext4")
        ));
    }

    #[test]
    fn last_root_mount_wins_and_bad_lines_are_skipped() {
        let text = "rootfs / rootfs rw 0 0\nshort line\n\n/dev/vda / ext4 ro 0 0\n";
        let entries = parse_mounts(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(root_entry(&entries).unwrap().source, "/dev/vda");
        assert_eq!(root_entry(&parse_mounts("proc /proc proc rw 0 0")), None);
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"a\011b\012c\134d"), "a\tb\nc\\d");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape(r"not\999octal"), r"not\999octal");
        assert_eq!(unescape(r"\\040"), r"\ ");
        let entries = parse_mounts("/dev/vdb /mnt/my\\040disk ext4 rw 0 0\n");
        assert_eq!(entries[0].target, "/mnt/my disk");
    }

    #[test]
    fn dev_root_on_vda_passes() {
        assert_eq!(
            evaluate(Some(&entry("/dev/root", "ext4")), Ok((254, 0)), Ok((254, 0))),
            Outcome::Pass("source=/dev/root fstype=ext4 dev=254:0 opts=ro,relatime".to_owned())
        );
        assert!(matches!(
            evaluate(Some(&entry("/dev/vda", "ext4")), Ok((254, 0)), Ok((254, 0))),
            Outcome::Pass(_)
        ));
    }

    #[test]
    fn wrong_device_or_type_fails() {
        assert!(matches!(
            evaluate(Some(&entry("/dev/root", "ext4")), Ok((254, 0)), Ok((254, 16))),
            Outcome::Fail(d) if d.contains("254:16")
        ));
        assert!(matches!(
            evaluate(Some(&entry("/dev/root", "ext4")), Err("no vda".to_owned()), Ok((254, 0))),
            Outcome::Fail(d) if d.contains("no vda")
        ));
        assert!(matches!(
            evaluate(Some(&entry("/dev/vda", "ext2")), Ok((254, 0)), Ok((254, 0))),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            evaluate(Some(&entry("/dev/vdb", "ext4")), Ok((254, 0)), Ok((254, 0))),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            evaluate(None, Ok((254, 0)), Ok((254, 0))),
            Outcome::Fail(_)
        ));
    }
}
