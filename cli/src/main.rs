//! The `hearth` launcher: a thin layer over the library.
//!
//! Exit status: 0 when the guest resets or shuts down, 1 when the VM
//! cannot start (one line on stderr says why), 2 when the guest crashes
//! or the VMM fails while running. `hearth exec` exits with the command's
//! status (128 + N for signal N), or 125 when it fails itself.

// The launcher's job is to talk to the terminal.
#![allow(clippy::print_stderr)]

mod api;
mod cli;
mod exec;
mod jail;
mod spec;

use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use cli::{Cli, Command, ControlArgs, RestoreArgs, RunArgs};
use hearth::{Vm, VmConfig};

/// Binds the API socket if asked.
fn api_listener(control: &ControlArgs) -> anyhow::Result<Option<UnixListener>> {
    control.api_sock.as_deref().map(api::listen).transpose()
}

/// Serves the API socket if given, waits for the guest, and maps its exit
/// to the process status.
fn supervise(vm: Vm, api: Option<UnixListener>) -> anyhow::Result<ExitCode> {
    let vm = Arc::new(vm);
    if let Some(listener) = api {
        api::serve(vm.clone(), listener)?;
    }
    let reason = vm.wait();
    // The API thread may still hold a clone; the process exits right after.
    drop(vm);
    if reason.is_clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("hearth: {reason}");
        Ok(ExitCode::from(2))
    }
}

fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let t = Instant::now();
    let vm = Vm::restore(&args.dir, &args.options())?;
    if args.timing {
        eprintln!("hearth: restored in {} us", t.elapsed().as_micros());
    }
    let api = api_listener(&args.control)?;
    supervise(vm, api)
}

/// Boots `config` and prints the guest-ready time if asked.
fn start(config: VmConfig, boot_timer: bool) -> anyhow::Result<Vm> {
    let vm = Vm::start(config)?;
    if boot_timer {
        if let Some(t) = vm.wait_boot(None) {
            eprintln!(
                "hearth: guest ready after {} us ({} us VMM CPU)",
                t.wall.as_micros(),
                t.cpu.as_micros()
            );
        }
    }
    Ok(vm)
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.to_config()?;
    match &args.jail {
        // The API socket is bound before entering the jail, where its
        // path is not visible.
        Some(spec) => jail::run(
            spec,
            config,
            || api_listener(&args.control),
            |config, api| supervise(start(config, args.boot_timer)?, api),
        ),
        None => {
            let vm = start(config, args.boot_timer)?;
            let api = api_listener(&args.control)?;
            supervise(vm, api)
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message before it already contains.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph, on one line (a missing argument's
            // name is on the lines after the first).
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            eprintln!(
                "hearth: {} (see hearth --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(1);
        }
    };
    let (result, failed) = match &cli.command {
        Command::Run(args) => (run(args), 1),
        Command::Restore(args) => (restore(args), 1),
        Command::Exec(args) => (exec::exec(args), exec::EXEC_FAILED),
        Command::Cp(args) => (exec::cp(args), 1),
    };
    result.unwrap_or_else(|e| {
        eprintln!("hearth: error: {}", one_line(&e));
        ExitCode::from(failed)
    })
}
