//! Thin wrappers over the system calls the checks make. Each failure
//! carries the call (with its main arguments) and the errno, so a FAIL line
//! says exactly what the kernel refused: `mount(/dev/vda, /mnt, ext4, rw):
//! EACCES (errno 13)`.
//!
//! One wrapper is one system call (plus retries on EINTR): guest system
//! calls may be emulated and cost ~0.27 ms each.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

/// A failed system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    /// The call and its main arguments, e.g. `open(/dev/vda, O_WRONLY)`.
    pub call: String,
    /// The errno it failed with (0 when unknown).
    pub errno: i32,
}

/// The result of a wrapped system call.
pub type SysResult<T> = Result<T, SysError>;

impl SysError {
    /// An error for `call` with an explicit errno.
    pub fn new(call: impl Into<String>, errno: i32) -> Self {
        Self {
            call: call.into(),
            errno,
        }
    }

    /// An error for `call` with the calling thread's errno.
    fn last(call: impl Into<String>) -> Self {
        Self::new(call, std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The errno's symbolic name, e.g. `EROFS`.
    pub fn name(&self) -> String {
        errno_name(self.errno)
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (errno {})", self.call, self.name(), self.errno)
    }
}

/// The symbolic name of the errnos a file system or block device check can
/// meet; `errno<N>` for others.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EUCLEAN => "EUCLEAN",
        libc::EDQUOT => "EDQUOT",
        libc::EBADMSG => "EBADMSG",
        _ => return format!("errno{errno}"),
    };
    name.to_owned()
}

fn cstring(s: &str, call: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| SysError::new(call, libc::EINVAL))
}

/// mount(2) with no file-system-specific data.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> SysResult<()> {
    let mode = if flags & libc::MS_RDONLY != 0 { "ro" } else { "rw" };
    let call = format!("mount({source}, {target}, {fstype}, {mode})");
    let c_source = cstring(source, &call)?;
    let c_target = cstring(target, &call)?;
    let c_fstype = cstring(fstype, &call)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null `data` pointer is allowed by mount(2).
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SysError::last(call))
    }
}

/// umount2(2) with no flags.
pub fn umount(target: &str) -> SysResult<()> {
    let call = format!("umount({target})");
    let c_target = cstring(target, &call)?;
    // SAFETY: `c_target` is a valid NUL-terminated string for the call.
    if unsafe { libc::umount2(c_target.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(SysError::last(call))
    }
}

/// stat(2).
pub fn stat(path: &str) -> SysResult<libc::stat> {
    let call = format!("stat({path})");
    let c_path = cstring(path, &call)?;
    // SAFETY: `stat` is plain old data; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` a valid,
    // writable stat buffer for the duration of the call.
    if unsafe { libc::stat(c_path.as_ptr(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(SysError::last(call))
    }
}

/// Whether a `stat` result is a block device.
pub fn is_block_device(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFBLK
}

/// An open file descriptor that remembers its path for error messages and
/// is closed on drop (or explicitly, with [`File::close`], to see the error).
#[derive(Debug)]
pub struct File {
    fd: OwnedFd,
    path: String,
}

/// The access-mode and flag names used in `open` error messages.
fn open_flags_text(flags: libc::c_int) -> String {
    let mut text = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        _ => "O_RDWR",
    }
    .to_owned();
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_DIRECT, "O_DIRECT"),
    ] {
        if flags & bit != 0 {
            text.push('|');
            text.push_str(name);
        }
    }
    text
}

