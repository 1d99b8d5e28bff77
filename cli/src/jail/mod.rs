//! `hearth run --jail uid=N,gid=N[,dir=PATH]`: the VMM runs as an
//! unprivileged user, in new mount, pid and net namespaces, with a root
//! directory holding only the files its VM needs (docs/JAIL.md).
//!
//! The launcher (root) plans the jail ([`plan`]), creates its directory and
//! forks a child that is pid 1 of a new pid namespace ([`process`]). The
//! child, still root and still seeing the host:
//!
//! 1. closes every inherited file descriptor but stdin, stdout and stderr;
//! 2. binds the API socket and opens the TAP interfaces (the new network
//!    namespace will not have them), to carry them in as open fds;
//! 3. creates the serial output file if missing, owned by the jail user;
//! 4. unshares the mount and network namespaces, makes all mounts private,
//!    mounts a tmpfs on the jail directory, bind-mounts the planned files
//!    and pivots into it ([`mounts`]);
//! 5. drops to the jail's uid and gid with no groups and no capabilities,
//!    sets no_new_privs ([`creds`]) and a parent-death SIGKILL;
//! 6. runs the VMM with the config rewritten to the in-jail paths.
//!
//! The parent waits, removes the jail directory once the child is gone (its
//! mounts die with its namespace) and exits with the child's status.

mod creds;
mod mounts;
mod plan;
mod process;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};
use hearth::{NetBackend, NetFactory, Tap, VmConfig};

use process::Fork;

/// Where jails go unless `dir=` says otherwise: `<this>/<launcher pid>`.
const JAIL_BASE: &str = "/run/hearth/jail";

/// Test and diagnostic hook: with `HEARTH_JAIL_PROBE=PATH`, the jailed
/// process prints one line on stderr describing what it sees (see
/// [`probe`]) before it starts the VM. Not a stable interface.
const PROBE_ENV: &str = "HEARTH_JAIL_PROBE";

/// A `--jail` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailSpec {
    pub uid: u32,
    pub gid: u32,
    /// The jail directory (default `/run/hearth/jail/<pid>`).
    pub dir: Option<PathBuf>,
    /// Stay in the host's network namespace (`net=host`): what a
    /// user-mode network interface needs, since its flows are the VMM's
    /// own sockets (docs/NETWORK.md). By default the VMM gets a network
    /// namespace of its own, where only TAPs opened before entering it
    /// reach anything.
    pub host_net: bool,
}

/// The jail directory, and whether this run created it (and so removes it).
#[derive(Debug)]
struct JailDir {
    path: PathBuf,
    created: bool,
}

impl JailDir {
    /// Creates the directory, or takes an existing empty one.
    fn create(spec: &JailSpec) -> anyhow::Result<Self> {
        let path = match &spec.dir {
            Some(d) => d.clone(),
            None => Path::new(JAIL_BASE).join(std::process::id().to_string()),
        };
        let fail = |e: io::Error| anyhow!("cannot create jail directory {}: {e}", path.display());
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(fail)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Self { path, created: true }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let empty = std::fs::read_dir(&path).map(|mut d| d.next().is_none());
                match empty {
                    Ok(true) => Ok(Self {
                        // A stale default directory is ours to remove.
                        created: spec.dir.is_none(),
                        path,
                    }),
                    Ok(false) => bail!("jail directory {} is not empty", path.display()),
                    Err(e) => Err(fail(e)),
                }
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// Removes the directory if this run created it. It is empty on the
    /// host: the jail's mounts were in the child's namespace.
    fn remove(&self) {
        if self.created {
            if let Err(e) = std::fs::remove_dir(&self.path) {
                log::warn!("cannot remove jail directory {}: {e}", self.path.display());
            }
        }
    }
}

/// Forking is safe only with one thread.
fn check_single_threaded() -> anyhow::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(Iterator::count)
        .context("cannot count the launcher's threads")?;
    if threads != 1 {
        bail!("the launcher has {threads} threads; it must fork with one");
    }
    Ok(())
}

/// Runs the VM in a jail: `outside` runs in the child before it enters
/// the jail (as root, seeing the host) and its result is passed with the
/// rewritten config to `vmm`, which runs inside. Returns in both
/// processes: in the child with the VMM's status, in the parent with the
/// child's.
pub fn run<T>(
    spec: &JailSpec,
    config: VmConfig,
    outside: impl FnOnce() -> anyhow::Result<T>,
    vmm: impl FnOnce(VmConfig, T) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--jail needs root: it creates namespaces and mounts, then drops to the jail's uid and gid");
    }
    let plan = plan::plan(&config).map_err(|e| anyhow!("jail: {e}"))?;
    check_single_threaded()?;
    let dir = JailDir::create(spec)?;
    let forked = || -> anyhow::Result<_> {
        let mask = process::block_signals().context("cannot block signals")?;
        let (alive_r, alive_w) = process::pipe().context("cannot create a pipe")?;
        let fork = process::fork_pid_ns().context("cannot fork into a new pid namespace")?;
        Ok((mask, alive_r, alive_w, fork))
    };
    match forked() {
        Err(e) => {
            dir.remove();
            Err(e)
        }
        Ok((mask, alive_r, alive_w, Fork::Child)) => {
            drop(alive_w);
            let child = Child {
                spec,
                root: &dir.path,
                plan,
                mask,
                parent_alive: alive_r,
            };
            child.run(outside, vmm)
        }
        Ok((_, alive_r, alive_w, Fork::Parent { child })) => {
            drop(alive_r);
            let waited = process::wait(child);
            dir.remove();
            drop(alive_w);
            let (status, received) = waited.context("cannot wait for the jailed VMM")?;
            Ok(process::exit_code(status, received))
        }
    }
}

