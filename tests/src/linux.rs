//! The Linux tier: our minimal kernel plus `hearth-init`.
//!
//! The guest artefacts are built outside the repository by
//! `guest-kernel/build.sh` and `rootfs/build.sh` (cached by content hash);
//! `.ci/run` exports their paths:
//!
//! - `HEARTH_VMLINUX`: the kernel;
//! - `HEARTH_KERNEL_RELEASE`: the release that kernel reports (`uname -r`),
//!   read from the tree it was built from (Debian's linux-source-6.1 moves,
//!   so no test may assume one);
//! - `HEARTH_ROOTFS_DIR`: `initramfs.cpio` and `rootfs.ext4`.
//!
//! Set `HEARTH_SKIP_LINUX=1` to skip this tier locally (each test says so
//! on stderr). When the tier is not skipped and the paths are missing,
//! the tests fail: CI always runs this tier.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Linux boots take ~20 s of emulated kernel code on PVM hosts; allow for
/// a loaded 2-core CI machine.
pub const LINUX_TIMEOUT: Duration = Duration::from_secs(240);

/// The guest command line for PVM hosts (docs in PLATFORM notes), plus:
///
/// - `nopv`: no paravirtual features. KVM's PV IPIs use `vmcall`, which
///   PVM's instruction emulator cannot execute, so an SMP guest hangs at
///   the first IPI without it. With `nopv` there is no kvm-clock, so the
///   guest calibrates its TSC with the PIT: Linux-tier VMs enable it
///   ([`linux_vm`]).
/// - `lpj=4005`: our kernel runs at HZ=100; a preset skips the delay-loop
///   calibration, which is slow when kernel code is emulated.
/// - `clearcpuid=...,erms,fsrm`: without "enhanced REP MOVSB/STOSB" the
///   kernel copies and clears memory with `rep movsq`/`rep stosq` (8 bytes
///   per iteration) instead of `rep movsb`/`stosb`. PVM's emulator runs a
///   `rep` string instruction one iteration at a time, so the guest
///   kernel's copies get several times cheaper. Measured here (one vCPU,
///   16 MiB): reading /dev/zero 9.1 s -> 1.9 s, an agent upload to tmpfs
///   36 s -> 14 s, a download 27 s -> 7.4 s; the boot (~17 s to the
///   agent) and a fork+exec do not change. Harmless on hardware KVM (the
///   kernel falls back to its pre-ERMS `rep movsq` paths).
pub const LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nokaslr mitigations=off \
tsc=reliable no_timer_check noxsave nopku nofsgsbase \
clearcpuid=cx16,rdrand,rdseed,smap,popcnt,erms,fsrm nopv noreplace-smp lpj=4005 quiet rodata=off";

/// A Linux-tier VM: our kernel with `extra` appended to [`LINUX_CMDLINE`],
/// the PIT on, 128 MiB.
pub fn linux_vm(g: &LinuxGuest, extra: &str) -> crate::TestVmBuilder {
    crate::TestVm::kernel(g.vmlinux.clone(), &format!("{LINUX_CMDLINE} {extra}"))
        .pit(true)
        .memory_mib(128)
}

/// The Linux guest's files.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// The kernel.
    pub vmlinux: PathBuf,
    /// Uncompressed initramfs with hearth-init as /init.
    pub initramfs: PathBuf,
    /// ext4 image with hearth-init as /sbin/init and busybox.
    pub rootfs: PathBuf,
    /// What `uname -r` says in the guest (from the kernel build).
    pub kernel_release: String,
}

/// The guest files, or `None` (with a note on stderr) when the tier is
/// skipped. Panics when the tier is on but the files are missing.
pub fn guest(test: &str) -> Option<LinuxGuest> {
    if std::env::var_os("HEARTH_SKIP_LINUX").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: HEARTH_SKIP_LINUX=1");
        return None;
    }
    let var = |name: &str| -> PathBuf {
        std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "{name} is not set: build the Linux guest with guest-kernel/build.sh and rootfs/build.sh \
                 (.ci/run does), or set HEARTH_SKIP_LINUX=1 to skip the Linux tier"
            )
        })
    };
    let vmlinux = var("HEARTH_VMLINUX");
    let dir = var("HEARTH_ROOTFS_DIR");
    let kernel_release = var("HEARTH_KERNEL_RELEASE").to_string_lossy().trim().to_string();
    assert!(!kernel_release.is_empty(), "HEARTH_KERNEL_RELEASE is empty");
    let g = LinuxGuest {
        vmlinux,
        initramfs: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.ext4"),
        kernel_release,
    };
    for p in [&g.vmlinux, &g.initramfs, &g.rootfs] {
        assert!(p.is_file(), "{} is missing", p.display());
    }
    Some(g)
}

/// True when the host's KVM is PVM (software virtualization), where SMP
/// Linux guests are known to be unreliable.
pub fn host_is_pvm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    !hw
}

