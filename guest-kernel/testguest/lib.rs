//! Paths to Hearth's bare-metal test guest, which `build.rs` compiles with
//! gcc and make (see `Makefile` and `README.md` in this directory).

use std::path::{Path, PathBuf};

fn dir() -> &'static Path {
    Path::new(env!("HEARTH_TESTGUEST_DIR"))
}

/// The ELF form (PVH note plus 64-bit entry), loaded like a vmlinux.
pub fn elf() -> PathBuf {
    dir().join("testguest.elf")
}

/// The bzImage form of the same program.
pub fn bzimage() -> PathBuf {
    dir().join("testguest.bzImage")
}
