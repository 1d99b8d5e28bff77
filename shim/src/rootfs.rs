//! The task's root file system as a disk: a directory becomes an ext4
//! image (`mkfs.ext4 -d`), cached by a digest of the tree; a block device
//! is used as it is.
//!
//! The cached image is the read-only base of the task's disk; the task
//! writes into an overlay of its own (docs/DISK.md), so one image serves
//! every task of the same tree, and a checkpoint freezes only the blocks
//! the task wrote.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Entries a tree may have before the shim refuses to digest it.
const MAX_ENTRIES: usize = 1 << 20;

/// What the task's root is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// A directory to copy into an image.
    Dir(PathBuf),
    /// A block device holding the file system itself.
    Block(PathBuf),
    /// An overlayfs snapshot (containerd's default snapshotter): mounted
    /// on the host only to copy it into an image.
    Overlay {
        /// The mount's source.
        source: String,
        /// Its options (`lowerdir=...`, `upperdir=...`, ...).
        options: Vec<String>,
    },
}

/// One of containerd's rootfs mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootMount {
    /// Its type (`bind`, `overlay`, `ext4`, ...).
    pub kind: String,
    /// Its source.
    pub source: String,
    /// Its options.
    pub options: Vec<String>,
}

/// The root for `mounts` (containerd's rootfs mounts) or, with none, the
/// spec's `root.path` (relative to `bundle` unless absolute).
pub fn source(mounts: &[RootMount], spec_root: Option<&str>, bundle: &Path) -> Result<RootSource> {
    let kinds: Vec<(&str, &str)> = mounts
        .iter()
        .map(|m| (m.kind.as_str(), m.source.as_str()))
        .collect();
    if let [m] = mounts {
        if m.kind == "overlay" {
            return Ok(RootSource::Overlay {
                source: m.source.clone(),
                options: m.options.clone(),
            });
        }
    }
    match kinds.as_slice() {
        [] => {
            let root = spec_root
                .filter(|p| !p.is_empty())
                .context("no rootfs mounts and no root.path")?;
            let path = Path::new(root);
            Ok(RootSource::Dir(if path.is_absolute() {
                path.to_path_buf()
            } else {
                bundle.join(path)
            }))
        }
        // containerd's native snapshotter: a directory bind-mounted.
        [(kind, src)] if *kind == "bind" && Path::new(src).is_dir() => Ok(RootSource::Dir(PathBuf::from(src))),
        [(kind, src)] if is_block_device(Path::new(src)) && *kind != "bind" => {
            Ok(RootSource::Block(PathBuf::from(src)))
        }
        _ => bail!(
            "rootfs mounts {:?}: only a directory (ctr --rootfs, or the native snapshotter's bind mount), one \
             overlay or one block device is supported",
            kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        ),
    }
}

fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// A digest of `dir`'s tree: every entry's path, type, mode, owner, size,
/// mtime and ctime, and each symlink's target. Cheap (no file is read);
/// any write to a file changes its ctime, so the digest changes with the
/// content.
pub fn tree_digest(dir: &Path, disk_size_mib: u64) -> Result<String> {
    let mut entries = Vec::new();
    walk(dir, dir, &mut entries)?;
    entries.sort();
    let mut h = Sha256::new();
    h.update(format!("hearth-shim-rootfs-1 size={disk_size_mib}\n"));
    for e in &entries {
        h.update(e);
        h.update(b"\n");
    }
    Ok(h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn walk(top: &Path, dir: &Path, out: &mut Vec<Vec<u8>>) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let m = std::fs::symlink_metadata(&path)?;
        let rel = path.strip_prefix(top).unwrap_or(&path);
        let mut line = rel.as_os_str().as_bytes().to_vec();
        line.extend(
            format!(
                " {:o} {}:{} {} {}.{} {}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            )
            .bytes(),
        );
        if m.file_type().is_symlink() {
            line.extend(b" -> ");
            line.extend(std::fs::read_link(&path)?.as_os_str().as_bytes());
        }
        out.push(line);
        if out.len() > MAX_ENTRIES {
            bail!("{} has more than {MAX_ENTRIES} entries", top.display());
        }
        if m.is_dir() {
            walk(top, &path, out)?;
        }
    }
    Ok(())
}

/// The cached image of `dir` in `cache`, built if missing. Concurrent
/// shims building the same tree wait for one another (a lock file).
pub fn image_for_dir(dir: &Path, cache: &Path, size_mib: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let key = tree_digest(dir, size_mib)?;
    let image = cache.join(format!("{key}.ext4"));
    if image.is_file() {
        log::info!("rootfs {} is cached as {}", dir.display(), image.display());
        return Ok(image);
    }
    let lock = File::create(cache.join(format!("{key}.lock")))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the image cache");
    }
    if !image.is_file() {
        build_ext4(dir, &image, size_mib)?;
    }
    drop(lock);
    let _ = std::fs::remove_file(cache.join(format!("{key}.lock")));
    Ok(image)
}

