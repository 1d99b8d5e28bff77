//! `containerd-shim-hearth-v2`: Hearth as a containerd runtime (task API
//! v2, docs/CONTAINERD.md). Each task is one Hearth VM running in the
//! shim's process, with the guest agent (`hearth-init`) starting the
//! container's processes chrooted into the task's root disk.
//!
//! `containerd-shim-hearth-v2 template DIR [--config FILE]` boots an agent
//! VM once and snapshots it into DIR: with `template = "DIR"` in the
//! configuration, tasks restore it instead of booting.

mod config;
mod process;
mod rootfs;
mod sandbox;
mod service;
mod spec;
mod stats;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// containerd's name for this runtime.
const RUNTIME_ID: &str = "io.containerd.hearth.v2";

fn template(args: &[String]) -> Result<()> {
    let mut out = None;
    let mut config_path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config_path = Some(it.next().context("--config needs a file")?.clone()),
            other if out.is_none() && !other.starts_with('-') => out = Some(PathBuf::from(other)),
            other => bail!("unexpected argument {other:?}"),
        }
    }
    let out = out.context("usage: containerd-shim-hearth-v2 template DIR [--config FILE]")?;
    let env = std::env::var(config::CONFIG_ENV).ok();
    let path = config::locate(config_path.as_deref(), env.as_deref());
    let mut cfg = config::ShimConfig::load(&path)?;
    // A template is booted, never restored from another one.
    cfg.template = None;
    sandbox::make_template(&cfg, &out)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("template") {
        if let Err(e) = template(args.get(2..).unwrap_or_default()) {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("containerd-shim-hearth-v2 template: {e:#}");
            }
            std::process::exit(1);
        }
        return;
    }
    // The shim waits for its own children (mkfs.ext4): containerd's
    // reaper thread would take their statuses first.
    let config = containerd_shim::Config {
        no_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::Service>(RUNTIME_ID, Some(config));
}
