//! Firecracker's diff snapshot beside Hearth's (`vmm/benches/fork.rs`):
//! the same test guest (`memory` scenario), 512 MiB with 256 MiB touched,
//! a full snapshot, then 1 MiB (or 32 MiB) changed and a diff snapshot,
//! through Firecracker's API with dirty-page tracking on. Prints the
//! create times and the bytes each memory file holds (allocated blocks).
//!
//! `FIRECRACKER=path cargo bench -p hearth-cli --bench fc_diff [-- RUNS]`
//! (default 3); without `FIRECRACKER` it says so and measures nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

fn request(sock: &Path, method: &str, path: &str, body: &str) {
    let mut s = UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The status line and headers (and a short body) arrive at once.
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "Firecracker closed the API connection");
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 204") || text.starts_with("HTTP/1.1 200"),
        "{method} {path}: {text}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn allocated_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map_or(0.0, |m| m.blocks() as f64 * 512.0 / f64::from(1 << 20))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Fc {
    child: Child,
    stdin: ChildStdin,
    sock: PathBuf,
}

impl Drop for Fc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn boot(binary: &Path, dir: &Path, change_kib: u64) -> Fc {
    let sock = dir.join("fc.sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(binary)
        .arg("--api-sock")
        .arg(&sock)
        // Its seccomp filters are written for its musl build.
        .args(["--no-seccomp", "--level", "Error"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let t = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no Firecracker API socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kernel = hearth_testguest::elf();
    request(
        &sock,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path":"{}","boot_args":"tg.scenario=memory tg.mem.base_mib=32 tg.mem.touch_mib=256 tg.mem.change_kib={change_kib} tg.mem.poll_ms=10"}}"#,
            kernel.display()
        ),
    );
    request(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":512,"track_dirty_pages":true}"#,
    );
    request(&sock, "PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    // Its serial device drops the guest's string writes: wait for the
    // touched memory to be resident instead of MEM-READY.
    let pid = child.id();
    let t = Instant::now();
    while rss_kib(pid) < 256 * 1024 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the guest did not touch its memory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    Fc { child, stdin, sock }
}

fn snapshot(fc: &Fc, dir: &Path, name: &str, kind: &str) -> (f64, f64) {
    let (state, mem) = (dir.join(format!("{name}.state")), dir.join(format!("{name}.mem")));
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(&mem);
    let t = Instant::now();
    request(
        &fc.sock,
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type":"{kind}","snapshot_path":"{}","mem_file_path":"{}"}}"#,
            state.display(),
            mem.display()
        ),
    );
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (ms, allocated_mib(&mem))
}

fn main() {
    let Some(binary) = std::env::var_os("FIRECRACKER").map(PathBuf::from) else {
        println!("FIRECRACKER is not set: nothing measured (set it to a firecracker binary)");
        return;
    };
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("hearth-fc-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("Firecracker diff snapshots, test guest `memory`, 512 MiB, 256 MiB touched, medians of {runs}");
    for change_kib in [1024u64, 32 * 1024] {
        let (mut full, mut diff, mut full_mib, mut diff_mib) = (Vec::new(), Vec::new(), 0.0, 0.0);
        for _ in 0..runs {
            let mut fc = boot(&binary, &dir, change_kib);
            request(&fc.sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
            let (ms, mib) = snapshot(&fc, &dir, "full", "Full");
            full.push(ms);
            full_mib = mib;
            request(&fc.sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#);
            // One byte of serial input: the guest rewrites its change window.
            fc.stdin.write_all(b"x").unwrap();
            fc.stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            request(&fc.sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
            let (ms, mib) = snapshot(&fc, &dir, "diff", "Diff");
            diff.push(ms);
            diff_mib = mib;
        }
        println!(
            "{:>2} MiB changed: diff {:8.2} ms / {:6.1} MiB in the memory file; full {:8.2} ms / {:6.1} MiB",
            change_kib >> 10,
            median(diff),
            diff_mib,
            median(full),
            full_mib
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
