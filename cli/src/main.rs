//! The `hearth` launcher: a thin layer over the library.
//!
//! Exit status: 0 when the guest resets or shuts down, 1 when the VM
//! cannot start (one line on stderr says why), 2 when the guest crashes
//! or the VMM fails while running, 3 when its `--ttl` ran out, 4 when it
//! was idle for `--idle-timeout` and was snapshotted and stopped. `hearth exec` exits with the command's
//! status (128 + N for signal N), or 125 when it fails itself.

// The launcher's job is to talk to the terminal.
#![allow(clippy::print_stderr)]

mod api;
mod cli;
mod exec;
mod jail;
mod observe;
mod spec;

use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use cli::{Cli, Command, ControlArgs, RestoreArgs, RunArgs};
use hearth::{ExitReason, Vm, VmConfig};

/// Exit status when the VM's TTL ran out.
const EXIT_TTL: u8 = 3;
/// Exit status when the VM was idle, snapshotted and stopped.
const EXIT_IDLE_SNAPSHOT: u8 = 4;

/// Where and how often to write metrics.
type MetricsOut = (std::fs::File, std::time::Duration);

/// Binds the API socket if asked.
fn api_listener(control: &ControlArgs) -> anyhow::Result<Option<UnixListener>> {
    control.api_sock.as_deref().map(api::listen).transpose()
}

/// Serves the API socket if given, waits for the guest, and maps its exit
/// to the process status.
fn supervise(vm: Vm, api: Option<UnixListener>, metrics: Option<MetricsOut>) -> anyhow::Result<ExitCode> {
    let vm = Arc::new(vm);
    if let Some(listener) = api {
        api::serve(vm.clone(), listener)?;
    }
    let metrics = metrics
        .map(|(file, interval)| observe::start_metrics(vm.clone(), file, interval))
        .transpose()?;
    let reason = vm.wait();
    if let Some(file) = &metrics {
        observe::write_metrics(&vm, file);
    }
    // Other threads may still hold a clone and the process exits right
    // after: the exit event must be written first.
    vm.stop();
    if !vm.flush_events(std::time::Duration::from_secs(5)) {
        log::warn!("the VM's last events were not written in time");
    }
    drop(vm);
    match reason {
        ExitReason::TtlExpired => {
            eprintln!("hearth: {reason}");
            Ok(ExitCode::from(EXIT_TTL))
        }
        ExitReason::IdleSnapshot(_) => {
            eprintln!("hearth: {reason}");
            Ok(ExitCode::from(EXIT_IDLE_SNAPSHOT))
        }
        r if r.is_clean() => Ok(ExitCode::SUCCESS),
        r => {
            eprintln!("hearth: {r}");
            Ok(ExitCode::from(2))
        }
    }
}

fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let t = Instant::now();
    let out = args.control.observe.open_outputs()?;
    let mut options = args.options();
    if let Some(sink) = out.events {
        options = options.events(sink);
    }
    let vm = Vm::restore(&args.dir, &options)?;
    if args.timing {
        eprintln!("hearth: restored in {} us", t.elapsed().as_micros());
    }
    let api = api_listener(&args.control)?;
    supervise(vm, api, out.metrics)
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
    // The API socket and the output files are opened before entering the
    // jail, where their paths are not visible.
    let outside =
        || -> anyhow::Result<_> { Ok((api_listener(&args.control)?, args.control.observe.open_outputs()?)) };
    let go = |mut config: VmConfig, (api, out): (Option<UnixListener>, observe::Outputs)| {
        if let Some(sink) = out.events {
            config.events = Some(sink);
        }
        supervise(start(config, args.boot_timer)?, api, out.metrics)
    };
    match &args.jail {
        Some(spec) => jail::run(spec, config, outside, go),
        None => go(config, outside()?),
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