impl File {
    /// open(2) with `O_CLOEXEC` added; `mode` applies when creating.
    pub fn open(path: &str, flags: libc::c_int, mode: libc::mode_t) -> SysResult<Self> {
        let call = format!("open({path}, {})", open_flags_text(flags));
        let c_path = cstring(path, &call)?;
        // SAFETY: `c_path` is a valid NUL-terminated string for the call;
        // the variadic mode argument is passed as the promoted c_uint.
        let fd = unsafe { libc::open(c_path.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
        if fd < 0 {
            return Err(SysError::last(call));
        }
        // SAFETY: open(2) just returned `fd`, a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// Runs one read/write-like call, retrying on EINTR.
    fn transfer(&self, call: impl Fn() -> String, mut op: impl FnMut() -> isize) -> SysResult<usize> {
        loop {
            let n = op();
            if let Ok(n) = usize::try_from(n) {
                return Ok(n);
            }
            let err = SysError::last(call());
            if err.errno != libc::EINTR {
                return Err(err);
            }
        }
    }

    /// One write(2) at the file position: the number of bytes written.
    pub fn write(&self, buf: &[u8]) -> SysResult<usize> {
        let fd = self.fd.as_raw_fd();
        self.transfer(
            || format!("write({}, {} bytes)", self.path, buf.len()),
            // SAFETY: `buf` is a valid, initialised slice of `buf.len()`
            // bytes for the duration of the call; write(2) only reads it.
            || unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) },
        )
    }

    /// One read(2) at the file position: the number of bytes read (0 at
    /// end of file).
    pub fn read(&self, buf: &mut [u8]) -> SysResult<usize> {
        let fd = self.fd.as_raw_fd();
        let len = buf.len();
        let ptr = buf.as_mut_ptr();
        self.transfer(
            || format!("read({}, {len} bytes)", self.path),
            // SAFETY: `ptr` points to a valid, writable buffer of `len` bytes
            // that is borrowed mutably for the duration of the call.
            || unsafe { libc::read(fd, ptr.cast(), len) },
        )
    }

    /// One pread(2).
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> SysResult<usize> {
        let fd = self.fd.as_raw_fd();
        let len = buf.len();
        let ptr = buf.as_mut_ptr();
        let call = || format!("pread({}, {len} bytes at {offset})", self.path);
        let off = libc::off_t::try_from(offset).map_err(|_| SysError::new(call(), libc::EINVAL))?;
        self.transfer(
            call,
            // SAFETY: `ptr` points to a valid, writable buffer of `len` bytes
            // that is borrowed mutably for the duration of the call.
            || unsafe { libc::pread(fd, ptr.cast(), len, off) },
        )
    }

    /// One pwrite(2).
    pub fn pwrite(&self, buf: &[u8], offset: u64) -> SysResult<usize> {
        let fd = self.fd.as_raw_fd();
        let call = || format!("pwrite({}, {} bytes at {offset})", self.path, buf.len());
        let off = libc::off_t::try_from(offset).map_err(|_| SysError::new(call(), libc::EINVAL))?;
        self.transfer(
            call,
            // SAFETY: `buf` is a valid, initialised slice of `buf.len()`
            // bytes for the duration of the call; pwrite(2) only reads it.
            || unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) },
        )
    }

    /// fsync(2).
    pub fn fsync(&self) -> SysResult<()> {
        // SAFETY: fsync(2) on a descriptor we own; no memory is passed.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(SysError::last(format!("fsync({})", self.path)))
        }
    }

    /// close(2), reporting its error (dropping a `File` ignores it).
    pub fn close(self) -> SysResult<()> {
        let call = format!("close({})", self.path);
        let fd = self.fd.into_raw_fd();
        // SAFETY: `fd` was just released from its OwnedFd, so it is closed
        // exactly once, here.
        if unsafe { libc::close(fd) } == 0 {
            Ok(())
        } else {
            Err(SysError::last(call))
        }
    }
}

/// Reads a small text file (sysfs, procfs) whole: open, reads until end of
/// file, close.
pub fn read_text(path: &str) -> SysResult<String> {
    let file = File::open(path, libc::O_RDONLY, 0)?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read(&mut buf)?;
        match buf.get(..n) {
            Some(chunk) if n > 0 => text.extend_from_slice(chunk),
            _ => break,
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EROFS), "EROFS");
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(9999), "errno9999");
    }

    #[test]
    fn error_text_has_call_name_and_number() {
        let e = SysError::new("mount(/dev/vda, /mnt, ext4, rw)", libc::EACCES);
        assert_eq!(
            e.to_string(),
            "mount(/dev/vda, /mnt, ext4, rw): EACCES (errno 13)"
        );
    }

    #[test]
    fn open_flag_names() {
        assert_eq!(open_flags_text(libc::O_RDONLY), "O_RDONLY");
        assert_eq!(
            open_flags_text(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(
            open_flags_text(libc::O_RDONLY | libc::O_DIRECT),
            "O_RDONLY|O_DIRECT"
        );
    }

    #[test]
    fn file_round_trip_on_host() {
        let dir = std::env::temp_dir().join(format!("hearth-init-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let path = path.to_str().unwrap();
        let f = File::open(path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644).unwrap();
        assert_eq!(f.write(b"hello ").unwrap(), 6);
        assert_eq!(f.pwrite(b"world", 6).unwrap(), 5);
        f.fsync().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(f.pread(&mut buf, 0).unwrap(), 11);
        assert_eq!(&buf[..11], b"hello world");
        f.close().unwrap();
        assert_eq!(read_text(path).unwrap(), "hello world");
        assert!(!is_block_device(&stat(path).unwrap()));

        let e = File::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        assert!(e.call.starts_with("open("), "{e}");
        assert_eq!(stat(&format!("{path}.missing")).unwrap_err().errno, libc::ENOENT);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
