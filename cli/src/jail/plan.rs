//! What goes into a jail, as pure data: the files and directories to
//! bind-mount from the host, the device nodes to create, and the VM config
//! rewritten to the paths the VMM sees inside.
//!
//! The jail's layout (every entry is a mount point on the jail's own
//! read-only tmpfs root):
//!
//! ```text
//! /dev/kvm               character device 10:232, owned by the jail user, 0600
//! /dev/urandom           character device 1:9, 0444
//! /proc/meminfo          the host's, read-only (the library checks memory_mib against it)
//! /kernel/NAME           the kernel, read-only
//! /initrd/NAME           the initrd, read-only
//! /disks/I/NAME          disk I, read-only if the disk is
//! /serial/NAME           the serial output file
//! /vsock/                the directory of the vsock socket (the VMM creates
//!                        NAME there and connects to NAME_PORT)
//! ```
//!
//! TAP interfaces and the API socket need nothing here: they are opened
//! (bound) before entering the jail and their file descriptors carried in.

use std::path::{Component, Path, PathBuf};

use hearth::{SerialOutput, VmConfig};

/// Whether a bind mount holds one file or a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// One host path made visible inside the jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// What it is, for messages ("kernel", "disk 0", ...).
    pub what: String,
    /// The host path.
    pub host: PathBuf,
    /// The absolute path inside the jail.
    pub jail: PathBuf,
    pub kind: Kind,
    pub read_only: bool,
}

/// A device node created in the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// The absolute path inside the jail.
    pub path: &'static str,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    /// Owned by the jail's uid and gid (else by root).
    pub jail_owned: bool,
}

/// The device nodes every jail holds: the VMM opens /dev/kvm as the jail
/// user; /dev/urandom serves as the fallback of std's random seeding.
pub const NODES: [Node; 2] = [
    Node {
        path: "/dev/kvm",
        major: 10,
        minor: 232,
        mode: 0o600,
        jail_owned: true,
    },
    Node {
        path: "/dev/urandom",
        major: 1,
        minor: 9,
        mode: 0o444,
        jail_owned: false,
    },
];

/// The bind mounts for a config, and the config the VMM runs inside.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub binds: Vec<Bind>,
    /// The config with every path rewritten to its in-jail path.
    pub config: VmConfig,
    /// The host serial output file, which must exist before it can be
    /// bind-mounted.
    pub serial_file: Option<PathBuf>,
}

