//! Builds the test guest with make into OUT_DIR.

// A build script reports failure by panicking, with the reason on stderr.
#![allow(clippy::panic, clippy::print_stderr, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("testguest");
    for input in ["src", "Makefile", "link.ld", "mkbzimage.py"] {
        println!("cargo:rerun-if-changed={}", src.join(input).display());
    }
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("O={}", out.display()))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the test guest with make failed ({s}); gcc, binutils, make and python3 are needed"
        ),
        Err(e) => panic!("cannot run make to build the test guest: {e}"),
    }
    println!("cargo:rustc-env=HEARTH_TESTGUEST_DIR={}", out.display());
}