/// `mkfs.ext4 -d dir` into `image` (through a temporary file renamed at
/// the end, so a crash leaves no half image under the final name).
pub fn build_ext4(dir: &Path, image: &Path, size_mib: u64) -> Result<()> {
    let tmp = image.with_extension(format!("tmp{}", std::process::id()));
    let t = std::time::Instant::now();
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,root_owner=0:0",
            "-d",
        ])
        .arg(dir)
        .arg(&tmp)
        .arg(format!("{size_mib}M"))
        .output()
        .context("running mkfs.ext4 (package e2fsprogs)")?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "mkfs.ext4 -d {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, image)?;
    log::info!(
        "built {} from {} in {} ms",
        image.display(),
        dir.display(),
        t.elapsed().as_millis()
    );
    Ok(())
}

/// The cached image of an overlayfs snapshot: mounted on `target` (an
/// empty directory) on the host for the copy, then unmounted. The task
/// writes into its own disk overlay, not the snapshot's upper directory.
pub fn image_for_overlay(
    source: &str,
    options: &[String],
    target: &Path,
    cache: &Path,
    size_mib: u64,
) -> Result<PathBuf> {
    std::fs::create_dir_all(target)?;
    // Not containerd-shim's mount_rootfs: its synchronous version waits
    // for a forked helper through the SIGCHLD reaper, which this shim
    // turns off.
    let (flags, data) = overlay_options(options);
    let cstr = |s: &[u8]| std::ffi::CString::new(s).context("a NUL byte in a mount argument");
    let (source_c, target_c) = (
        cstr(source.as_bytes())?,
        cstr(target.as_os_str().as_encoded_bytes())?,
    );
    let (fstype_c, data_c) = (cstr(b"overlay")?, cstr(data.as_bytes())?);
    if data.len() >= 4000 {
        bail!(
            "overlay options of {} bytes: too many layers for one mount(2) page",
            data.len()
        );
    }
    // SAFETY: every argument is a valid NUL-terminated string that
    // outlives the call.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting the overlay snapshot on {}", target.display()));
    }
    let image = image_for_dir(target, cache, size_mib);
    // SAFETY: umount2(2) of the mount made above; `target_c` is a valid
    // NUL-terminated path.
    if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } != 0 {
        log::warn!(
            "unmounting {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    let _ = std::fs::remove_dir(target);
    image
}

/// mount(2) flags and data for overlay mount options: `ro` and `rw`
/// become flags, the rest (`lowerdir=...`, ...) data.
pub fn overlay_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// A sparse file of `size_mib` MiB full of zeros (a template's placeholder
/// disk).
pub fn placeholder(path: &Path, size_mib: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size_mib << 20)?;
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hearth-shim-rootfs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_digest_follows_the_tree() {
        let d = scratch("digest");
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/a"), "1").unwrap();
        let first = tree_digest(&d, 64).unwrap();
        assert_eq!(first, tree_digest(&d, 64).unwrap());
        assert_ne!(first, tree_digest(&d, 128).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("bin/a"), "2").unwrap();
        let second = tree_digest(&d, 64).unwrap();
        assert_ne!(first, second);
        std::os::unix::fs::symlink("a", d.join("bin/b")).unwrap();
        assert_ne!(second, tree_digest(&d, 64).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn overlay_options_split_into_flags_and_data() {
        let opts: Vec<String> = ["index=off", "ro", "lowerdir=/a:/b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            overlay_options(&opts),
            (libc::MS_RDONLY, "index=off,lowerdir=/a:/b".to_string())
        );
        assert_eq!(overlay_options(&[]), (0, String::new()));
    }

    #[test]
    fn sources() {
        let bundle = Path::new("/b");
        assert_eq!(
            source(&[], Some("rootfs"), bundle).unwrap(),
            RootSource::Dir("/b/rootfs".into())
        );
        assert_eq!(
            source(&[], Some("/abs"), bundle).unwrap(),
            RootSource::Dir("/abs".into())
        );
        assert!(source(&[], None, bundle).is_err());
        let overlay = RootMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/l".into()],
        };
        assert_eq!(
            source(std::slice::from_ref(&overlay), None, bundle).unwrap(),
            RootSource::Overlay {
                source: "overlay".into(),
                options: vec!["lowerdir=/l".into()]
            }
        );
        let tmpfs = RootMount {
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec![],
        };
        assert!(source(&[tmpfs], None, bundle).is_err());
        assert!(source(&[overlay.clone(), overlay], None, bundle).is_err());
    }

    #[test]
    fn images_are_built_once_and_cached() {
        let d = scratch("image");
        let tree = d.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hello"), "hello").unwrap();
        let cache = d.join("cache");
        let a = image_for_dir(&tree, &cache, 16).unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().len(), 16 << 20);
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        let b = image_for_dir(&tree, &cache, 16).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), mtime);
        // Only the image is left in the cache (no lock or temporary file).
        let names: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // debugfs can read the file back from the image.
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hello"])
            .arg(&a)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
