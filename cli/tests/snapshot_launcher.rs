//! Snapshot through the launcher's API socket, kill the process, restore
//! in a new one: the guest's counter continues without restarting.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-snapl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Forwards the child's stdout lines to a channel.
fn lines(out: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn count(line: &str) -> Option<u64> {
    line.strip_prefix("COUNT ").and_then(|n| n.trim().parse().ok())
}

/// Waits for a COUNT line of at least `min`.
fn wait_count(rx: &Receiver<String>, min: u64) -> (u64, Vec<String>) {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no COUNT >= {min}: {seen:?}"));
        seen.push(line.clone());
        if let Some(n) = count(&line).filter(|&n| n >= min) {
            return (n, seen);
        }
    }
}

fn api(sock: &PathBuf, cmd: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    writeln!(s, "{cmd}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn counter_survives_kill_and_restore_in_a_new_process() {
    let sock = tmp("api.sock");
    let dir = tmp("snap");
    let kernel = hearth_testguest::elf();
    let mut first = spawn(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "64",
        "--cmdline",
        "tg.scenario=counter tg.period_ms=10",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let rx = lines(first.stdout.take().unwrap());
    wait_count(&rx, 5);
    assert_eq!(api(&sock, r#"{"cmd":"status"}"#)["state"], "running");
    assert_eq!(api(&sock, r#"{"cmd":"pause"}"#)["ok"], true);
    assert_eq!(api(&sock, r#"{"cmd":"status"}"#)["state"], "paused");
    let reply = api(
        &sock,
        &format!(r#"{{"cmd":"snapshot","dir":"{}"}}"#, dir.display()),
    );
    assert_eq!(reply["ok"], true, "{reply}");
    eprintln!("snapshot over the API: {reply}");
    // Everything printed before the pause is the last count N.
    std::thread::sleep(Duration::from_millis(100));
    let n = rx.try_iter().filter_map(|l| count(&l)).last().unwrap_or(5);
    let bad = api(&sock, r#"{"cmd":"fly"}"#);
    assert_eq!(bad["ok"], false);
    // stop is answered, then the launcher exits cleanly.
    assert_eq!(api(&sock, r#"{"cmd":"stop"}"#)["ok"], true);
    assert!(first.wait().unwrap().success());

    let mut second = spawn(&["restore", dir.to_str().unwrap(), "--serial", "stdout", "--timing"]);
    let rx = lines(second.stdout.take().unwrap());
    let (m, seen) = wait_count(&rx, n + 1);
    assert!(m > n, "the counter restarted: {seen:?}");
    assert!(
        !seen.iter().any(|l| l.contains("GUEST-READY")),
        "the guest rebooted: {seen:?}"
    );
    assert_eq!(
        seen.first().and_then(|l| count(l)),
        Some(n + 1),
        "continues at the next count: {seen:?}"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}
