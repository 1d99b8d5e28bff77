//! Unix socket paths a previous run may have left behind.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Makes `path` free for `bind`: a socket nobody listens on is removed.
/// Fails with [`io::ErrorKind::AddrInUse`] when something listens there,
/// and with [`io::ErrorKind::AlreadyExists`] when what stands there is not
/// a socket (it is never removed).
pub fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process listens on it",
        ));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn removes_only_dead_sockets() {
        let dir = std::env::temp_dir().join(format!("hearth-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        clear_stale_socket(&missing).unwrap();

        let file = dir.join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = clear_stale_socket(&file).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let live = dir.join("live");
        let listener = UnixListener::bind(&live).unwrap();
        let e = clear_stale_socket(&live).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(listener);
        // The listener is gone but its path stays: a stale socket.
        clear_stale_socket(&live).unwrap();
        assert!(!live.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
