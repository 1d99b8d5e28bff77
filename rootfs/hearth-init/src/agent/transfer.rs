//! The streaming file requests, as states a connection holds:
//!
//! - [`Upload`]: DATA chunks go straight to a temporary file beside the
//!   target (`.hearth-upload.<pid>.<n>.<try>`), renamed over the target at
//!   DATA_END; dropping an unfinished upload unlinks it, so a broken
//!   transfer leaves nothing behind.
//! - [`Download`]: a regular file read one chunk at a time, only while
//!   the connection has room (the event loop asks).
//! - [`ListDir`]: a directory read [`DIR_CHUNK`] entries at a time, also
//!   only while there is room.
//!
//! Memory stays at a few chunks whatever the size.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use hearth_agent_protocol::{DirChunk, DirEntry, ErrorInfo, ErrorKind, FileInfo, FileKind, DIR_CHUNK};
use serde_bytes::ByteBuf;

use super::errors;
use super::fd::{self, Fd};
use super::files;

/// Name bytes per LIST_DIR chunk at most (names are at most 255 bytes on
/// Linux file systems, so this rarely cuts a chunk short; it keeps every
/// chunk well inside a frame whatever a file system returns).
const CHUNK_NAME_BYTES: usize = 128 << 10;

/// An upload in progress.
#[derive(Debug)]
pub struct Upload {
    path: Vec<u8>,
    temp: Vec<u8>,
    file: Option<Fd>,
    mode: u32,
    bytes: u64,
}

/// An upload replaces a regular file or a symlink, never a device, pipe
/// or socket (renaming over `/dev/null` would replace the device node).
fn refuse_special(path: &[u8]) -> Result<(), ErrorInfo> {
    match files::lstat_raw(path) {
        Ok(st) => {
            let kind = st.st_mode & libc::S_IFMT;
            if kind == libc::S_IFREG || kind == libc::S_IFLNK || kind == libc::S_IFDIR {
                // A directory is refused by the rename, with its own error.
                Ok(())
            } else {
                Err(ErrorInfo {
                    message: format!("upload {}: not a regular file", errors::show(path)),
                    ..errors::os("upload", path, libc::EINVAL)
                })
            }
        }
        Err(_) => Ok(()),
    }
}

impl Upload {
    /// Creates the temporary file (and with `parents` the missing
    /// directories). `seq` makes the temporary name unique.
    pub fn start(path: &[u8], mode: u32, parents: bool, seq: u64) -> Result<Self, ErrorInfo> {
        errors::check_path("upload", path)?;
        refuse_special(path)?;
        let name_at = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let name = path.get(name_at + 1..).unwrap_or_default();
        if name.is_empty() || name == b"." || name == b".." {
            return Err(errors::os("open", path, libc::EISDIR));
        }
        let dir = match path.get(..name_at) {
            Some(d) if !d.is_empty() => d,
            _ => b"/",
        };
        if parents {
            files::mkdir_all(dir, files::PARENT_MODE).map_err(|(p, e)| errors::io("mkdir", &p, &e))?;
        }
        let mut prefix = dir.to_vec();
        if !prefix.ends_with(b"/") {
            prefix.push(b'/');
        }
        // A name left by an agent that crashed mid-upload (same pid, same
        // sequence) is skipped.
        let mut attempt = 0;
        let (temp, file) = loop {
            let mut temp = prefix.clone();
            temp.extend_from_slice(
                format!(".hearth-upload.{}.{seq}.{attempt}", std::process::id()).as_bytes(),
            );
            match fd::open(&temp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600) {
                Ok(file) => break (temp, file),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempt < 8 => attempt += 1,
                Err(e) => return Err(errors::io("open", path, &e)),
            }
        };
        Ok(Self {
            path: path.to_vec(),
            temp,
            file: Some(file),
            mode: mode & 0o7777,
            bytes: 0,
        })
    }

