//! The one-shot file requests: STAT (lstat), MKDIR, REMOVE, RENAME,
//! CHMOD, SYNC. Each is a few system calls; errors are `<op> <path>:
//! <errno text>` with the errno's kind (docs/AGENT.md).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use hearth_agent_protocol::{ErrorInfo, ErrorKind, FileKind, FileStat};

use super::errors;
use super::fd;

/// Mode of directories MKDIR and UPLOAD create as parents (the umask
/// applies, like `mkdir -p`).
pub const PARENT_MODE: u32 = 0o755;

/// The kind of a `st_mode`.
pub fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

/// lstat(2) as the raw result.
pub fn lstat_raw(path: &[u8]) -> io::Result<libc::stat> {
    let c_path = fd::cpath(path)?;
    // SAFETY: `stat` is plain old data; all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid string and `st` a writable buffer.
    fd::check(unsafe { libc::lstat(c_path.as_ptr(), &mut st) })?;
    Ok(st)
}

/// A `struct stat` as the protocol's [`FileStat`].
pub fn file_stat(st: &libc::stat) -> FileStat {
    let mtime_ns = st
        .st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec);
    FileStat {
        kind: kind_of(st.st_mode),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns,
    }
}

/// STAT: lstat of `path`.
pub fn stat(path: &[u8]) -> Result<FileStat, ErrorInfo> {
    errors::check_path("stat", path)?;
    lstat_raw(path)
        .map(|st| file_stat(&st))
        .map_err(|e| errors::io("stat", path, &e))
}

fn mkdir_raw(path: &[u8], mode: u32) -> io::Result<()> {
    let c_path = fd::cpath(path)?;
    // SAFETY: `c_path` is a valid NUL-terminated string.
    fd::check(unsafe { libc::mkdir(c_path.as_ptr(), mode) }).map(drop)
}

fn chmod_raw(path: &[u8], mode: u32) -> io::Result<()> {
    let c_path = fd::cpath(path)?;
    // SAFETY: `c_path` is a valid NUL-terminated string.
    fd::check(unsafe { libc::chmod(c_path.as_ptr(), mode) }).map(drop)
}

/// Whether `path` is a directory (following symlinks, like `mkdir -p`).
fn is_dir(path: &[u8]) -> bool {
    std::fs::metadata(OsStr::from_bytes(path)).is_ok_and(|m| m.is_dir())
}

/// The parent of an absolute path (`/` for `/x`), trailing slashes
/// ignored; `None` for `/` itself.
pub fn parent(path: &[u8]) -> Option<&[u8]> {
    let trimmed = trim_slashes(path);
    if trimmed == b"/" {
        return None;
    }
    let cut = trimmed.iter().rposition(|&b| b == b'/')?;
    Some(match trimmed.get(..cut) {
        Some(p) if !p.is_empty() => p,
        _ => b"/",
    })
}

/// `path` without trailing slashes (`/` stays `/`).
pub fn trim_slashes(path: &[u8]) -> &[u8] {
    let mut p = path;
    while p.len() > 1 && p.ends_with(b"/") {
        p = p.get(..p.len() - 1).unwrap_or(p);
    }
    p
}

/// `mkdir -p` of `path`'s missing ancestors and `path` itself (with
/// `mode`); an existing directory is fine. The error is the errno of the
/// first failure and the path it happened on.
pub fn mkdir_all(path: &[u8], mode: u32) -> Result<(), (Vec<u8>, io::Error)> {
    match mkdir_raw(path, mode) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) && is_dir(path) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let Some(up) = parent(path).filter(|up| *up != path) else {
                return Err((path.to_vec(), e));
            };
            mkdir_all(up, PARENT_MODE)?;
            match mkdir_raw(path, mode) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && is_dir(path) => Ok(()),
                Err(e) => Err((path.to_vec(), e)),
            }
        }
        Err(e) => Err((path.to_vec(), e)),
    }
}

/// MKDIR. The directory gets exactly `mode` (mkdir(2) applies the umask
/// and ignores some bits; a chmod follows when they matter). With
/// `parents`, like `mkdir -p` (an existing directory is fine and keeps
/// its mode).
pub fn mkdir(path: &[u8], mode: u32, parents: bool, umask: u32) -> Result<(), ErrorInfo> {
    errors::check_path("mkdir", path)?;
    let mode = mode & 0o7777;
    let created = if parents {
        let existed = is_dir(path);
        mkdir_all(path, mode).map_err(|(p, e)| errors::io("mkdir", &p, &e))?;
        !existed
    } else {
        mkdir_raw(path, mode).map_err(|e| errors::io("mkdir", path, &e))?;
        true
    };
    if created && (mode & umask != 0 || mode & 0o7000 != 0) {
        chmod_raw(path, mode).map_err(|e| errors::io("chmod", path, &e))?;
    }
    Ok(())
}

