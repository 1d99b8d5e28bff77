//! The pseudo file systems init mounts before anything else.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    /// File-system options (mount(2)'s `data`).
    data: &'static str,
}

const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "",
    },
    // Pseudo-terminals for the agent's SPAWN with `tty` (/dev/ptmx, the
    // devtmpfs node, opens the devpts instance at /dev/pts).
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "mode=0620,ptmxmode=0666",
    },
];

/// Mounts /proc, /sys, /dev (devtmpfs) and /dev/pts (devpts), creating the
/// mount points when missing. A target that already is a mount point (the
/// kernel mounts devtmpfs on /dev itself when booting from a disk) is left
/// alone.
/// Returns one message per failure.
pub fn mount_all() -> Vec<String> {
    MOUNTS
        .iter()
        .filter_map(|m| {
            mount_one(m)
                .err()
                .map(|e| format!("mount {} on {}: {e}", m.fstype, m.target))
        })
        .collect()
}

fn mount_one(m: &Mount) -> io::Result<()> {
    match std::fs::create_dir(m.target) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if is_mount_point(m.target)? {
        return Ok(());
    }
    let source = cstring(m.source)?;
    let target = cstring(m.target)?;
    let fstype = cstring(m.fstype)?;
    let data = cstring(m.data)?;
    let data_ptr = if m.data.is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: all pointers are valid NUL-terminated strings (or null for
    // no data, which mount(2) allows) that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data_ptr,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(err)
}

/// A directory is a mount point when it lives on another device than its
/// parent (`/dev/pts` is compared with `/dev`, not with `/`).
fn is_mount_point(path: &str) -> io::Result<bool> {
    let parent = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    Ok(std::fs::metadata(path)?.dev() != std::fs::metadata(parent)?.dev())
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
