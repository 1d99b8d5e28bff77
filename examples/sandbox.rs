//! Boots a Linux guest whose init runs the Hearth agent, then uses it as a
//! sandbox: runs a command, writes a file and reads it back.
//!
//! `cargo run --release --example sandbox -- [VMLINUX ROOTFS_DIR]`
//! (default: `$HEARTH_VMLINUX` and `$HEARTH_ROOTFS_DIR`, which
//! `eval "$(scripts/guests)"` sets). Booting takes ~30 s on an emulated KVM.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth::{DiskConfig, SerialBuffer, SerialOutput, Vm, VmConfig, VsockConfig};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nokaslr mitigations=off tsc=reliable \
    no_timer_check noxsave nopku nofsgsbase clearcpuid=cx16,rdrand,rdseed,smap,popcnt,erms,fsrm nopv \
    noreplace-smp lpj=4005 quiet rodata=off root=/dev/vda rw rootfstype=ext4 hearth.agent=1";

/// Removes the temporary files when dropped.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut arg_or_env = |var| {
        args.next()
            .or_else(|| std::env::var(var).ok())
            .ok_or("usage: sandbox [VMLINUX ROOTFS_DIR]")
    };
    let (kernel, rootfs_dir) = (arg_or_env("HEARTH_VMLINUX")?, arg_or_env("HEARTH_ROOTFS_DIR")?);

    // The guest writes to its root file system: give it a private copy.
    let scratch = Scratch(
        ["ext4", "sock"]
            .map(|ext| std::env::temp_dir().join(format!("hearth-sandbox-{}.{ext}", std::process::id())))
            .to_vec(),
    );
    let (disk, socket) = (&scratch.0[0], &scratch.0[1]);
    std::fs::copy(PathBuf::from(rootfs_dir).join("rootfs.ext4"), disk)?;

    let console = SerialBuffer::new();
    let config = VmConfig::builder(kernel)
        .memory_mib(128)
        .pit(true)
        .cmdline(CMDLINE)
        .disk(DiskConfig::file(disk))
        .vsock(VsockConfig::new(3, socket))
        .serial(SerialOutput::Buffer(console.clone()))
        .build()?;
    let start = Instant::now();
    let vm = Vm::start(config)?;
    if !console.wait_for("AGENT-READY", Duration::from_secs(300)) {
        return Err(format!("no agent ({}); console:\n{}", vm.stop(), console.text()).into());
    }
    println!("agent ready after {:.1} s", start.elapsed().as_secs_f64());

    let out = vm.exec(&["uname", "-a"])?;
    print!("uname -a (status {}): {}", out.status, out.stdout_text());

    vm.write_file("/tmp/hello.txt", b"Hello from the host!\n", 0o644)?;
    let back = vm.read_file("/tmp/hello.txt")?;
    print!("/tmp/hello.txt: {}", String::from_utf8_lossy(&back));
    println!(
        "done after {:.1} s; stopped: {}",
        start.elapsed().as_secs_f64(),
        vm.stop()
    );
    Ok(())
}
