//! Command-line arguments and their conversion to a `VmConfig`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use hearth::{
    BootProtocol, DiskConfig, NetConfig, RestoreMemory, RestoreOptions, SeccompMode, SerialInput,
    SerialOutput, VmConfig, VsockConfig,
};

use crate::jail::JailSpec;
use crate::spec::{
    parse_disk, parse_host, parse_jail, parse_net, parse_protocol, parse_seccomp, parse_serial, parse_vsock,
};

/// Hearth: boot and run a microVM.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a VM and run it until the guest resets or shuts down.
    Run(RunArgs),
    /// Restore a snapshot in this process and run it.
    Restore(RestoreArgs),
    /// Run a command in a VM through its guest agent (streams stdio, exits
    /// with the command's status; 125 if hearth itself fails).
    Exec(crate::exec::ExecArgs),
    /// Copy a file to or from a VM through its guest agent
    /// (`guest:PATH` names the guest side).
    Cp(crate::exec::CpArgs),
}

/// Control of a running VM, for both run and restore.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Serve JSON-lines commands (pause, resume, snapshot, stop, status) here.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// seccomp filters on the VMM's threads: enforce (default), log or off.
    #[arg(long, value_name = "MODE", value_parser = parse_seccomp)]
    pub seccomp: Option<SeccompMode>,
    #[command(flatten)]
    pub observe: crate::observe::ObserveArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot directory (written by the snapshot command).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Serial console output: stdout, none or file:PATH (default: as saved).
    #[arg(long, value_name = "SINK", value_parser = parse_serial)]
    pub serial: Option<SerialOutput>,
    /// Another vsock socket path (each restored copy needs its own).
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Replace disk INDEX: INDEX=PATH[,ro][,id=NAME]; INDEX=BASE,overlay=NEW puts the
    /// disk's writes in a new overlay on the snapshot's disk state. Repeatable.
    #[arg(long, value_name = "INDEX=SPEC", value_parser = parse_disk_override)]
    pub disk: Vec<(usize, DiskConfig)>,
    /// Replace network interface INDEX: INDEX=tap=NAME[,mac=MAC]. Repeatable.
    #[arg(long, value_name = "INDEX=SPEC", value_parser = parse_net_override)]
    pub net: Vec<(usize, NetConfig)>,
    /// Read the whole memory file up front instead of mapping it lazily.
    #[arg(long)]
    pub eager: bool,
    /// Stay paused until a resume command arrives on the API socket.
    #[arg(long, requires = "api_sock")]
    pub paused: bool,
    /// Print the restore time to stderr.
    #[arg(long)]
    pub timing: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

fn parse_net_override(s: &str) -> Result<(usize, NetConfig), String> {
    let (index, spec) = s.split_once('=').ok_or("expected INDEX=tap=NAME[,mac=MAC]")?;
    let index = index
        .parse::<usize>()
        .map_err(|_| format!("bad net index {index:?}"))?;
    Ok((index, parse_net(spec)?))
}

fn parse_disk_override(s: &str) -> Result<(usize, DiskConfig), String> {
    let (index, spec) = s.split_once('=').ok_or("expected INDEX=PATH[,ro][,id=NAME]")?;
    let index = index
        .parse::<usize>()
        .map_err(|_| format!("bad disk index {index:?}"))?;
    Ok((index, parse_disk(spec)?))
}