impl Plan {
    /// `text` (a message from inside the jail) with in-jail paths turned
    /// back into the host paths they are, in one pass.
    pub fn to_host_paths(&self, text: &str) -> String {
        let mut pairs: Vec<(String, String)> = self
            .binds
            .iter()
            .map(|b| match b.kind {
                Kind::File => (b.jail.display().to_string(), b.host.display().to_string()),
                Kind::Dir => (format!("{}/", b.jail.display()), format!("{}/", b.host.display())),
            })
            .collect();
        pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match pairs.iter().find(|(from, _)| rest.starts_with(from.as_str())) {
                Some((from, to)) => {
                    out.push_str(to);
                    rest = &rest[from.len()..];
                }
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        out
    }
}

/// The last component of `path`, or an error naming `what`.
fn file_name(what: &str, path: &Path) -> Result<PathBuf, String> {
    match path.components().next_back() {
        Some(Component::Normal(name)) => Ok(PathBuf::from(name)),
        _ => Err(format!("{what} path {} does not name a file", path.display())),
    }
}

/// Binds `host` as file `name` in the in-jail directory `dir` and returns
/// the in-jail path.
fn bind_file(
    binds: &mut Vec<Bind>,
    what: String,
    host: &Path,
    dir: &str,
    read_only: bool,
) -> Result<PathBuf, String> {
    let jail = Path::new(dir).join(file_name(&what, host)?);
    binds.push(Bind {
        what,
        host: host.to_path_buf(),
        jail: jail.clone(),
        kind: Kind::File,
        read_only,
    });
    Ok(jail)
}

/// Plans the jail for `config`.
pub fn plan(config: &VmConfig) -> Result<Plan, String> {
    let mut binds = vec![Bind {
        what: "host memory information".into(),
        host: "/proc/meminfo".into(),
        jail: "/proc/meminfo".into(),
        kind: Kind::File,
        read_only: true,
    }];
    let mut c = config.clone();
    c.kernel = bind_file(&mut binds, "kernel".into(), &config.kernel, "/kernel", true)?;
    if let Some(initrd) = &config.initrd {
        c.initrd = Some(bind_file(&mut binds, "initrd".into(), initrd, "/initrd", true)?);
    }
    for (i, (disk, out)) in config.disks.iter().zip(c.disks.iter_mut()).enumerate() {
        if disk.backend.is_none() {
            let dir = format!("/disks/{i}");
            out.path = bind_file(&mut binds, format!("disk {i}"), &disk.path, &dir, disk.read_only)?;
        }
    }
    let mut serial_file = None;
    if let SerialOutput::File(path) = &config.serial {
        c.serial = SerialOutput::File(bind_file(
            &mut binds,
            "serial file".into(),
            path,
            "/serial",
            false,
        )?);
        serial_file = Some(path.clone());
    }
    if let (Some(v), Some(out)) = (&config.vsock, c.vsock.as_mut()) {
        let name = file_name("vsock socket", &v.uds_path)?;
        let dir = match v.uds_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        binds.push(Bind {
            what: "vsock socket directory".into(),
            host: dir,
            jail: "/vsock".into(),
            kind: Kind::Dir,
            read_only: false,
        });
        out.uds_path = Path::new("/vsock").join(name);
    }
    Ok(Plan {
        binds,
        config: c,
        serial_file,
    })
}

/// Everything to create on the jail's tmpfs before mounting, in order
/// (parents first, each once): the directories, then the mount points of
/// the binds and device nodes with their kind.
pub fn mount_points(plan: &Plan) -> Vec<(PathBuf, Kind)> {
    let mut points: Vec<(PathBuf, Kind)> = Vec::new();
    let mut add = |path: &Path, kind: Kind| {
        let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
        dirs.reverse();
        for dir in dirs.into_iter().filter(|d| *d != Path::new("/")) {
            if !points.iter().any(|(p, _)| p == dir) {
                points.push((dir.to_path_buf(), Kind::Dir));
            }
        }
        if !points.iter().any(|(p, _)| p == path) {
            points.push((path.to_path_buf(), kind));
        }
    };
    for node in NODES {
        add(Path::new(node.path), Kind::File);
    }
    for bind in &plan.binds {
        add(&bind.jail, bind.kind);
    }
    points
}

/// `inner` (absolute, inside the jail) as a host path under `root`.
pub fn under(root: &Path, inner: &Path) -> PathBuf {
    root.join(inner.strip_prefix("/").unwrap_or(inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth::{DiskConfig, NetConfig, VsockConfig};

    fn full_config() -> VmConfig {
        VmConfig::builder("/boot/vmlinux")
            .initrd("/images/initrd.cpio")
            .disk(DiskConfig::file("/images/root.ext4"))
            .disk(DiskConfig::file("/data/root.ext4").read_only(true).id("data"))
            .serial(SerialOutput::File("/var/log/vm/serial.log".into()))
            .vsock(VsockConfig::new(3, "/run/vm7/v.sock"))
            .net(NetConfig::tap("tap0"))
            .build()
            .unwrap()
    }

    fn bind(plan: &Plan, jail: &str) -> Bind {
        plan.binds
            .iter()
            .find(|b| b.jail == Path::new(jail))
            .unwrap_or_else(|| panic!("no bind at {jail}: {:?}", plan.binds))
            .clone()
    }

    #[test]
    fn paths_are_rewritten_to_their_binds() {
        let p = plan(&full_config()).unwrap();
        let c = &p.config;
        assert_eq!(c.kernel, Path::new("/kernel/vmlinux"));
        assert_eq!(c.initrd.as_deref(), Some(Path::new("/initrd/initrd.cpio")));
        // Same file name in two directories: no collision.
        assert_eq!(c.disks[0].path, Path::new("/disks/0/root.ext4"));
        assert_eq!(c.disks[1].path, Path::new("/disks/1/root.ext4"));
        assert_eq!(
            (c.disks[1].read_only, c.disks[1].id.as_deref()),
            (true, Some("data"))
        );
        assert_eq!(c.serial, SerialOutput::File("/serial/serial.log".into()));
        assert_eq!(c.vsock, Some(VsockConfig::new(3, "/vsock/v.sock")));
        // TAPs are opened outside the jail; nothing to bind.
        assert_eq!(c.nets, full_config().nets);
        assert_eq!(
            p.serial_file.as_deref(),
            Some(Path::new("/var/log/vm/serial.log"))
        );
    }

    #[test]
    fn binds_carry_host_paths_and_modes() {
        let p = plan(&full_config()).unwrap();
        let k = bind(&p, "/kernel/vmlinux");
        assert_eq!(
            (k.host.as_path(), k.kind, k.read_only),
            (Path::new("/boot/vmlinux"), Kind::File, true)
        );
        assert!(bind(&p, "/initrd/initrd.cpio").read_only);
        assert!(!bind(&p, "/disks/0/root.ext4").read_only);
        assert!(bind(&p, "/disks/1/root.ext4").read_only);
        assert!(!bind(&p, "/serial/serial.log").read_only);
        let v = bind(&p, "/vsock");
        assert_eq!(
            (v.host.as_path(), v.kind, v.read_only),
            (Path::new("/run/vm7"), Kind::Dir, false)
        );
        assert!(bind(&p, "/proc/meminfo").read_only);
        assert_eq!(p.binds.len(), 7);
    }

    #[test]
    fn minimal_config_binds_kernel_and_meminfo_only() {
        let p = plan(&VmConfig::builder("vmlinux").build().unwrap()).unwrap();
        let jails: Vec<_> = p.binds.iter().map(|b| b.jail.to_str().unwrap()).collect();
        assert_eq!(jails, ["/proc/meminfo", "/kernel/vmlinux"]);
        assert_eq!(p.binds[1].host, Path::new("vmlinux"));
        assert_eq!(p.serial_file, None);
    }

    #[test]
    fn relative_vsock_path_binds_the_current_directory() {
        let c = VmConfig::builder("/k")
            .vsock(VsockConfig::new(3, "v.sock"))
            .build()
            .unwrap();
        let p = plan(&c).unwrap();
        assert_eq!(bind(&p, "/vsock").host, Path::new("."));
        assert_eq!(p.config.vsock.unwrap().uds_path, Path::new("/vsock/v.sock"));
    }

    #[test]
    fn paths_without_a_file_name_are_refused() {
        let e = plan(&VmConfig::builder("/boot/..").build().unwrap()).unwrap_err();
        assert!(e.contains("kernel path /boot/.. does not name a file"), "{e}");
        let c = VmConfig::builder("/k")
            .vsock(VsockConfig::new(3, "/"))
            .build()
            .unwrap();
        assert!(plan(&c).unwrap_err().contains("vsock socket path"));
    }

    #[test]
    fn mount_points_come_parents_first_and_once() {
        let p = plan(&full_config()).unwrap();
        let points = mount_points(&p);
        let names: Vec<_> = points.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "/dev",
                "/dev/kvm",
                "/dev/urandom",
                "/proc",
                "/proc/meminfo",
                "/kernel",
                "/kernel/vmlinux",
                "/initrd",
                "/initrd/initrd.cpio",
                "/disks",
                "/disks/0",
                "/disks/0/root.ext4",
                "/disks/1",
                "/disks/1/root.ext4",
                "/serial",
                "/serial/serial.log",
                "/vsock",
            ]
        );
        let kind = |n: &str| points.iter().find(|(p, _)| p == Path::new(n)).unwrap().1;
        assert_eq!(kind("/disks/0"), Kind::Dir);
        assert_eq!(kind("/disks/0/root.ext4"), Kind::File);
        assert_eq!(kind("/vsock"), Kind::Dir);
        assert_eq!(kind("/dev/kvm"), Kind::File);
    }

    #[test]
    fn messages_get_host_paths_back() {
        let mut c = full_config();
        // A host path that looks like another bind's in-jail path.
        c.disks[1].path = "/disks/0/root.ext4".into();
        let p = plan(&c).unwrap();
        assert_eq!(
            p.to_host_paths("cannot open disk /disks/1/root.ext4: Permission denied"),
            "cannot open disk /disks/0/root.ext4: Permission denied"
        );
        assert_eq!(
            p.to_host_paths("/disks/0/root.ext4 and /kernel/vmlinux"),
            "/images/root.ext4 and /boot/vmlinux"
        );
        assert_eq!(
            p.to_host_paths("cannot bind /vsock/v.sock_52: é"),
            "cannot bind /run/vm7/v.sock_52: é"
        );
        assert_eq!(p.to_host_paths("/vsockets stay"), "/vsockets stay");
    }

    #[test]
    fn under_joins_inside_the_root() {
        assert_eq!(
            under(Path::new("/run/j/1"), Path::new("/dev/kvm")),
            Path::new("/run/j/1/dev/kvm")
        );
    }
}
