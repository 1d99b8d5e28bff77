//! What the launcher tests share: running `hearth` and reading its errors.

use std::process::{Command, Output};

/// The launcher binary, with no logging or test hook inherited.
pub fn hearth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.env_remove("RUST_LOG").env_remove("HEARTH_JAIL_PROBE");
    c
}

/// The test guest's ELF.
pub fn testguest() -> String {
    hearth_testguest::elf().to_str().unwrap().to_string()
}

/// The process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status 1 with exactly one stderr line containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "status {:?}, stderr: {err}", o.status);
    assert_eq!(err.lines().count(), 1, "expected one line, got: {err}");
    assert!(err.starts_with("hearth: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// Whether the tests run as root (the suite needs it: jails, namespaces,
/// switching users).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the test when not root and `HEARTH_SKIP_ROOT=1` says so;
/// without that, a test that needs root fails rather than passing quietly.
macro_rules! needs_root {
    ($why:literal) => {
        if !common::is_root() {
            if std::env::var_os("HEARTH_SKIP_ROOT").is_some_and(|v| v == "1") {
                eprintln!("SKIPPED (HEARTH_SKIP_ROOT=1): {}", $why);
                return;
            }
            panic!(
                "this test needs root ({}); set HEARTH_SKIP_ROOT=1 to skip it",
                $why
            );
        }
    };
}
pub(crate) use needs_root;
