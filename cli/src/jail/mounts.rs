//! Building the jail's file system and switching into it: the mount
//! system calls, in a mount namespace of our own.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{anyhow, bail, Context};

use super::plan::{self, Bind, Kind, Plan, NODES};

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `mount(2)`, with paths and options as Rust types.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // until the call returns; mount reads them and keeps nothing.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast::<libc::c_void>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The per-mount flags `path`'s mount has now, as mount flags: a bind
/// remount must repeat them or it would clear them (e.g. make a read-only
/// host file system writable in the jail).
fn mount_flags_of(path: &Path) -> io::Result<libc::c_ulong> {
    let c = cstring(path)?;
    // SAFETY: statvfs is plain C data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a statvfs the call
    // fills; both outlive the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let map = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(map
        .iter()
        .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
        .fold(0, |flags, (_, ms)| flags | ms))
}

/// Creates the mount points and device nodes on the jail's tmpfs.
fn populate(root: &Path, plan: &Plan, uid: u32, gid: u32) -> anyhow::Result<()> {
    for (inner, kind) in plan::mount_points(plan) {
        let path = plan::under(root, &inner);
        if NODES.iter().any(|n| Path::new(n.path) == inner) {
            continue;
        }
        let made = match kind {
            Kind::Dir => std::fs::DirBuilder::new().mode(0o755).create(&path),
            Kind::File => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map(drop),
        };
        made.with_context(|| format!("cannot create {}", path.display()))?;
    }
    for node in NODES {
        let path = plan::under(root, Path::new(node.path));
        let c = cstring(&path)?;
        let dev = libc::makedev(node.major, node.minor);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | node.mode, dev) } < 0 {
            return Err(anyhow!(
                "cannot create {}: {}",
                node.path,
                io::Error::last_os_error()
            ));
        }
        // mknod applies the umask: set the mode exactly.
        // SAFETY: as above.
        if unsafe { libc::chmod(c.as_ptr(), node.mode) } < 0 {
            return Err(anyhow!(
                "cannot chmod {}: {}",
                node.path,
                io::Error::last_os_error()
            ));
        }
        if node.jail_owned {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .with_context(|| format!("cannot chown {}", node.path))?;
        }
    }
    Ok(())
}

/// Bind-mounts one host path at its place in the jail: no set-uid, no
/// executables, no devices (but for a block-device disk), read-only if
/// planned, and never less restricted than the host's mount.
fn bind(root: &Path, b: &Bind) -> anyhow::Result<()> {
    let target = plan::under(root, &b.jail);
    let fail = |e: io::Error| anyhow!("cannot bind {} {} into the jail: {e}", b.what, b.host.display());
    let meta = std::fs::metadata(&b.host).map_err(fail)?;
    let is_dir = meta.is_dir();
    if is_dir != (b.kind == Kind::Dir) {
        return Err(anyhow!(
            "cannot bind {} {} into the jail: it is {}",
            b.what,
            b.host.display(),
            if is_dir { "a directory" } else { "not a directory" }
        ));
    }
    mount(Some(&b.host), &target, None, libc::MS_BIND, None).map_err(fail)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
    if !meta.file_type().is_block_device() {
        flags |= libc::MS_NODEV;
    }
    if b.read_only {
        flags |= libc::MS_RDONLY;
    }
    flags |= mount_flags_of(&target).map_err(fail)?;
    mount(None, &target, None, flags, None).map_err(fail)
}

/// Switches the root to `root` and detaches the old one entirely. Where
/// the old root cannot be pivoted away (it is the initramfs: EINVAL), moves
/// the jail's mount onto `/` and chroots instead; the old root is then
/// hidden underneath, and the jail user (no CAP_SYS_CHROOT, no
/// CAP_SYS_ADMIN) cannot get back to it.
fn pivot(root: &Path) -> anyhow::Result<()> {
    std::env::set_current_dir(root).with_context(|| format!("cannot enter {}", root.display()))?;
    let dot = cstring(Path::new("."))?;
    // SAFETY: pivot_root takes two NUL-terminated paths, which outlive the
    // call. "." for both stacks the old root under the new one.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } == 0 {
        // SAFETY: as above; MNT_DETACH unmounts the old root, now on top
        // of the new one, once nothing uses it.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } < 0 {
            bail!("cannot unmount the old root: {}", io::Error::last_os_error());
        }
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            bail!("pivot_root: {e}");
        }
        mount(Some(Path::new(".")), Path::new("/"), None, libc::MS_MOVE, None)
            .map_err(|e| anyhow!("cannot move the jail onto /: {e}"))?;
        // SAFETY: chroot takes a NUL-terminated path that outlives the call.
        if unsafe { libc::chroot(dot.as_ptr()) } < 0 {
            bail!("chroot: {}", io::Error::last_os_error());
        }
    }
    std::env::set_current_dir("/").context("cannot enter the new root")
}

/// In a fresh mount namespace: makes every mount private, mounts a tmpfs
/// on `root`, fills it as `plan` says, makes it read-only and pivots into
/// it. Afterwards only the planned files exist.
pub fn enter(root: &Path, plan: &Plan, uid: u32, gid: u32) -> anyhow::Result<()> {
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(|e| {
        match e.raw_os_error() {
            // A chroot whose root is not a mount point.
            Some(libc::EINVAL) => anyhow!("cannot make mounts private: / is not a mount point"),
            _ => anyhow!("cannot make mounts private: {e}"),
        }
    })?;
    mount(
        Some(Path::new("hearth-jail")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=256"),
    )
    .map_err(|e| anyhow!("cannot mount a tmpfs on {}: {e}", root.display()))?;
    populate(root, plan, uid, gid)?;
    for b in &plan.binds {
        bind(root, b)?;
    }
    mount(
        None,
        root,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| anyhow!("cannot make the jail root read-only: {e}"))?;
    pivot(root)
}
