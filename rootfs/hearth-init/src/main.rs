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

mod agent;
mod boot_timer;
mod checks;
mod cmdline;
mod console;
mod mounts;
mod power;
mod supervisor;
mod sys;
mod system;

use cmdline::Cmdline;
use system::SystemInfo;

const CMDLINE_PATH: &str = "/proc/cmdline";

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        init_system();
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

/// PID 1 only: mounts and the boot-timer marker.
fn init_system() {
    for e in mounts::mount_all() {
        console::line(&format!("hearth-init: {e}"));
    }
    if let Err(e) = boot_timer::signal() {
        console::line(&format!(
            "hearth-init: boot timer (/dev/port offset {:#x}): {e}",
            boot_timer::PORT
        ));
    }
}
