//! hearth-init: the PID 1 of Hearth's Linux test guests.
//!
//! Guest kernel code may be emulated (every system call ~0.27 ms, a
//! fork+exec ~0.66 s), so init does everything itself with a few direct
//! system calls: mount the pseudo file systems, signal the VMM's boot
//! timer, announce itself, run the checks named on the kernel command line
//! and restart the machine, which ends the VM.
//!
//! With `hearth.agent=1` (port `hearth.agent.port=N`, default 52) PID 1
//! does not restart after the checks: it becomes a supervisor
//! (`supervisor`) that forks the guest agent (`agent`), restarts it when it
//! dies and reaps orphans.
//!
//! Console protocol (one `write` per line):
//! - `GUEST-READY <kernel release> cpus=<online CPUs>`
//! - `CHECK <name> PASS|FAIL <detail>` per check
//! - `HEARTH-INIT DONE pass=<n> fail=<m>`
//! - agent mode: `AGENT-READY port=<p> pid=<pid>` each time an agent
//!   listens, `AGENT-EXITED status=<code or -signal> pid=<pid>` when one
//!   dies, `AGENT-GAVE-UP ...` before restarting after too many deaths
//!
//! Run as any other PID (for trying it on a host) it only reports: it does
//! not mount, touch I/O ports or reboot, and exits 1 if a check failed.
//!
//! Native agent mode, for tests on a host (never as PID 1):
//!
//! ```text
//! hearth-init agent --unix PATH [--generation-file FILE] [--hello-timeout-ms N]
//! ```
//!
//! runs the guest agent's event loop on a Unix socket at PATH (each
//! accepted stream is one connection, no `CONNECT` line), reading the VM
//! generation from FILE (48 bytes: u64 LE generation, 32-byte seed, u64
//! LE Unix ns) instead of /dev/port, and never touching the host's RNG or
//! clock. SIGTERM or SIGINT stop it and kill its processes.

mod boot_timer;
mod checks;
mod cmdline;
mod mounts;
mod power;
mod resolv;
mod supervisor;
mod sys;
mod system;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use cmdline::Cmdline;
use hearth_init::{agent, console};
use system::SystemInfo;

const CMDLINE_PATH: &str = "/proc/cmdline";
const USAGE: &str = "usage: hearth-init agent --unix PATH [--generation-file FILE] [--hello-timeout-ms N]";

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        init_system();
    } else {
        // The kernel passes init words of its command line as arguments:
        // only a non-init process looks at them.
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        if args.first().is_some_and(|a| a == "agent") {
            native_agent(args.get(1..).unwrap_or_default());
        }
    }

    let system = SystemInfo::gather();
    let cpus = match &system.online_cpus {
        Ok(n) => *n,
        Err(e) => {
            console::line(&format!("hearth-init: {e}"));
            0
        }
    };
    console::line(&format!("GUEST-READY {} cpus={cpus}", system.release));

    let cmdline = match std::fs::read_to_string(CMDLINE_PATH) {
        Ok(text) => Cmdline::parse(&text),
        Err(e) => {
            console::line(&format!("hearth-init: {CMDLINE_PATH}: {e}"));
            Cmdline::default()
        }
    };
    let ctx = checks::Context {
        cmdline: &cmdline,
        system: &system,
    };
    let tally = checks::run_all(&cmdline.checks(), &ctx, console::line);
    console::line(&format!(
        "HEARTH-INIT DONE pass={} fail={}",
        tally.pass, tally.fail
    ));

    if pid1 {
        if let Some(port) = cmdline.agent_port() {
            let port = port.unwrap_or_else(|text| {
                let port = hearth_agent_protocol::DEFAULT_PORT;
                console::line(&format!(
                    "hearth-init: bad {}={text}, using port {port}",
                    cmdline::AGENT_PORT_PARAM
                ));
                port
            });
            supervisor::run(port);
        }
        power::restart();
    }
    std::process::exit(i32::from(tally.fail > 0));
}

/// `hearth-init agent ...`: the agent on a Unix socket. Never returns.
fn native_agent(args: &[OsString]) -> ! {
    let opts = match parse_native(args) {
        Ok(opts) => opts,
        Err(e) => {
            console::line(&format!("hearth-init: {e}\n{USAGE}"));
            std::process::exit(2);
        }
    };
    let Err(e) = agent::serve(opts);
    console::line(&format!("hearth-init: agent: {e}"));
    std::process::exit(1);
}

/// The native mode's options.
fn parse_native(args: &[OsString]) -> Result<agent::Options, String> {
    let mut unix = None;
    let mut generation = agent::GenerationSource::None;
    let mut hello_timeout = agent::HELLO_TIMEOUT;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))
        };
        match flag.to_str() {
            Some("--unix") => unix = Some(PathBuf::from(value()?)),
            Some("--generation-file") => generation = agent::GenerationSource::File(PathBuf::from(value()?)),
            Some("--hello-timeout-ms") => {
                let v = value()?;
                let ms: u64 = v
                    .to_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("bad --hello-timeout-ms {}", v.to_string_lossy()))?;
                hello_timeout = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown argument {}", flag.to_string_lossy())),
        }
    }
    let unix = unix.ok_or("--unix PATH is required")?;
    Ok(agent::Options {
        listen: agent::Listen::Unix(unix),
        generation,
        hello_timeout,
        stop_on_signals: true,
    })
}

/// PID 1 only: mounts and the boot-timer marker.
fn init_system() {
    for e in mounts::mount_all() {
        console::line(&format!("hearth-init: {e}"));
    }
    if let Err(e) = resolv::write_from_kernel() {
        console::line(&format!("hearth-init: {}: {e}", resolv::RESOLV_CONF));
    }
    if let Err(e) = boot_timer::signal() {
        console::line(&format!(
            "hearth-init: boot timer (/dev/port offset {:#x}): {e}",
            boot_timer::PORT
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(items: &[&str]) -> Vec<OsString> {
        items.iter().map(OsString::from).collect()
    }

    #[test]
    fn native_mode_arguments() {
        let o = parse_native(&args(&["--unix", "/tmp/a.sock"])).unwrap();
        assert_eq!(o.listen, agent::Listen::Unix("/tmp/a.sock".into()));
        assert_eq!(o.generation, agent::GenerationSource::None);
        assert_eq!(o.hello_timeout, agent::HELLO_TIMEOUT);
        let o = parse_native(&args(&[
            "--generation-file",
            "/tmp/g",
            "--unix",
            "/s",
            "--hello-timeout-ms",
            "250",
        ]))
        .unwrap();
        assert_eq!(o.generation, agent::GenerationSource::File("/tmp/g".into()));
        assert_eq!(o.hello_timeout, Duration::from_millis(250));
        assert!(parse_native(&args(&[])).is_err());
        assert!(parse_native(&args(&["--unix"])).is_err());
        assert!(parse_native(&args(&["--unix", "/s", "--bogus"])).is_err());
        assert!(parse_native(&args(&["--unix", "/s", "--hello-timeout-ms", "x"])).is_err());
    }
}
