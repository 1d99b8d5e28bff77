//! `uname`: reports the kernel release and machine; always passes.

use super::{Context, Outcome};

pub fn run(ctx: &Context<'_>) -> Outcome {
    Outcome::Pass(format!(
        "release={} machine={}",
        ctx.system.release, ctx.system.machine
    ))
}
