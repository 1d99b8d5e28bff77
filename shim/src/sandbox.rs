//! A task's VM: booted from the kernel, restored from a template (a
//! snapshot of a booted agent VM with a placeholder disk in the task
//! disk's slot) or from a checkpoint; its agent, and the guest mounts that
//! make the task's disk the container's root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hearth::{
    AgentClient, DiskConfig, GuestMount, RestoreOptions, SerialBuffer, SerialOutput, Vm, VmConfig,
    VsockConfig,
};

use crate::config::ShimConfig;
use crate::spec::GUEST_ROOT;

/// The guest's vsock CID (any value above 2; one VM per socket).
const GUEST_CID: u64 = 3;
/// The task disk's index: after the agent's root disk.
pub const TASK_DISK: usize = 1;
/// The guest device of the task disk.
const TASK_DEVICE: &str = "/dev/vdb";
/// Console bytes kept for error messages.
const CONSOLE_KEEP: usize = 64 << 10;
/// How long one agent request may stay unanswered.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running task VM.
#[derive(Debug)]
pub struct Sandbox {
    /// The VM.
    pub vm: Vm,
    /// Its agent.
    pub agent: AgentClient,
    console: SerialBuffer,
}

fn serial(cfg: &ShimConfig, dir: &Path, console: &SerialBuffer) -> SerialOutput {
    if cfg.console_log {
        SerialOutput::File(dir.join("console.log"))
    } else {
        SerialOutput::Buffer(console.clone())
    }
}

/// The vsock socket of the task whose scratch directory is `dir`.
pub fn vsock_path(dir: &Path) -> PathBuf {
    dir.join("v.sock")
}

impl Sandbox {
    /// Boots a VM with the agent's root and `disk` as the task's disk, and
    /// waits for the agent.
    pub fn boot(cfg: &ShimConfig, id: &str, dir: &Path, disk: DiskConfig) -> Result<Self> {
        let console = SerialBuffer::with_limit(CONSOLE_KEEP);
        let config = VmConfig::builder(&cfg.kernel)
            .cmdline(cfg.cmdline())
            .vcpus(cfg.vcpus)
            .memory_mib(cfg.memory_mib)
            .pit(cfg.pit)
            .disk(DiskConfig::file(&cfg.agent_rootfs).read_only(true))
            .disk(disk)
            .vsock(VsockConfig::new(GUEST_CID, vsock_path(dir)))
            .seccomp(cfg.seccomp_mode()?)
            .serial(serial(cfg, dir, &console))
            .id(id)
            .label("runtime", "containerd")
            .build()
            .context("the VM configuration")?;
        let t = Instant::now();
        let vm = Vm::start(config).context("starting the VM")?;
        let sandbox = Self::new(vm, console);
        sandbox.wait_agent(Duration::from_secs(cfg.boot_timeout_secs))?;
        log::info!("task {id}: booted, agent ready in {} ms", t.elapsed().as_millis());
        Ok(sandbox)
    }

    /// Restores the snapshot in `snapshot` (a template, or a checkpoint),
    /// with `disk` replacing the task disk if given, and waits for the
    /// agent.
    pub fn restore(
        cfg: &ShimConfig,
        id: &str,
        dir: &Path,
        snapshot: &Path,
        disk: Option<DiskConfig>,
    ) -> Result<Self> {
        let console = SerialBuffer::with_limit(CONSOLE_KEEP);
        let mut options = RestoreOptions::new()
            .vsock_uds_path(vsock_path(dir))
            .seccomp(cfg.seccomp_mode()?)
            .serial(serial(cfg, dir, &console))
            .id(id);
        options = match disk {
            Some(d) => options.disk(TASK_DISK, d),
            // A checkpoint's own disk state: the task writes into an
            // overlay of its own on top of it.
            None => options.disk_overlay(TASK_DISK, dir.join("rootfs.overlay")),
        };
        let t = Instant::now();
        let vm = Vm::restore(snapshot, &options)
            .with_context(|| format!("restoring the snapshot in {}", snapshot.display()))?;
        let sandbox = Self::new(vm, console);
        sandbox.wait_agent(Duration::from_secs(30))?;
        log::info!(
            "task {id}: restored from {}, agent ready in {} ms",
            snapshot.display(),
            t.elapsed().as_millis()
        );
        Ok(sandbox)
    }

    fn new(vm: Vm, console: SerialBuffer) -> Self {
        let agent = match vm.agent() {
            Ok(a) => a,
            // The config always has vsock.
            Err(_) => AgentClient::new(
                vm.config()
                    .vsock
                    .as_ref()
                    .map(|v| v.uds_path.clone())
                    .unwrap_or_default(),
            ),
        };
        Self {
            agent: agent.timeout(Some(AGENT_TIMEOUT)),
            vm,
            console,
        }
    }

    /// The console's last lines (for errors).
    pub fn console_tail(&self) -> String {
        let text = self.console.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_agent(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let quick = self.agent.clone().timeout(Some(Duration::from_secs(5)));
        loop {
            let error = match quick.list() {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if let Some(reason) = self.vm.exit_reason() {
                bail!(
                    "the VM stopped ({reason}) before its agent answered; console:\n{}",
                    self.console_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent did not answer within {timeout:?} ({error}); console:\n{}",
                    self.console_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Mounts the task disk as the container's root, and `/proc`, `/sys`
    /// and the guest's `/dev` inside it.
    pub fn mount_root(&self, read_only: bool) -> Result<()> {
        let ro = if read_only { libc::MS_RDONLY } else { 0 };
        let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let mounts = [
            GuestMount::new(TASK_DEVICE, GUEST_ROOT).fstype("ext4").flags(ro),
            GuestMount::new("proc", format!("{GUEST_ROOT}/proc"))
                .fstype("proc")
                .flags(nodev)
                .mkdir(true),
            GuestMount::new("/dev", format!("{GUEST_ROOT}/dev"))
                .flags(libc::MS_BIND | libc::MS_REC)
                .mkdir(true),
            GuestMount::new("sysfs", format!("{GUEST_ROOT}/sys"))
                .fstype("sysfs")
                .flags(nodev | libc::MS_RDONLY)
                .mkdir(true),
        ];
        let t = Instant::now();
        for (i, m) in mounts.iter().enumerate() {
            if let Err(e) = self.agent.mount(m) {
                // A read-only root cannot get mount points made in it.
                if i > 0 && read_only {
                    log::warn!("mount {i} in the read-only root: {e}");
                    continue;
                }
                return Err(e).context("mounting the container's root in the guest");
            }
        }
        log::info!("guest mounts made in {} ms", t.elapsed().as_millis());
        Ok(())
    }
}

/// Boots an agent VM with a placeholder task disk and snapshots it into
/// `out`: the template tasks then restore (`template = "<out>"`). The
/// guest never reads the placeholder beyond the kernel's partition scan,
/// and the agent flushes those blocks before it mounts the real disk.
pub fn make_template(cfg: &ShimConfig, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let placeholder = out.join("placeholder.img");
    crate::rootfs::placeholder(&placeholder, cfg.disk_size_mib)?;
    let scratch = out.join("boot");
    std::fs::create_dir_all(&scratch)?;
    let sandbox = Sandbox::boot(cfg, "hearth-template", &scratch, DiskConfig::file(&placeholder))?;
    sandbox.agent.sync().context("syncing the guest")?;
    sandbox.vm.pause().context("pausing")?;
    sandbox.vm.snapshot(&out).context("snapshotting")?;
    drop(sandbox);
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
