//! The ERROR frames the agent sends: an [`ErrorKind`] derived from the
//! errno, and a message naming the operation, its subject (a path, a
//! program, a process) and the errno's text, e.g. `open /no/such: No such
//! file or directory`. Pure.

use std::io;

use hearth_agent_protocol::{ErrorInfo, ErrorKind};

use super::fd;

/// The protocol's kind for an errno.
pub fn kind_of(errno: i32) -> ErrorKind {
    match errno {
        libc::ENOENT => ErrorKind::NotFound,
        libc::EACCES | libc::EPERM | libc::EROFS => ErrorKind::PermissionDenied,
        libc::EEXIST => ErrorKind::AlreadyExists,
        libc::ENOTDIR => ErrorKind::NotADirectory,
        libc::EISDIR => ErrorKind::IsADirectory,
        libc::ENOTEMPTY => ErrorKind::DirectoryNotEmpty,
        libc::EINVAL | libc::ENAMETOOLONG | libc::E2BIG => ErrorKind::InvalidInput,
        libc::ESRCH => ErrorKind::NoSuchProcess,
        _ => ErrorKind::Other,
    }
}

/// Shows a host-given path or name (bytes, not necessarily UTF-8).
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `<op> <subject>: <errno text>`, with the errno's kind.
pub fn os(op: &str, subject: &[u8], errno: i32) -> ErrorInfo {
    ErrorInfo {
        kind: kind_of(errno),
        errno,
        message: format!("{op} {}: {}", show(subject), fd::strerror(errno)),
    }
}

/// [`os`] for an `io::Error` (an error without an errno is `Other`).
pub fn io(op: &str, subject: &[u8], e: &io::Error) -> ErrorInfo {
    match e.raw_os_error() {
        Some(errno) => os(op, subject, errno),
        None => ErrorInfo {
            kind: ErrorKind::Other,
            errno: 0,
            message: format!("{op} {}: {e}", show(subject)),
        },
    }
}

/// A failure with no errno.
pub fn plain(kind: ErrorKind, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo {
        kind,
        errno: 0,
        message: message.into(),
    }
}

/// A malformed, oversized or out-of-order frame.
pub fn bad_request(why: impl std::fmt::Display) -> ErrorInfo {
    plain(ErrorKind::BadRequest, format!("bad request: {why}"))
}

/// A host path the agent refuses before any system call: not absolute,
/// or with a NUL byte.
pub fn check_path(op: &str, path: &[u8]) -> Result<(), ErrorInfo> {
    if path.first() != Some(&b'/') {
        return Err(ErrorInfo {
            kind: ErrorKind::InvalidInput,
            errno: libc::EINVAL,
            message: format!("{op} {}: not an absolute path", show(path)),
        });
    }
    if path.contains(&0) {
        return Err(ErrorInfo {
            kind: ErrorKind::InvalidInput,
            errno: libc::EINVAL,
            message: format!("{op} {}: the path contains a NUL byte", show(path)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_op_subject_and_errno_text() {
        let e = os("open", b"/no/such", libc::ENOENT);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.message, "open /no/such: No such file or directory");
        let e = io("rmdir", b"/d", &io::Error::from_raw_os_error(libc::ENOTEMPTY));
        assert_eq!(e.kind, ErrorKind::DirectoryNotEmpty);
        assert_eq!(e.message, "rmdir /d: Directory not empty");
        let e = io("read", b"/x", &io::Error::other("odd"));
        assert_eq!((e.kind, e.errno), (ErrorKind::Other, 0));
        assert_eq!(e.message, "read /x: odd");
        // Non-UTF-8 bytes are shown, not refused.
        assert_eq!(
            os("stat", b"/\xff", libc::ENOENT).message,
            "stat /\u{fffd}: No such file or directory"
        );
    }

    #[test]
    fn kinds_follow_the_errno() {
        assert_eq!(kind_of(libc::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(kind_of(libc::EPERM), ErrorKind::PermissionDenied);
        assert_eq!(kind_of(libc::EEXIST), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(libc::ENOTDIR), ErrorKind::NotADirectory);
        assert_eq!(kind_of(libc::EISDIR), ErrorKind::IsADirectory);
        assert_eq!(kind_of(libc::EINVAL), ErrorKind::InvalidInput);
        assert_eq!(kind_of(libc::ESRCH), ErrorKind::NoSuchProcess);
        assert_eq!(kind_of(libc::ENOSPC), ErrorKind::Other);
    }

    #[test]
    fn paths_must_be_absolute_without_nul() {
        assert!(check_path("stat", b"/a").is_ok());
        let e = check_path("stat", b"a").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(e.message, "stat a: not an absolute path");
        assert!(check_path("stat", b"").is_err());
        assert_eq!(
            check_path("open", b"/a\0b").unwrap_err().message,
            "open /a\0b: the path contains a NUL byte"
        );
        assert_eq!(bad_request("x").kind, ErrorKind::BadRequest);
    }
}