/// The sandbox setup: root on a private copy of the ext4 image (the guest
/// writes to it), `hearth-init` in agent mode, and a vsock device whose
/// socket sits next to the copy. Files are removed on drop.
#[derive(Debug)]
pub struct AgentGuest {
    /// The scratch directory (disk copy and vsock socket).
    pub dir: PathBuf,
    /// The disk copy.
    pub disk: PathBuf,
    /// The vsock socket.
    pub vsock: PathBuf,
}

impl AgentGuest {
    /// Copies the root image for `name` (unique per test).
    pub fn new(g: &LinuxGuest, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hearth-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("rootfs.ext4");
        std::fs::copy(&g.rootfs, &disk).unwrap();
        let vsock = dir.join("v.sock");
        Self { dir, disk, vsock }
    }

    /// Another copy of the root image, e.g. for a clone.
    pub fn disk_copy(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::copy(&self.disk, &p).unwrap();
        p
    }

    /// A VM booting this guest in agent mode.
    pub fn vm(&self, g: &LinuxGuest) -> crate::TestVmBuilder {
        linux_vm(g, "root=/dev/vda rw rootfstype=ext4 hearth.agent=1")
            .disk(hearth::DiskConfig::file(&self.disk))
            .vsock(hearth::VsockConfig::new(3, &self.vsock))
    }
}

impl Drop for AgentGuest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl AgentGuest {
    /// Boots this guest in agent mode with guest RAM in a memfd (see
    /// [`populate_guest_memfds`]) and `memory_mib` of it.
    pub fn start_memfd(&self, g: &LinuxGuest, memory_mib: u64) -> crate::TestVm {
        self.start_memfd_with(g, memory_mib, |_| {})
    }

    /// [`start_memfd`](Self::start_memfd), with a last change to the config.
    pub fn start_memfd_with(
        &self,
        g: &LinuxGuest,
        memory_mib: u64,
        change: impl FnOnce(&mut hearth::VmConfig),
    ) -> crate::TestVm {
        let console = hearth::SerialBuffer::new();
        let mut config = self.vm(g).memory_mib(memory_mib).config(&console);
        config.memory_backing = hearth::MemoryBacking::Memfd;
        change(&mut config);
        let vm = hearth::Vm::start(config).unwrap_or_else(|e| panic!("Vm::start failed: {e}"));
        crate::TestVm { vm, console }
    }
}

/// Prints a VM's console on stderr if the test panics while it lives, so
/// that a failure shows what the guest said.
#[derive(Debug)]
pub struct ConsoleOnPanic {
    name: String,
    console: hearth::SerialBuffer,
}

impl ConsoleOnPanic {
    /// Guards `console`, named `name` in the dump.
    pub fn new(name: &str, console: &hearth::SerialBuffer) -> Self {
        Self {
            name: name.to_string(),
            console: console.clone(),
        }
    }
}

impl Drop for ConsoleOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- console of {} -----\n{}\n----- end of console of {} -----",
                self.name,
                self.console.text(),
                self.name
            );
        }
    }
}

/// Waits until `console` has `count` lines starting with `prefix`;
/// panics with the console if they do not come within `timeout`.
pub fn wait_for_lines(console: &hearth::SerialBuffer, prefix: &str, count: usize, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = console.text();
        if text.lines().filter(|l| l.starts_with(prefix)).count() >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} lines starting with {prefix:?} did not appear within {timeout:?}; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the newest agent, from its `AGENT-READY port=<p> pid=<pid>`
/// line on the console.
pub fn agent_pid(console: &hearth::SerialBuffer) -> Option<u32> {
    console
        .text()
        .lines()
        .rev()
        .filter(|l| l.starts_with("AGENT-READY "))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("pid="))?
                .parse()
                .ok()
        })
}

/// A `Name:   123 kB` field of a /proc status file, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A field of this process's /proc/self/status, in KiB.
pub fn self_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status_kib(&status, field).unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets this process's peak RSS (VmHWM) to its current RSS
/// (`/proc/self/clear_refs`, value 5).
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", b"5").unwrap();
}

/// Makes every page of this process's guest-RAM memfds resident
/// (`MADV_POPULATE_WRITE`, which keeps their contents), so that what the
/// guest touches from now on no longer moves this process's RSS: its peak
/// (VmHWM) then measures the host's own buffers. Returns the bytes.
pub fn populate_guest_memfds() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut total = 0;
    for line in maps.lines().filter(|l| l.contains("memfd:hearth-guest-ram")) {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        // SAFETY: the range is a whole shared mapping of guest RAM that
        // lives as long as its VM; MADV_POPULATE_WRITE only faults its
        // pages in (as a write would, without writing), so the guest sees
        // the same contents.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
        assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
        total += (end - start) as u64;
    }
    total
}

/// The launcher, built if need be: `target/<profile>/hearth` beside this
/// test's `deps` directory.
pub fn launcher() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("hearth");
    // Under `cargo test`, make sure it is built from these sources (a
    // no-op when it is up to date).
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "hearth-cli", "--profile", &profile])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p hearth-cli failed");
    }
    assert!(bin.is_file(), "no launcher at {}", bin.display());
    bin
}

/// Kills the launcher's child on drop (a failed test must not leave a VM).
#[derive(Debug)]
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
