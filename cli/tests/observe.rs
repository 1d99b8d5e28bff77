//! The launcher's events and metrics files, TTL and idle exit statuses,
//! and the `metrics` and `set_ttl` commands, across processes
//! (docs/OBSERVABILITY.md).

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

#[allow(dead_code, unused_macros, unused_imports)]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{hearth, stderr, testguest};
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-observe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn api(sock: &Path, cmd: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut s = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("API socket {}: {e}", sock.display()),
        }
    };
    writeln!(s, "{cmd}").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn spawn(args: &[&str]) -> Child {
    hearth()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait(mut child: Child, timeout: Duration) -> (Option<i32>, Duration) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), t.elapsed());
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("hearth still running after {timeout:?}: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn events_and_metrics_files_follow_a_vm_into_a_restore_in_another_process() {
    let (sock, events, metrics, snap) = (tmp("a.sock"), tmp("a.events"), tmp("a.metrics"), tmp("snap"));
    let kernel = testguest();
    let child = spawn(&[
        "run",
        "--kernel",
        &kernel,
        "--cmdline",
        "tg.scenario=counter",
        "--serial",
        "none",
        "--id",
        "box-1",
        "--label",
        "tenant=t7",
        "--events",
        events.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
        "--metrics-interval",
        "200ms",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let m = api(&sock, r#"{"cmd":"metrics"}"#);
    assert_eq!(m["ok"], true, "{m}");
    assert_eq!(m["metrics"]["vm"], "box-1");
    assert_eq!(m["metrics"]["vcpus"].as_array().unwrap().len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    // Two interval lines before the one at exit (a loaded machine may be
    // late with them).
    let written = || {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        text.matches('\n').count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while written() < 2 {
        assert!(Instant::now() < deadline, "no metrics lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    for cmd in [r#"{"cmd":"pause"}"#, r#"{"cmd":"resume"}"#, r#"{"cmd":"pause"}"#] {
        assert_eq!(api(&sock, cmd)["ok"], true);
    }
    let s = api(
        &sock,
        &format!(r#"{{"cmd":"snapshot","dir":"{}"}}"#, snap.display()),
    );
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(api(&sock, r#"{"cmd":"stop"}"#)["ok"], true);
    let (code, _) = wait(child, Duration::from_secs(30));
    assert_eq!(code, Some(0));

    let ev = lines(&events);
    assert_eq!(
        names(&ev),
        [
            "created",
            "booted",
            "paused",
            "resumed",
            "paused",
            "snapshotted",
            "exited"
        ]
    );
    assert!(
        ev.iter()
            .all(|e| e["vm"] == "box-1" && e["labels"]["tenant"] == "t7"),
        "{ev:?}"
    );
    let exited = ev.last().unwrap();
    assert_eq!(exited["reason"], "stopped");
    assert!(exited["totals"]["uptime_ms"].as_u64().unwrap() >= 500, "{exited}");
    // Every interval, and once at exit.
    let ms = lines(&metrics);
    assert!(ms.len() >= 3, "{} metrics lines", ms.len());
    assert!(ms.iter().all(|m| m["vm"] == "box-1"));
    let last = ms.last().unwrap();
    assert!(last["paused_ms"].as_u64().unwrap() > 0, "{last}");

    // The restore, in a new process, is the same VM with a label more; its
    // TTL ends it with status 3.
    let events2 = tmp("b.events");
    let child = spawn(&[
        "restore",
        snap.to_str().unwrap(),
        "--serial",
        "none",
        "--label",
        "phase=restored",
        "--ttl",
        "1s",
        "--events",
        events2.to_str().unwrap(),
    ]);
    let (code, took) = wait(child, Duration::from_secs(30));
    assert_eq!(code, Some(3), "TTL exit status");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    let ev = lines(&events2);
    assert_eq!(names(&ev), ["created", "restored", "ttl_expired", "exited"]);
    assert_eq!(ev[1]["from_vm"], "box-1");
    assert!(ev
        .iter()
        .all(|e| e["vm"] == "box-1" && e["labels"]["tenant"] == "t7" && e["labels"]["phase"] == "restored"));
    assert_eq!(ev[3]["reason"], "time to live expired");
}

#[test]
fn set_ttl_on_a_running_vm_stops_it_with_status_3() {
    let sock = tmp("ttl.sock");
    let child = spawn(&[
        "run",
        "--kernel",
        &testguest(),
        "--cmdline",
        "tg.scenario=spin",
        "--serial",
        "none",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let bad = api(&sock, r#"{"cmd":"set_ttl","ttl_ms":0}"#);
    assert_eq!(bad["ok"], false);
    assert_eq!(api(&sock, r#"{"cmd":"set_ttl","ttl_ms":300}"#)["ok"], true);
    let (code, _) = wait(child, Duration::from_secs(30));
    assert_eq!(code, Some(3));
}

#[test]
fn idle_timeout_snapshot_exits_4_and_the_snapshot_restores() {
    let snap = tmp("idle-snap");
    let child = spawn(&[
        "run",
        "--kernel",
        &testguest(),
        "--cmdline",
        "tg.scenario=counter tg.period_ms=1000",
        "--serial",
        "none",
        "--idle-timeout",
        &format!("1s,snapshot={}", snap.display()),
    ]);
    let (code, _) = wait(child, Duration::from_secs(60));
    assert_eq!(code, Some(4), "idle snapshot exit status");
    // The snapshot runs again (and, idle again, is snapshotted again).
    let child = hearth()
        .args([
            "restore",
            snap.to_str().unwrap(),
            "--ttl",
            "2s",
            "--serial",
            "stdout",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(
        out.contains("COUNT"),
        "restored guest printed: {out:?} {}",
        stderr(&child)
    );
    assert!(
        matches!(child.status.code(), Some(3) | Some(4)),
        "{}",
        stderr(&child)
    );
}

#[test]
fn bad_observability_flags_fail_with_one_line() {
    for (args, needle) in [
        (vec!["--ttl", "0s"], "more than 0"),
        (vec!["--ttl", "soon"], "bad duration"),
        (vec!["--idle-timeout", "1m,halt"], "bad idle action"),
        (vec!["--label", "nokey"], "KEY=VALUE"),
        (vec!["--events", "/nonexistent-dir/e.jsonl"], "events file"),
    ] {
        let mut all = vec!["run", "--kernel", "/k"];
        all.extend(args);
        let o = hearth().args(&all).output().unwrap();
        common::assert_one_line_error(&o, needle);
        assert_eq!(o.status.code(), Some(1));
    }
}
