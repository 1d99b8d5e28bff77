//! Boots a kernel and prints its console until the guest exits.
//! `cargo run --example boot -- KERNEL [CMDLINE] [INITRD]`
#![allow(clippy::print_stderr)]

use hearth::{SerialOutput, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = args.next().ok_or("usage: boot KERNEL [CMDLINE] [INITRD]")?;
    let cmdline = args
        .next()
        .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".into());
    let mut config = VmConfig::builder(kernel)
        .cmdline(cmdline)
        .vcpus(1)
        .memory_mib(128)
        .serial(SerialOutput::Stdout);
    if let Some(initrd) = args.next() {
        config = config.initrd(initrd);
    }
    let vm = Vm::start(config.build()?)?;
    let reason = vm.wait();
    if let Some(t) = vm.boot_time() {
        eprintln!("guest ready after {} us", t.wall.as_micros());
    }
    eprintln!("guest exited: {reason}");
    Ok(())
}