impl RestoreArgs {
    /// The restore options these flags describe (but the output files).
    pub fn options(&self) -> RestoreOptions {
        let mut o = RestoreOptions::new().paused(self.paused).memory(if self.eager {
            RestoreMemory::Eager
        } else {
            RestoreMemory::Lazy
        });
        if let Some(s) = &self.serial {
            o = o.serial(s.clone());
        }
        if let Some(p) = &self.vsock_uds {
            o = o.vsock_uds_path(p);
        }
        for (i, d) in &self.disk {
            o = o.disk(*i, d.clone());
        }
        for (i, n) in &self.net {
            o = o.net(*i, n.clone());
        }
        if let Some(mode) = self.control.seccomp {
            o = o.seccomp(mode);
        }
        self.control.observe.apply_restore(o)
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// JSON config file (see docs/CONFIG.md); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel image: ELF vmlinux or bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd or initramfs.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Serial console output: stdout, none or file:PATH.
    #[arg(long, value_name = "SINK", value_parser = parse_serial)]
    pub serial: Option<SerialOutput>,
    /// Boot protocol: auto, linux or pvh.
    #[arg(long, value_name = "PROTO", value_parser = parse_protocol)]
    pub boot_protocol: Option<BootProtocol>,
    /// A virtio-blk disk: PATH[,ro][,overlay=PATH][,id=NAME][,bw=RATE][,iops=N] (RATE in bytes/s,
    /// K/M/G suffixes; overlay: PATH is a read-only base, writes go to the overlay). Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,
    /// A virtio-net interface on a TAP: tap=NAME[,mac=MAC][,mtu=N][,create][,rx-bw=RATE][,tx-bw=RATE][,rx-pps=N][,tx-pps=N];
    /// or user-mode, with no TAP or root and a deny-by-default egress policy:
    /// user[,policy=FILE][,mac=MAC][,...] (docs/NETWORK.md). Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_net)]
    pub net: Vec<NetConfig>,
    /// Allow CIDR[:PORT[-PORT]] or DOMAIN[:PORT[-PORT]] (`*.` wildcard) on every user-mode
    /// interface. Repeatable.
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<hearth::NetRule>,
    /// A static host-map entry NAME=IPV4 the user-mode DNS answers (127.0.0.1 is the host's
    /// loopback, reached through the gateway). Repeatable.
    #[arg(long, value_name = "NAME=IP", value_parser = parse_host)]
    pub host: Vec<(String, std::net::Ipv4Addr)>,
    /// A virtio-vsock device: cid=N,uds=PATH (Firecracker-compatible host side).
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// Create the legacy PIT (i8254).
    #[arg(long)]
    pub pit: bool,
    /// Print the guest-ready time (boot-timer port) to stderr.
    #[arg(long)]
    pub boot_timer: bool,
    /// Run the VMM as uid/gid in new mount, pid and net namespaces, chrooted
    /// to a directory holding only the VM's files: uid=N,gid=N[,dir=PATH]
    /// (needs root; see docs/JAIL.md).
    #[arg(long, value_name = "SPEC", value_parser = parse_jail)]
    pub jail: Option<JailSpec>,
    #[command(flatten)]
    pub control: ControlArgs,
}

impl RunArgs {
    /// Adds `--allow` and `--host` to every user-mode interface.
    fn apply_net_rules(&self, c: &mut VmConfig) -> anyhow::Result<()> {
        if self.allow.is_empty() && self.host.is_empty() {
            return Ok(());
        }
        let mut any = false;
        for net in &mut c.nets {
            if let hearth::NetBackendKind::User(spec) = &mut net.kind {
                spec.policy.allow.extend(self.allow.iter().cloned());
                spec.policy.hosts.extend(self.host.iter().cloned());
                any = true;
            }
        }
        if !any {
            bail!("--allow and --host need a user-mode interface (--net user)");
        }
        Ok(())
    }