/// REMOVE. A symlink is removed, never followed; a directory needs
/// `recursive` unless empty. The root directory is refused.
pub fn remove(path: &[u8], recursive: bool) -> Result<(), ErrorInfo> {
    errors::check_path("remove", path)?;
    if trim_slashes(path) == b"/" {
        return Err(errors::plain(
            ErrorKind::InvalidInput,
            "remove /: refusing to remove the root directory",
        ));
    }
    let st = lstat_raw(path).map_err(|e| errors::io("remove", path, &e))?;
    let os_path = OsStr::from_bytes(path);
    let result = if kind_of(st.st_mode) == FileKind::Dir {
        if recursive {
            // std's remove_dir_all works below an open directory with
            // unlinkat and never follows symlinks.
            std::fs::remove_dir_all(os_path)
        } else {
            std::fs::remove_dir(os_path)
        }
    } else {
        std::fs::remove_file(os_path)
    };
    result.map_err(|e| errors::io("remove", path, &e))
}

/// RENAME: rename(2).
pub fn rename(from: &[u8], to: &[u8]) -> Result<(), ErrorInfo> {
    errors::check_path("rename", from)?;
    errors::check_path("rename", to)?;
    let (c_from, c_to) = match (fd::cpath(from), fd::cpath(to)) {
        (Ok(f), Ok(t)) => (f, t),
        _ => return Err(errors::os("rename", from, libc::EINVAL)),
    };
    // SAFETY: both are valid NUL-terminated strings.
    fd::check(unsafe { libc::rename(c_from.as_ptr(), c_to.as_ptr()) })
        .map(drop)
        .map_err(|e| {
            let mut subject = from.to_vec();
            subject.extend_from_slice(b" to ");
            subject.extend_from_slice(to);
            errors::io("rename", &subject, &e)
        })
}

/// CHMOD: chmod(2) (a symlink's target).
pub fn chmod(path: &[u8], mode: u32) -> Result<(), ErrorInfo> {
    errors::check_path("chmod", path)?;
    chmod_raw(path, mode & 0o7777).map_err(|e| errors::io("chmod", path, &e))
}

/// SYNC: sync(2), which returns once the file systems are on disk.
pub fn sync() {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-init-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn b(p: &std::path::Path) -> &[u8] {
        p.as_os_str().as_bytes()
    }

    #[test]
    fn parents_of_paths() {
        assert_eq!(parent(b"/a/b"), Some(&b"/a"[..]));
        assert_eq!(parent(b"/a/b/"), Some(&b"/a"[..]));
        assert_eq!(parent(b"/a"), Some(&b"/"[..]));
        assert_eq!(parent(b"/"), None);
        assert_eq!(trim_slashes(b"///"), b"/");
        assert_eq!(trim_slashes(b"/x//"), b"/x");
    }

    #[test]
    fn mkdir_with_and_without_parents() {
        let dir = scratch("mkdir");
        let deep = dir.join("a/b/c");
        let e = mkdir(b(&deep), 0o700, false, 0o022).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.message,
            format!("mkdir {}: No such file or directory", deep.display())
        );
        mkdir(b(&deep), 0o770, true, 0o022).unwrap();
        assert_eq!(
            std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777,
            0o770
        );
        // Again: fine with parents, EEXIST without.
        mkdir(b(&deep), 0o700, true, 0o022).unwrap();
        assert_eq!(
            std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777,
            0o770
        );
        let e = mkdir(b(&deep), 0o700, false, 0o022).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        // A file in the way.
        std::fs::write(dir.join("f"), b"x").unwrap();
        let e = mkdir(b(&dir.join("f/g")), 0o700, true, 0o022).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotADirectory);
        let e = mkdir(b(&dir.join("f")), 0o700, true, 0o022).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn remove_never_follows_symlinks() {
        let dir = scratch("remove");
        let keep = dir.join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("precious"), b"x").unwrap();
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&keep, tree.join("link")).unwrap();
        let e = remove(b(&tree), false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::DirectoryNotEmpty);
        assert_eq!(
            e.message,
            format!("remove {}: Directory not empty", tree.display())
        );
        remove(b(&tree), true).unwrap();
        assert!(!tree.exists());
        assert!(keep.join("precious").exists());
        // A symlink to a directory is removed itself.
        let link = dir.join("l2");
        std::os::unix::fs::symlink(&keep, &link).unwrap();
        remove(b(&link), true).unwrap();
        assert!(keep.join("precious").exists());
        assert_eq!(remove(b(&link), false).unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(remove(b"/", true).unwrap_err().kind, ErrorKind::InvalidInput);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stat_rename_chmod() {
        let dir = scratch("misc");
        let f = dir.join("f");
        std::fs::write(&f, b"hello").unwrap();
        let st = stat(b(&f)).unwrap();
        assert_eq!((st.kind, st.size), (FileKind::File, 5));
        assert!(st.mtime_ns > 1_500_000_000_000_000_000);
        let l = dir.join("l");
        std::os::unix::fs::symlink("f", &l).unwrap();
        assert_eq!(stat(b(&l)).unwrap().kind, FileKind::Symlink);
        assert_eq!(stat(b(&dir)).unwrap().kind, FileKind::Dir);
        chmod(b(&f), 0o604).unwrap();
        assert_eq!(stat(b(&f)).unwrap().mode, 0o604);
        let g = dir.join("g");
        rename(b(&f), b(&g)).unwrap();
        let e = rename(b(&f), b(&g)).unwrap_err();
        assert_eq!(
            e.message,
            format!(
                "rename {} to {}: No such file or directory",
                f.display(),
                g.display()
            )
        );
        assert_eq!(chmod(b(&f), 0o600).unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(
            stat(b"/no/such").unwrap_err().message,
            "stat /no/such: No such file or directory"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