    /// Appends a DATA chunk.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ErrorInfo> {
        let Some(file) = &self.file else {
            return Err(errors::os("write", &self.path, libc::EBADF));
        };
        file.write_all(data)
            .map_err(|e| errors::io("write", &self.path, &e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// DATA_END: exact mode (whatever the umask), close, rename over the
    /// target. The byte count.
    pub fn finish(mut self) -> Result<u64, ErrorInfo> {
        let Some(file) = self.file.take() else {
            return Err(errors::os("write", &self.path, libc::EBADF));
        };
        // SAFETY: fchmod(2) on a descriptor we own; no memory is passed.
        fd::check(unsafe { libc::fchmod(file.raw(), self.mode) })
            .map_err(|e| errors::io("chmod", &self.path, &e))?;
        // Close explicitly: some file systems report write errors there.
        file.close().map_err(|e| errors::io("close", &self.path, &e))?;
        // A device or pipe made there meanwhile is not replaced either.
        refuse_special(&self.path)?;
        let (from, to) = match (fd::cpath(&self.temp), fd::cpath(&self.path)) {
            (Ok(f), Ok(t)) => (f, t),
            _ => return Err(errors::os("rename", &self.path, libc::EINVAL)),
        };
        // SAFETY: both are valid NUL-terminated strings.
        fd::check(unsafe { libc::rename(from.as_ptr(), to.as_ptr()) })
            .map_err(|e| errors::io("rename", &self.path, &e))?;
        // Renamed: nothing to clean up.
        self.temp.clear();
        Ok(self.bytes)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.temp.is_empty() {
            return;
        }
        self.file = None;
        if let Ok(temp) = fd::cpath(&self.temp) {
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::unlink(temp.as_ptr()) };
        }
    }
}

/// A download in progress.
#[derive(Debug)]
pub struct Download {
    path: Vec<u8>,
    file: Fd,
}

impl Download {
    /// Opens a regular file: the download and its FILE_INFO.
    pub fn start(path: &[u8]) -> Result<(Self, FileInfo), ErrorInfo> {
        errors::check_path("open", path)?;
        // Non-blocking open: a FIFO must not stall the agent.
        let file =
            fd::open(path, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(|e| errors::io("open", path, &e))?;
        let st = file.stat().map_err(|e| errors::io("stat", path, &e))?;
        match files::kind_of(st.st_mode) {
            FileKind::File => {}
            FileKind::Dir => return Err(errors::os("read", path, libc::EISDIR)),
            _ => {
                return Err(ErrorInfo {
                    kind: ErrorKind::InvalidInput,
                    errno: libc::EINVAL,
                    message: format!("read {}: not a regular file", errors::show(path)),
                })
            }
        }
        let info = FileInfo {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mode: st.st_mode & 0o7777,
        };
        Ok((
            Self {
                path: path.to_vec(),
                file,
            },
            info,
        ))
    }

    /// Reads the next chunk into `buf`: its length, 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorInfo> {
        self.file
            .read(buf)
            .map_err(|e| errors::io("read", &self.path, &e))
    }
}

/// A directory listing in progress.
#[derive(Debug)]
pub struct ListDir {
    path: Vec<u8>,
    dir: std::fs::ReadDir,
    /// An entry read ahead (to know whether more follow).
    ahead: Option<DirEntry>,
    done: bool,
}

impl ListDir {
    /// Opens the directory.
    pub fn start(path: &[u8]) -> Result<Self, ErrorInfo> {
        errors::check_path("opendir", path)?;
        let dir = std::fs::read_dir(OsStr::from_bytes(path)).map_err(|e| errors::io("opendir", path, &e))?;
        Ok(Self {
            path: path.to_vec(),
            dir,
            ahead: None,
            done: false,
        })
    }

    /// Whether the last chunk was produced.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn next_entry(&mut self) -> Result<Option<DirEntry>, ErrorInfo> {
        if let Some(e) = self.ahead.take() {
            return Ok(Some(e));
        }
        match self.dir.next() {
            None => Ok(None),
            Some(Err(e)) => Err(errors::io("readdir", &self.path, &e)),
            Some(Ok(entry)) => Ok(Some(describe(&entry))),
        }
    }

    /// The next chunk (the last has `more == false`).
    pub fn next_chunk(&mut self) -> Result<DirChunk, ErrorInfo> {
        let mut entries = Vec::new();
        let mut name_bytes = 0;
        while entries.len() < DIR_CHUNK && name_bytes < CHUNK_NAME_BYTES {
            match self.next_entry()? {
                Some(e) => {
                    name_bytes += e.name.len();
                    entries.push(e);
                }
                None => {
                    self.done = true;
                    return Ok(DirChunk { entries, more: false });
                }
            }
        }
        self.ahead = self.next_entry()?;
        self.done = self.ahead.is_none();
        Ok(DirChunk {
            entries,
            more: !self.done,
        })
    }
}

