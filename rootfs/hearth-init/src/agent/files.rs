//! WRITE_FILE and READ_FILE. Errors are the client's messages,
//! `<call> <path>: <strerror>`, e.g. `open /x/y: No such file or directory`.

use std::ffi::CString;
use std::io;

use hearth_agent_protocol::Response;

use super::fd::{self, Fd};

/// The largest file READ_FILE returns (the reply must fit in one frame).
pub const MAX_READ: u64 = 60 << 20;
/// Read size for files whose length stat does not tell (/proc, /sys).
const READ_CHUNK: usize = 64 << 10;

/// Creates or replaces `path` with `data`. A regular file gets exactly
/// the permission bits `mode`, whatever the umask and whether it existed;
/// anything else (a device, a FIFO) keeps its mode.
pub fn write(path: &[u8], mode: u32, data: &[u8]) -> Response {
    match try_write(path, mode, data) {
        Ok(()) => Response::Ok,
        Err(msg) => Response::Error(msg),
    }
}

/// The whole of `path` as DATA, or an ERROR.
pub fn read(path: &[u8]) -> Response {
    match try_read(path) {
        Ok(data) => Response::Data(data),
        Err(msg) => Response::Error(msg),
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// `<call> <path>: <strerror>`.
fn failed(call: &str, path: &[u8], e: &io::Error) -> String {
    format!("{call} {}: {}", show(path), fd::error_text(e))
}

fn open(path: &[u8], flags: libc::c_int, mode: libc::mode_t) -> Result<Fd, String> {
    let c_path = CString::new(path).map_err(|_| format!("open {}: path contains a NUL byte", show(path)))?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the call; the
    // variadic mode is passed as the promoted c_uint.
    let raw = unsafe { libc::open(c_path.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
    Fd::from_new(raw).map_err(|e| failed("open", path, &e))
}

fn fstat(file: &Fd) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain old data; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) fills `st`, a valid writable buffer, for a
    // descriptor we own.
    fd::check(unsafe { libc::fstat(file.raw(), &mut st) })?;
    Ok(st)
}

fn try_write(path: &[u8], mode: u32, data: &[u8]) -> Result<(), String> {
    let mode = mode & 0o7777;
    let file = open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode)?;
    let st = fstat(&file).map_err(|e| failed("fstat", path, &e))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o7777 != mode {
        // SAFETY: fchmod(2) on a descriptor we own; no memory is passed.
        fd::check(unsafe { libc::fchmod(file.raw(), mode) }).map_err(|e| failed("fchmod", path, &e))?;
    }
    file.write_all(data).map_err(|e| failed("write", path, &e))?;
    // Close explicitly: some file systems report write errors there.
    file.close().map_err(|e| failed("close", path, &e))
}

fn try_read(path: &[u8]) -> Result<Vec<u8>, String> {
    let file = open(path, libc::O_RDONLY, 0)?;
    let st = fstat(&file).map_err(|e| failed("fstat", path, &e))?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let too_big = || {
        format!(
            "read {}: the file is larger than {} MiB",
            show(path),
            MAX_READ >> 20
        )
    };
    if size > MAX_READ {
        return Err(too_big());
    }
    // Exactly the size stat gives (no doubling growth: guest memory is
    // small), then on in chunks in case the file is longer than that
    // (/proc and /sys files say 0).
    let size = usize::try_from(size).unwrap_or(0);
    let mut data = Vec::new();
    data.try_reserve_exact(size)
        .map_err(|_| format!("read {}: out of memory for {size} bytes", show(path)))?;
    data.resize(size, 0);
    let mut len = 0;
    while len < size {
        let n = file
            .read(data.get_mut(len..).unwrap_or_default())
            .map_err(|e| failed("read", path, &e))?;
        if n == 0 {
            data.truncate(len);
            return Ok(data);
        }
        len += n;
    }
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = file.read(&mut chunk).map_err(|e| failed("read", path, &e))?;
        if n == 0 {
            return Ok(data);
        }
        if (data.len() + n) as u64 > MAX_READ {
            return Err(too_big());
        }
        data.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-init-files-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = scratch("rt");
        let path = dir.join("f");
        let p = path.to_str().unwrap().as_bytes();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(write(p, 0o640, &data), Response::Ok);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(read(p), Response::Data(data));
        // Replacing truncates and applies the new mode.
        assert_eq!(write(p, 0o755, b"short"), Response::Ok);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(read(p), Response::Data(b"short".to_vec()));
        assert_eq!(write(p, 0o600, b""), Response::Ok);
        assert_eq!(read(p), Response::Data(Vec::new()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_call_path_and_reason() {
        assert_eq!(
            write(b"/no/such/dir/f", 0o644, b"x"),
            Response::Error("open /no/such/dir/f: No such file or directory".into())
        );
        assert_eq!(
            read(b"/no/such/file"),
            Response::Error("open /no/such/file: No such file or directory".into())
        );
        assert_eq!(read(b"/"), Response::Error("read /: Is a directory".into()));
        assert_eq!(
            read(b"a\0b"),
            Response::Error("open a\u{fffd}b: path contains a NUL byte".replace('\u{fffd}', "\0"))
        );
    }

    #[test]
    fn non_regular_files_keep_their_mode() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = scratch("fifo");
        let path = dir.join("fifo");
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated string for the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A reader, so that opening the write end does not block.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        assert_eq!(
            write(path.to_str().unwrap().as_bytes(), 0o600, b"x"),
            Response::Ok
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn proc_files_without_a_size_are_read_whole() {
        match read(b"/proc/self/status") {
            Response::Data(d) => assert!(String::from_utf8(d).unwrap().contains("Name:")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = scratch("big");
        let path = dir.join("big");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_READ + 1).unwrap();
        assert_eq!(
            read(path.to_str().unwrap().as_bytes()),
            Response::Error(format!("read {}: the file is larger than 60 MiB", path.display()))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
