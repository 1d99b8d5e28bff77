//! Console output: whole lines, each with a single `write(2)` to stdout
//! (the serial console, ttyS0), so lines from the kernel and from us never
//! interleave mid-line and every line costs one system call.

use std::io;

/// The kernel opens /dev/console as fds 0-2 for init: the initramfs has a
/// /dev/console node, and when booting from a disk the kernel opens it from
/// its built-in initramfs before mounting the root file system. (Rust's
/// runtime aborts before `main` if fds 0-2 are not open.)
const STDOUT: libc::c_int = 1;

/// Writes `line` plus a newline to stdout. Errors are ignored: there is
/// nowhere else to report them.
pub fn line(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let _ = write_all(STDOUT, &buf);
}

fn write_all(fd: libc::c_int, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid, initialised slice for `buf.len()` bytes
        // for the duration of the call; write(2) only reads from it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let written = usize::try_from(n).unwrap_or(0);
        if written == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        buf = buf.get(written..).unwrap_or_default();
    }
    Ok(())
}