/// One entry: its lstat (fstatat below the open directory); an entry gone
/// meanwhile keeps its d_type kind with size and mode 0.
fn describe(entry: &std::fs::DirEntry) -> DirEntry {
    let name = ByteBuf::from(entry.file_name().as_bytes().to_vec());
    match entry.metadata() {
        Ok(m) => DirEntry {
            name,
            kind: files::kind_of(m.mode()),
            size: m.len(),
            mode: m.mode() & 0o7777,
        },
        Err(_) => {
            let kind = match entry.file_type() {
                Ok(t) if t.is_file() => FileKind::File,
                Ok(t) if t.is_dir() => FileKind::Dir,
                Ok(t) if t.is_symlink() => FileKind::Symlink,
                _ => FileKind::Other,
            };
            DirEntry {
                name,
                kind,
                size: 0,
                mode: 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-init-xfer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn b(p: &std::path::Path) -> &[u8] {
        p.as_os_str().as_bytes()
    }

    #[test]
    fn upload_renames_at_the_end_and_cleans_up_when_dropped() {
        let dir = scratch("up");
        let target = dir.join("sub/f");
        let mut up = Upload::start(b(&target), 0o751, true, 1).unwrap();
        up.write(b"hello ").unwrap();
        up.write(b"world").unwrap();
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        assert_eq!(up.finish().unwrap(), 11);
        assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o751
        );
        // A broken transfer leaves the old file and no temporary.
        let mut up = Upload::start(b(&target), 0o600, false, 2).unwrap();
        up.write(b"partial").unwrap();
        drop(up);
        assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
        assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 1);
        // Errors.
        let e = Upload::start(b(&dir.join("no/such/f")), 0o600, false, 3).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.message,
            format!(
                "open {}: No such file or directory",
                dir.join("no/such/f").display()
            )
        );
        assert_eq!(
            Upload::start(b"/tmp/", 0o600, false, 4).unwrap_err().kind,
            ErrorKind::IsADirectory
        );
        // Over a FIFO (or a device): refused, nothing made, the node left
        // alone.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo reads it only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = Upload::start(b(&fifo), 0o600, false, 6).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
        std::fs::remove_file(&fifo).unwrap();
        // Over a directory: refused at the rename, nothing left behind.
        std::fs::create_dir(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/x"), b"").unwrap();
        let up = Upload::start(b(&dir.join("d")), 0o600, false, 5).unwrap();
        assert!(up.finish().unwrap_err().message.starts_with("rename "));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn download_reads_regular_files_only() {
        let dir = scratch("down");
        let f = dir.join("f");
        std::fs::write(&f, vec![3u8; 100_000]).unwrap();
        let (mut d, info) = Download::start(b(&f)).unwrap();
        assert_eq!(info.size, 100_000);
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        loop {
            let n = d.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 100_000);
        assert_eq!(
            Download::start(b(&dir)).unwrap_err().kind,
            ErrorKind::IsADirectory
        );
        let e = Download::start(b"/no/such").unwrap_err();
        assert_eq!(e.message, "open /no/such: No such file or directory");
        assert_eq!(
            Download::start(b"/dev/null").unwrap_err().kind,
            ErrorKind::InvalidInput
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn list_dir_in_chunks() {
        let dir = scratch("list");
        for i in 0..(DIR_CHUNK * 2) {
            std::fs::write(dir.join(format!("f{i}")), b"ab").unwrap();
        }
        let mut l = ListDir::start(b(&dir)).unwrap();
        let first = l.next_chunk().unwrap();
        assert_eq!((first.entries.len(), first.more), (DIR_CHUNK, true));
        let second = l.next_chunk().unwrap();
        // Exactly two full chunks: the second is the last.
        assert_eq!((second.entries.len(), second.more), (DIR_CHUNK, false));
        assert!(l.is_done());
        assert!(first
            .entries
            .iter()
            .all(|e| e.kind == FileKind::File && e.size == 2));
        let empty = scratch("empty");
        let mut l = ListDir::start(b(&empty)).unwrap();
        let c = l.next_chunk().unwrap();
        assert_eq!((c.entries.len(), c.more), (0, false));
        assert_eq!(ListDir::start(b"/no/such").unwrap_err().kind, ErrorKind::NotFound);
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(empty).unwrap();
    }
}
