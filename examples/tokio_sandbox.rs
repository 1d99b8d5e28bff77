//! The guest agent from a tokio service. `AgentClient` is blocking (every
//! call is one vsock connection and a few frames), so an async service
//! calls it inside `spawn_blocking`, and streams a process's output
//! through a channel from a blocking reader.
//!
//! `cargo run --release --example tokio_sandbox -- [VMLINUX ROOTFS_DIR]`
//! boots a Linux sandbox (like `examples/sandbox.rs`); with
//! `HEARTH_AGENT_UNIX=PATH` it talks to an agent already listening there
//! instead (`hearth-init agent --unix PATH`, the agent's native mode).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use hearth::{AgentClient, Command, DiskConfig, SerialBuffer, SerialOutput, Vm, VmConfig, VsockConfig};

const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nokaslr mitigations=off tsc=reliable \
    no_timer_check noxsave nopku nofsgsbase clearcpuid=cx16,rdrand,rdseed,smap,popcnt,erms,fsrm nopv \
    noreplace-smp lpj=4005 quiet rodata=off root=/dev/vda rw rootfstype=ext4 hearth.agent=1";

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Boots the sandbox VM; returns it with its agent client.
fn boot() -> Result<(Option<Vm>, AgentClient), Error> {
    if let Ok(path) = std::env::var("HEARTH_AGENT_UNIX") {
        return Ok((None, AgentClient::unix(path)));
    }
    let mut args = std::env::args().skip(1);
    let mut arg_or_env = |var| {
        args.next()
            .or_else(|| std::env::var(var).ok())
            .ok_or("usage: tokio_sandbox [VMLINUX ROOTFS_DIR]")
    };
    let (kernel, rootfs_dir) = (arg_or_env("HEARTH_VMLINUX")?, arg_or_env("HEARTH_ROOTFS_DIR")?);
    let dir = std::env::temp_dir().join(format!("hearth-tokio-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("rootfs.ext4");
    std::fs::copy(PathBuf::from(rootfs_dir).join("rootfs.ext4"), &disk)?;
    let console = SerialBuffer::new();
    let vm = Vm::start(
        VmConfig::builder(kernel)
            .memory_mib(128)
            .pit(true)
            .cmdline(CMDLINE)
            .disk(DiskConfig::file(&disk))
            .vsock(VsockConfig::new(3, dir.join("v.sock")))
            .serial(SerialOutput::Buffer(console.clone()))
            .build()?,
    )?;
    if !console.wait_for("AGENT-READY", Duration::from_secs(300)) {
        return Err(format!("no agent; console:\n{}", console.text()).into());
    }
    let agent = vm.agent()?;
    Ok((Some(vm), agent))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let (vm, agent) = tokio::task::spawn_blocking(boot).await??;

    // Eight commands at once, each on its own connection.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let agent = agent.clone();
        tasks.spawn_blocking(move || agent.exec(&Command::new(["sh", "-c", &format!("echo task {i}")])));
    }
    while let Some(done) = tasks.join_next().await {
        let out = done??;
        print!("{} ({})", out.stdout_text(), out.status);
    }

    // A process's output as it is produced, through a channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let a = agent.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<hearth::ExitStatus, Error> {
        let mut p = a.spawn(&Command::new([
            "sh",
            "-c",
            "for i in 1 2 3; do echo tick $i; sleep 1; done",
        ]))?;
        let mut out = p.take_stdout().ok_or("no stdout")?;
        let mut buf = [0u8; 4096];
        loop {
            let n = out.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
        Ok(p.wait()?)
    });
    while let Some(chunk) = rx.recv().await {
        print!("streamed: {}", String::from_utf8_lossy(&chunk));
    }
    println!("ticker ended: {}", reader.await??);
    if let Some(vm) = vm {
        println!(
            "stopped: {}",
            tokio::task::spawn_blocking(move || vm.stop()).await?
        );
    }
    Ok(())
}
