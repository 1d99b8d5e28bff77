//! The `hearth` launcher: success paths, exit codes, and one clear line on
//! stderr for every bad input.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod common;

use common::{assert_one_line_error, hearth, needs_root, stderr, testguest};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    hearth().args(args).output().expect("run hearth")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-launcher-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn hello_prints_guest_ready_and_exits_zero() {
    let o = run(&[
        "run",
        "--kernel",
        &testguest(),
        "--cmdline",
        "tg.scenario=hello",
        "--boot-timer",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "GUEST-READY\n");
    assert!(stderr(&o).contains("guest ready after"), "{}", stderr(&o));
}

#[test]
fn serial_to_file_and_json_config() {
    let out = tmp("serial.txt");
    let cfg = tmp("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"kernel": "{}", "vcpus": 2, "memory_mib": 64, "cmdline": "tg.scenario=smp", "serial": {{"file": "{}"}}}}"#,
            testguest(),
            out.display()
        ),
    )
    .unwrap();
    let o = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("SMP-OK cpus=2"), "{text}");
}

#[test]
fn guest_crash_exits_two_with_one_line() {
    let o = run(&[
        "run",
        "--kernel",
        &testguest(),
        "--cmdline",
        "tg.scenario=fault",
        "--serial",
        "none",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("guest crashed: triple fault"), "{err}");
}

#[test]
fn bad_flags_get_one_line() {
    assert_one_line_error(
        &run(&["run", "--serial", "tty"]),
        "invalid value 'tty' for '--serial <SINK>'",
    );
    assert_one_line_error(&run(&["run", "--vcpus", "many"]), "invalid value 'many'");
    assert_one_line_error(&run(&["launch"]), "unrecognized subcommand");
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn missing_kernel() {
    let o = run(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_one_line_error(&o, "cannot open kernel /nonexistent/vmlinux: No such file");
    assert_eq!(
        stderr(&o).matches("No such file").count(),
        1,
        "cause repeated: {}",
        stderr(&o)
    );
}

#[test]
fn kernel_is_a_directory() {
    assert_one_line_error(&run(&["run", "--kernel", "/tmp"]), "is not a regular file");
}

#[test]
fn kernel_is_neither_elf_nor_bzimage() {
    let k = tmp("junk-kernel");
    std::fs::write(&k, "#!/bin/sh\necho not a kernel\n").unwrap();
    assert_one_line_error(
        &run(&["run", "--kernel", k.to_str().unwrap()]),
        "neither an ELF vmlinux nor a bzImage",
    );
}

#[test]
fn unreadable_kernel() {
    needs_root!("unreadable_kernel: to switch to an unprivileged user");
    let k = tmp("secret-kernel");
    std::fs::copy(hearth_testguest::elf(), &k).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_hearth"),
        ])
        .args(["run", "--kernel", k.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(&o, "Permission denied");
}

#[test]
fn memory_zero_and_over_host() {
    let k = testguest();
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--memory", "0"]),
        "memory_mib must be at least",
    );
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--memory", "900000"]),
        "exceeds the host's available memory",
    );
}

#[test]
fn vcpus_zero_and_over_limit() {
    let k = testguest();
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--vcpus", "0"]),
        "vcpus must be between 1 and",
    );
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--vcpus", "4096"]),
        "vcpus must be between 1 and",
    );
}

#[test]
fn cmdline_too_long() {
    let long = "x".repeat(3000);
    assert_one_line_error(
        &run(&["run", "--kernel", &testguest(), "--cmdline", &long]),
        "cmdline is 3000 bytes",
    );
}

#[test]
fn bad_json_config_names_the_field() {
    let cfg = tmp("bad.json");
    std::fs::write(
        &cfg,
        format!(r#"{{"kernel": "{}", "vcpus": "four"}}"#, testguest()),
    )
    .unwrap();
    assert_one_line_error(
        &run(&["run", "--config", cfg.to_str().unwrap()]),
        "vcpus: invalid type",
    );
    std::fs::write(
        &cfg,
        format!(r#"{{"kernel": "{}", "memroy_mib": 64}}"#, testguest()),
    )
    .unwrap();
    assert_one_line_error(
        &run(&["run", "--config", cfg.to_str().unwrap()]),
        "unknown field `memroy_mib`",
    );
    assert_one_line_error(
        &run(&["run", "--config", "/nonexistent.json"]),
        "cannot read config",
    );
}

#[test]
fn bad_network_interfaces() {
    let k = testguest();
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--net", "tap=hth-no-such"]),
        "TAP interface hth-no-such does not exist",
    );
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--net", "tap=lo"]),
        "interface lo exists but is not a TAP interface",
    );
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--net", "tap=t0,mac=ff:ff:ff:ff:ff:ff"]),
        "multicast",
    );
    assert_one_line_error(&run(&["run", "--kernel", &k, "--net", "tap=t0,mtu=20"]), "mtu");
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--net", "tap=t0,rx-bw=0"]),
        "positive",
    );
}

#[test]
fn bad_disks() {
    let k = testguest();
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--disk", "/nonexistent.img"]),
        "cannot open disk /nonexistent.img",
    );
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--disk", "/tmp"]),
        "not a regular file or block device",
    );
    let odd = tmp("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--disk", odd.to_str().unwrap()]),
        "not a multiple of 512",
    );
    let ro = tmp("ro.img");
    std::fs::write(&ro, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--disk", ro.to_str().unwrap()]),
        "is read-only",
    );
    let long_id = format!("{},id={}", ro.display(), "x".repeat(21));
    assert_one_line_error(
        &run(&["run", "--kernel", &k, "--disk", &long_id]),
        "longer than 20 bytes",
    );
    // The same read-only file attached read-only boots.
    let o = run(&[
        "run",
        "--kernel",
        &k,
        "--cmdline",
        "tg.scenario=hello",
        "--disk",
        &format!("{},ro", ro.display()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn dev_kvm_missing() {
    needs_root!("dev_kvm_missing: for a private mount namespace");
    // A private /dev without kvm, in a mount namespace of our own.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --kernel {} --serial none",
        env!("CARGO_BIN_EXE_hearth"),
        testguest()
    );
    let o = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_one_line_error(&o, "/dev/kvm: it does not exist");
}

#[test]
fn dev_kvm_not_permitted() {
    needs_root!("dev_kvm_not_permitted: to switch to an unprivileged user");
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is required for these tests"
    );
    let k = tmp("public-kernel");
    std::fs::copy(hearth_testguest::elf(), &k).unwrap();
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        k.parent().unwrap(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_hearth"),
        ])
        .args(["run", "--kernel", k.to_str().unwrap()])
        .output()
        .unwrap();
    assert_one_line_error(&o, "/dev/kvm: permission denied");
}