/// The child's side of a jailed run.
struct Child<'a> {
    spec: &'a JailSpec,
    root: &'a Path,
    plan: plan::Plan,
    /// The signal mask from before the fork.
    mask: libc::sigset_t,
    /// Reads end-of-file once the parent is gone.
    parent_alive: OwnedFd,
}

impl Child<'_> {
    fn run<T>(
        self,
        outside: impl FnOnce() -> anyhow::Result<T>,
        vmm: impl FnOnce(VmConfig, T) -> anyhow::Result<ExitCode>,
    ) -> anyhow::Result<ExitCode> {
        process::restore_mask(&self.mask).context("cannot restore the signal mask")?;
        close_inherited_fds(&self.parent_alive)?;
        let carried = outside()?;
        let mut config = self.plan.config.clone();
        open_taps(&mut config)?;
        if let Some(path) = &self.plan.serial_file {
            create_serial_file(path, self.spec.uid, self.spec.gid)?;
        }
        let user_net = config
            .nets
            .iter()
            .any(|n| matches!(n.kind, hearth::NetBackendKind::User(_)));
        if user_net && !self.spec.host_net {
            bail!(
                "a user-mode network interface in a jail needs the host's network namespace: \
                 add net=host to --jail (docs/NETWORK.md)"
            );
        }
        let flags = if self.spec.host_net {
            libc::CLONE_NEWNS
        } else {
            libc::CLONE_NEWNS | libc::CLONE_NEWNET
        };
        // SAFETY: unshare takes flags only.
        if unsafe { libc::unshare(flags) } < 0 {
            bail!(
                "cannot create mount and network namespaces: {}",
                io::Error::last_os_error()
            );
        }
        mounts::enter(self.root, &self.plan, self.spec.uid, self.spec.gid)
            .map_err(|e| e.context("cannot build the jail"))?;
        creds::drop_to(self.spec.uid, self.spec.gid).map_err(|e| {
            e.context(format!(
                "cannot drop to uid {} gid {}",
                self.spec.uid, self.spec.gid
            ))
        })?;
        // Set after the credential change, which clears it; then make sure
        // the parent did not exit before.
        if creds::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
            bail!("PR_SET_PDEATHSIG: {}", io::Error::last_os_error());
        }
        if process::peer_closed(&self.parent_alive) {
            bail!("the launcher exited before the jail was ready");
        }
        drop(self.parent_alive);
        if let Some(path) = std::env::var_os(PROBE_ENV) {
            probe(Path::new(&path));
        }
        vmm(config, carried).map_err(|e| {
            let text = self.plan.to_host_paths(&crate::one_line(&e));
            if text.to_lowercase().contains("permission denied") {
                anyhow!(
                    "{text} (as the jail's uid {} gid {})",
                    self.spec.uid,
                    self.spec.gid
                )
            } else {
                anyhow!(text)
            }
        })
    }
}

/// Closes every fd above stderr but `keep`: an inherited directory fd
/// would be a way out of the chroot. Nothing in this process owns the
/// others (the launcher has opened nothing else yet).
fn close_inherited_fds(keep: &OwnedFd) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let fds: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")
        .context("cannot list open file descriptors")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2 && fd != keep.as_raw_fd()) {
        // SAFETY: no Rust object owns these fds (see above); the one that
        // listed the directory is already closed (EBADF, ignored).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Opens each TAP interface here, in the host's network namespace, and
/// hands the open device to the VMM through a one-shot backend factory.
fn open_taps(config: &mut VmConfig) -> anyhow::Result<()> {
    for net in config.nets.iter_mut().filter(|n| n.backend.is_none()) {
        let tap = Mutex::new(Some(Tap::open(&net.tap, net.create)?));
        net.backend = Some(NetFactory::new(move || {
            tap.lock()
                .ok()
                .and_then(|mut t| t.take())
                .map(|t| Box::new(t) as Box<dyn NetBackend>)
                .ok_or_else(|| io::Error::other("the TAP opened before entering the jail is already in use"))
        }));
    }
    Ok(())
}

/// Creates the serial output file if missing, owned by the jail user, so
/// that it can be bind-mounted and written.
fn create_serial_file(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    let created = std::fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o644)
        .open(path);
    match created {
        Ok(file) => std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown serial file {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow!("cannot create serial file {}: {e}", path.display())),
    }
}

/// The network interfaces this process sees.
fn interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns null or an array ended by a zero
    // index, each entry with a NUL-terminated name; it is read before
    // if_freenameindex releases it, and never after.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            names.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// One stderr line on what the jailed process sees: its pid, credentials,
/// capabilities, no_new_privs, network interfaces, the root directory's
/// entries, and what opening `path` gives.
fn probe(path: &Path) {
    let join = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut root: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    root.sort();
    let caps = creds::capabilities().map_or_else(|e| e.to_string(), |(e, p)| format!("{e:#x},{p:#x}"));
    let opened = match std::fs::File::open(path) {
        Ok(_) => "opened".to_string(),
        Err(e) => e.to_string(),
    };
    eprintln!(
        "hearth: jail-probe: pid={} uids={} gids={} groups={} caps={caps} no_new_privs={} ifaces={} root={} open {}: {opened}",
        std::process::id(),
        join(&creds::uids()),
        join(&creds::gids()),
        creds::group_count(),
        u8::from(creds::no_new_privs()),
        interfaces().join(","),
        root.join(","),
        path.display(),
    );
}
