//! Spawn options and MOUNT against the native agent (root needed: chroot
//! and mount). The agent runs in a mount namespace of its own
//! (`unshare --mount`), so nothing it mounts reaches the host's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use std::path::Path;

use common::{Agent, Scratch, PATIENCE};
use hearth::{AgentClient, AgentError, Command, GuestErrorKind, GuestMount};

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// `None` (the test returns) when not root and HEARTH_SKIP_ROOT=1.
fn root_agent(test: &str) -> Option<Agent> {
    if !is_root() {
        if std::env::var_os("HEARTH_SKIP_ROOT").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED {test} (HEARTH_SKIP_ROOT=1): needs root for chroot and mount");
            return None;
        }
        panic!("{test} needs root (chroot, mount); set HEARTH_SKIP_ROOT=1 to skip it");
    }
    Some(Agent::start_under(
        &["unshare", "--mount", "--propagation", "private"],
        &[],
    ))
}

/// A static busybox found on the host (the package busybox-static).
fn static_busybox() -> std::path::PathBuf {
    let out = std::process::Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let path = text
        .lines()
        .find(|l| l.ends_with("/bin/busybox"))
        .unwrap_or_else(|| panic!("busybox-static is not installed (dpkg -L: {text})"));
    path.into()
}

/// A root directory with only /bin/busybox and /work in it.
fn tiny_root(scratch: &Scratch) -> std::path::PathBuf {
    let root = scratch.path("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("work")).unwrap();
    std::fs::copy(static_busybox(), root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("marker"), "inside\n").unwrap();
    root
}

fn client(agent: &Agent) -> AgentClient {
    AgentClient::unix(&agent.sock).timeout(Some(PATIENCE))
}

fn kind(e: &AgentError) -> Option<GuestErrorKind> {
    match e {
        AgentError::Guest { kind, .. } => Some(*kind),
        _ => None,
    }
}

fn text(root: &Path) -> String {
    root.to_str().unwrap().to_string()
}

#[test]
fn a_rooted_process_sees_only_its_root_with_its_cwd_and_limits() {
    let Some(agent) = root_agent("a_rooted_process_sees_only_its_root_with_its_cwd_and_limits") else {
        return;
    };
    let scratch = Scratch::new("rooted");
    let root = tiny_root(&scratch);
    let c = client(&agent);
    // PATH is searched inside the root, / is the root, cwd applies in it.
    let out = c
        .exec(
            &Command::new([
                "busybox",
                "sh",
                "-c",
                "busybox cat /marker; pwd; ulimit -n; busybox ls /",
            ])
            .env("PATH", "/bin")
            .cwd("/work")
            .root(text(&root))
            .rlimit(libc::RLIMIT_NOFILE, 77, 99),
        )
        .unwrap();
    assert_eq!(
        out.stdout_text(),
        "inside\n/work\n77\nbin\nmarker\nwork\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    // A missing root, or a soft limit over the hard one, is the client's
    // error, typed.
    let e = c
        .exec(&Command::new(["/bin/busybox", "true"]).root("/no/such/root"))
        .unwrap_err();
    assert_eq!(kind(&e), Some(GuestErrorKind::NotFound), "{e}");
    assert!(e.to_string().contains("chroot /no/such/root"), "{e}");
    let e = c
        .exec(&Command::new(["/bin/busybox", "true"]).rlimit(libc::RLIMIT_NOFILE, 10, 5))
        .unwrap_err();
    assert_eq!(kind(&e), Some(GuestErrorKind::InvalidInput), "{e}");
}

#[test]
fn mount_makes_the_target_and_mounts_what_a_rooted_process_then_sees() {
    let Some(agent) = root_agent("mount_makes_the_target_and_mounts_what_a_rooted_process_then_sees") else {
        return;
    };
    let scratch = Scratch::new("mount");
    let root = tiny_root(&scratch);
    let c = client(&agent);
    // tmpfs on a target that does not exist yet, then proc in the root.
    let tmp = root.join("scratch/deep");
    c.mount(
        &GuestMount::new("tmpfs", text(&tmp))
            .fstype("tmpfs")
            .data("mode=700")
            .mkdir(true),
    )
    .unwrap();
    c.mount(
        &GuestMount::new("proc", text(&root.join("proc")))
            .fstype("proc")
            .mkdir(true),
    )
    .unwrap();
    let out = c
        .exec(
            &Command::new([
                "/bin/busybox",
                "sh",
                "-c",
                "echo x > /scratch/deep/f && /bin/busybox stat -c %a /scratch/deep && test -e /proc/self/status && echo ok",
            ])
            .root(text(&root)),
        )
        .unwrap();
    assert_eq!(
        out.stdout_text(),
        "700\nok\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The mounts are the agent's namespace's, not the host's: the host
    // sees an empty directory.
    assert!(tmp.is_dir());
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none());
    // Errors name the target.
    let e = c
        .mount(&GuestMount::new("none", "/no/such/target").fstype("tmpfs"))
        .unwrap_err();
    assert!(e.to_string().contains("mount /no/such/target"), "{e}");
    let e = c
        .mount(&GuestMount::new("none", "relative").fstype("tmpfs"))
        .unwrap_err();
    assert_eq!(kind(&e), Some(GuestErrorKind::InvalidInput), "{e}");
}
