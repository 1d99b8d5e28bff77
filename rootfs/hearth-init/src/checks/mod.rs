//! Named guest checks, selected by `hearth.checks=a,b,c` on the kernel
//! command line and run in that order.
//!
//! Each check prints one line, `CHECK <name> PASS <detail>` or
//! `CHECK <name> FAIL <detail>`. Adding a check is one line in
//! [`REGISTRY`] plus its module.

mod blk_ro;
mod blk_write;
mod blockdev;
mod cpus;
mod rootfs;
mod udp;
mod uname;

use crate::cmdline::Cmdline;
use crate::system::SystemInfo;

/// The result of one check, with a one-line detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass(String),
    /// The check failed.
    Fail(String),
}

/// What a check may look at.
#[derive(Debug)]
pub struct Context<'a> {
    /// The parsed kernel command line.
    pub cmdline: &'a Cmdline,
    /// Facts gathered at start.
    pub system: &'a SystemInfo,
}

/// A check: looks at the context (and may do its own system calls).
pub type CheckFn = fn(&Context<'_>) -> Outcome;

/// Every known check, by name.
const REGISTRY: &[(&str, CheckFn)] = &[
    ("blk-ro", blk_ro::run),
    ("blk-write", blk_write::run),
    ("cpus", cpus::run),
    ("rootfs", rootfs::run),
    ("udp", udp::run),
    ("uname", uname::run),
];

/// Pass and fail counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Checks that passed.
    pub pass: u32,
    /// Checks that failed (unknown names included).
    pub fail: u32,
}

fn find(name: &str) -> Option<CheckFn> {
    REGISTRY
        .iter()
        .find(|(known, _)| *known == name)
        .map(|&(_, check)| check)
}

/// Runs one check by name; an unknown name fails.
pub fn run(name: &str, ctx: &Context<'_>) -> Outcome {
    match find(name) {
        Some(check) => check(ctx),
        None => Outcome::Fail("unknown check".to_owned()),
    }
}

/// The console line for one result.
pub fn report_line(name: &str, outcome: &Outcome) -> String {
    let (verdict, detail) = match outcome {
        Outcome::Pass(detail) => ("PASS", detail),
        Outcome::Fail(detail) => ("FAIL", detail),
    };
    // Keep the report on one line whatever the detail holds.
    let detail = detail.replace(['\n', '\r'], " ");
    format!("CHECK {name} {verdict} {detail}")
}

/// Runs the named checks in order, handing one report line each to `emit`
/// (the console, in init) as soon as the check is done.
pub fn run_all(names: &[&str], ctx: &Context<'_>, mut emit: impl FnMut(&str)) -> Tally {
    let mut tally = Tally::default();
    for name in names {
        let outcome = run(name, ctx);
        emit(&report_line(name, &outcome));
        match outcome {
            Outcome::Pass(_) => tally.pass += 1,
            Outcome::Fail(_) => tally.fail += 1,
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system() -> SystemInfo {
        SystemInfo {
            release: "0.0.0-fixture".to_owned(),
            machine: "x86_64".to_owned(),
            online_cpus: Ok(1),
        }
    }

    #[test]
    fn registry_names_are_unique_and_plain() {
        for (i, (name, _)) in REGISTRY.iter().enumerate() {
            assert!(!name.is_empty());
            assert!(!name.contains([',', ' ', '=']), "{name}");
            assert!(
                REGISTRY.iter().skip(i + 1).all(|(other, _)| other != name),
                "duplicate check {name}"
            );
        }
    }

    #[test]
    fn unknown_check_fails() {
        let cmdline = Cmdline::parse("");
        let system = system();
        let ctx = Context {
            cmdline: &cmdline,
            system: &system,
        };
        assert_eq!(run("nope", &ctx), Outcome::Fail("unknown check".to_owned()));
    }

    #[test]
    fn report_lines() {
        assert_eq!(
            report_line("uname", &Outcome::Pass("a b".to_owned())),
            "CHECK uname PASS a b"
        );
        assert_eq!(
            report_line("x", &Outcome::Fail("line1\nline2".to_owned())),
            "CHECK x FAIL line1 line2"
        );
    }

    #[test]
    fn tally_counts() {
        let cmdline = Cmdline::parse("hearth.expect_cpus=1");
        let system = system();
        let ctx = Context {
            cmdline: &cmdline,
            system: &system,
        };
        let mut lines = Vec::new();
        let tally = run_all(&["uname", "cpus", "nope"], &ctx, |l| lines.push(l.to_owned()));
        assert_eq!(tally, Tally { pass: 2, fail: 1 });
        assert_eq!(
            lines,
            [
                "CHECK uname PASS release=0.0.0-fixture machine=x86_64",
                "CHECK cpus PASS online=1 expected=1",
                "CHECK nope FAIL unknown check",
            ]
        );
    }
}
