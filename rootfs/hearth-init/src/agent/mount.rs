//! MOUNT: mount(2) on the host's behalf, e.g. a container's root disk and
//! the file systems it needs inside it (docs/AGENT.md).
//!
//! A block device is flushed from the guest's buffer cache first
//! (`BLKFLSBUF`): a VM restored from a template snapshot may have read a
//! placeholder disk in that slot before the host swapped the real one in
//! (the kernel's partition scan reads its first blocks), and those cached
//! blocks must not stand in for the new disk's.

use std::ffi::CString;
use std::io;

use hearth_agent_protocol::{ErrorInfo, Mount};

use super::errors;
use super::fd::{self, Fd};
use super::files;

/// `_IO(0x12, 97)`: flush a block device's buffers.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Serves a MOUNT request.
pub fn mount(m: &Mount) -> Result<(), ErrorInfo> {
    errors::check_path("mount", &m.target)?;
    let fail = |e: io::Error| errors::io("mount", &m.target, &e);
    if m.mkdir {
        files::mkdir_all(&m.target, 0o755).map_err(|(path, e)| errors::io("mkdir", &path, &e))?;
    }
    let source = fd::cpath(&m.source).map_err(fail)?;
    let target = fd::cpath(&m.target).map_err(fail)?;
    let fstype = optional(&m.fstype).map_err(fail)?;
    let data = optional(&m.data).map_err(fail)?;
    if is_block_device(&source) {
        flush_buffers(&source).map_err(|e| errors::io("BLKFLSBUF", &m.source, &e))?;
    }
    // SAFETY: every pointer is a valid NUL-terminated string or null
    // (fstype and data may be null for mount(2)); they outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            m.flags as libc::c_ulong,
            data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    fd::check(rc).map(drop).map_err(fail)
}

fn optional(bytes: &[u8]) -> io::Result<Option<CString>> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        fd::cpath(bytes).map(Some)
    }
}

fn is_block_device(path: &CString) -> bool {
    // SAFETY: an all-zero stat is a valid value for stat(2) to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid stat buffer.
    let rc = unsafe { libc::stat(path.as_ptr(), &mut st) };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFBLK
}

fn flush_buffers(path: &CString) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; the result is checked by from_new.
    let dev = Fd::from_new(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: BLKFLSBUF takes no argument and has no memory effects.
    fd::check(unsafe { libc::ioctl(dev.raw(), BLKFLSBUF as _, 0) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    #[test]
    fn relative_targets_and_nul_bytes_are_refused() {
        let m = Mount {
            target: ByteBuf::from(b"relative".to_vec()),
            ..Mount::default()
        };
        assert!(mount(&m).is_err());
        let m = Mount {
            source: ByteBuf::from(b"a\0b".to_vec()),
            target: ByteBuf::from(b"/nonexistent-hearth-target".to_vec()),
            ..Mount::default()
        };
        let e = mount(&m).unwrap_err();
        assert!(
            e.message.starts_with("mount /nonexistent-hearth-target"),
            "{}",
            e.message
        );
    }
}
