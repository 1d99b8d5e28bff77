//! The `hearth` launcher: a thin layer over the library.
//!
//! Exit status: 0 when the guest resets or shuts down, 1 when the VM
//! cannot start (one line on stderr says why), 2 when the guest crashes
//! or the VMM fails while running.

// The launcher's job is to talk to the terminal.
#![allow(clippy::print_stderr)]

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, RunArgs};
use hearth::Vm;

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.to_config()?;
    let vm = Vm::start(config)?;
    if args.boot_timer {
        if let Some(t) = vm.wait_boot(None) {
            eprintln!(
                "hearth: guest ready after {} us ({} us VMM CPU)",
                t.wall.as_micros(),
                t.cpu.as_micros()
            );
        }
    }
    let reason = vm.wait();
    drop(vm);
    if reason.is_clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("hearth: {reason}");
        Ok(ExitCode::from(2))
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("hearth: error: {e:#}");
        ExitCode::from(1)
    })
}