    /// The config: the JSON file if given, then each flag on top.
    pub fn to_config(&self) -> anyhow::Result<VmConfig> {
        let base = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config {}", path.display()))?;
                Some(VmConfig::from_json(&text).with_context(|| format!("config {}", path.display()))?)
            }
            None => None,
        };
        // Flags go on top of the file's config (every field of it kept);
        // without a file, on the defaults, with stdin as serial input.
        let mut c = match (base, &self.kernel) {
            (Some(c), _) => c,
            (None, Some(k)) => {
                let mut c = VmConfig::builder(k).build()?;
                c.serial_input = SerialInput::Stdin;
                c
            }
            (None, None) => bail!("--kernel is required (or a --config with a kernel)"),
        };
        if let Some(k) = &self.kernel {
            c.kernel = k.clone();
        }
        if let Some(i) = &self.initrd {
            c.initrd = Some(i.clone());
        }
        if let Some(cmdline) = &self.cmdline {
            c.cmdline = cmdline.clone();
        }
        if let Some(n) = self.vcpus {
            c.vcpus = n;
        }
        if let Some(m) = self.memory {
            c.memory_mib = m;
        }
        if let Some(s) = &self.serial {
            c.serial = s.clone();
        }
        if let Some(p) = self.boot_protocol {
            c.boot_protocol = p;
        }
        if self.pit {
            c.pit = true;
        }
        c.disks.extend(self.disk.iter().cloned());
        c.nets.extend(self.net.iter().cloned());
        self.apply_net_rules(&mut c)?;
        if let Some(v) = &self.vsock {
            c.vsock = Some(v.clone());
        }
        if let Some(mode) = self.control.seccomp {
            c.seccomp = mode;
        }
        self.control.observe.apply(&mut c)?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let mut argv = vec!["hearth", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(r) => r,
            _ => unreachable!("run args"),
        }
    }

    #[test]
    fn flags_make_a_config() {
        let c = run_args(&[
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--memory",
            "64",
            "--serial",
            "file:/tmp/x",
        ])
        .to_config()
        .unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (2, 64));
        assert_eq!(c.serial, SerialOutput::File("/tmp/x".into()));
        assert_eq!(c.serial_input, SerialInput::Stdin);
    }

    #[test]
    fn flags_override_json() {
        let dir = std::env::temp_dir().join(format!("hearth-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.json");
        std::fs::write(&path, r#"{"kernel": "/from-json", "vcpus": 3, "memory_mib": 32}"#).unwrap();
        let c = run_args(&["--config", path.to_str().unwrap(), "--vcpus", "1"])
            .to_config()
            .unwrap();
        assert_eq!(
            (c.kernel.to_str().unwrap(), c.vcpus, c.memory_mib),
            ("/from-json", 1, 32)
        );
        std::fs::write(&path, r#"{"kernel": "/k", "vcpus": "x"}"#).unwrap();
        let e = run_args(&["--config", path.to_str().unwrap()])
            .to_config()
            .unwrap_err();
        assert!(format!("{e:#}").contains("vcpus"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_specs() {
        let c = run_args(&[
            "--kernel",
            "/k",
            "--disk",
            "/a.img",
            "--disk",
            "/b.img,ro,id=data",
        ])
        .to_config()
        .unwrap();
        assert_eq!(
            c.disks,
            vec![
                DiskConfig::file("/a.img"),
                DiskConfig::file("/b.img").read_only(true).id("data")
            ]
        );
        assert!(Cli::try_parse_from(["hearth", "run", "--disk", "/a,rw"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "run", "--disk", ",ro"]).is_err());
    }

    #[test]
    fn net_spec() {
        let c = run_args(&[
            "--kernel",
            "/k",
            "--net",
            "tap=tap0,mac=52:54:00:00:00:01,mtu=9000",
            "--net",
            "tap=t1,create",
        ])
        .to_config()
        .unwrap();
        assert_eq!(
            c.nets[0],
            NetConfig::tap("tap0").mac("52:54:00:00:00:01").mtu(9000)
        );
        assert!(c.nets[1].create);
        assert!(Cli::try_parse_from(["hearth", "run", "--net", "mac=52:54:00:00:00:01"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "run", "--net", "tap=t,speed=9"]).is_err());
        let e = run_args(&["--kernel", "/k", "--net", "tap=t,mac=ff:ff:ff:ff:ff:ff"])
            .to_config()
            .unwrap_err();
        assert!(e.to_string().contains("multicast"), "{e}");
    }

    #[test]
    fn user_net_allow_and_host() {
        let c = run_args(&[
            "--kernel",
            "/k",
            "--net",
            "user,mac=52:54:00:00:00:02",
            "--allow",
            "127.0.0.1:8080",
            "--allow",
            "*.example.com:443",
            "--host",
            "svc.test=127.0.0.1",
        ])
        .to_config()
        .unwrap();
        let hearth::NetBackendKind::User(spec) = &c.nets[0].kind else {
            panic!("{:?}", c.nets[0]);
        };
        let rules: Vec<String> = spec.policy.allow.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["127.0.0.1:8080", "*.example.com:443"]);
        assert_eq!(spec.policy.hosts["svc.test"], std::net::Ipv4Addr::LOCALHOST);
        // Rules need a user-mode interface, and must parse.
        let e = run_args(&["--kernel", "/k", "--allow", "1.2.3.4"])
            .to_config()
            .unwrap_err();
        assert!(e.to_string().contains("--net user"), "{e}");
        assert!(Cli::try_parse_from(["hearth", "run", "--allow", "not a rule"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "run", "--host", "x=not-an-ip"]).is_err());
    }

    #[test]
    fn vsock_spec() {
        let c = run_args(&["--kernel", "/k", "--vsock", "cid=5,uds=/tmp/v.sock"])
            .to_config()
            .unwrap();
        assert_eq!(c.vsock, Some(VsockConfig::new(5, "/tmp/v.sock")));
        assert!(Cli::try_parse_from(["hearth", "run", "--vsock", "cid=5"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "run", "--vsock", "cid=x,uds=/a"]).is_err());
        let e = run_args(&["--kernel", "/k", "--vsock", "cid=2,uds=/a"])
            .to_config()
            .unwrap_err();
        assert!(e.to_string().contains("guest_cid must be from 3"), "{e}");
    }

    #[test]
    fn jail_flag() {
        let r = run_args(&["--kernel", "/k", "--jail", "uid=65534,gid=65534"]);
        let j = r.jail.unwrap();
        assert_eq!((j.uid, j.gid, j.dir), (65534, 65534, None));
        assert!(Cli::try_parse_from(["hearth", "run", "--jail", "uid=1"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "restore", "/s", "--jail", "uid=1,gid=1"]).is_err());
    }

    #[test]
    fn restore_flags() {
        let cli = Cli::try_parse_from([
            "hearth",
            "restore",
            "/snap",
            "--vsock-uds",
            "/v2.sock",
            "--disk",
            "0=/d.img,ro",
            "--eager",
            "--paused",
            "--api-sock",
            "/api.sock",
        ])
        .unwrap();
        let Command::Restore(r) = cli.command else {
            panic!("restore")
        };
        let o = r.options();
        assert_eq!(o.memory, RestoreMemory::Eager);
        assert!(o.paused);
        assert_eq!(
            o.vsock_uds_path.as_deref(),
            Some(std::path::Path::new("/v2.sock"))
        );
        assert_eq!(o.disks.get(&0), Some(&DiskConfig::file("/d.img").read_only(true)));
        assert!(Cli::try_parse_from(["hearth", "restore", "/s", "--disk", "x=/a"]).is_err());
        // Paused with no API socket to resume it from would never run.
        assert!(Cli::try_parse_from(["hearth", "restore", "/s", "--paused"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["hearth", "run", "--serial", "tty"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "run", "--boot-protocol", "efi"]).is_err());
        assert!(run_args(&[]).to_config().is_err());
        assert!(run_args(&["--kernel", "/k", "--vcpus", "0"]).to_config().is_err());
    }
}
