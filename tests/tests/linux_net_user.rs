//! Linux tier, user-mode networking (docs/NETWORK.md): one boot of the
//! Linux guest on a user-mode interface (no TAP, no root), configured by
//! the kernel's `ip=` (with the gateway as DNS server; hearth-init writes
//! /etc/resolv.conf), and busybox `wget` in the guest against HTTP
//! servers on the host's loopback:
//!
//! - deny by default: a port no rule names fails fast, and is counted;
//! - a CIDR rule: a 1 MiB file arrives with a matching sha256;
//! - a domain rule through the host map: the allowed name connects, a
//!   name no rule names gets NXDOMAIN, another name pinned to the same
//!   address is refused before a byte reaches the server;
//! - the metadata address is refused;
//! - replacing the policy closes a download in flight.
//!
//! busybox `wget -T` (its own timeout) crashes here (PVM), so no wget is
//! given one: refusals are resets, and fail at once.
//!
//! The servers listen on the host's loopback in this process's network
//! namespace (random ports); the guest reaches them only through the
//! backend's policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth::{NetConfig, NetPolicy, UserNetSpec, Vm};
use hearth_tests::linux::{guest, AgentGuest, ConsoleOnPanic, LINUX_TIMEOUT};
use sha2::{Digest, Sha256};

const BIG: usize = 1 << 20;

fn big() -> Vec<u8> {
    let mut x = 0x2545_f491u32;
    (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// An HTTP/1.0 server on the host's loopback: `/big` is 1 MiB, `/slow`
/// trickles a byte every 100 ms for a minute, anything else is "ok".
/// Counts the requests it read.
fn http_server() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let r = r.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() || first.is_empty() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                r.fetch_add(1, Ordering::SeqCst);
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = match path.as_str() {
                    "/big" => big(),
                    "/slow" => {
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                        for _ in 0..600 {
                            if s.write_all(b".").is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        return;
                    }
                    _ => b"ok\n".to_vec(),
                };
                let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(&body);
            });
        }
    });
    (port, requests)
}

fn policy(allow: &[String], hosts: &[(&str, Ipv4Addr)]) -> NetPolicy {
    NetPolicy {
        allow: allow.iter().map(|r| r.parse().unwrap()).collect(),
        hosts: hosts.iter().map(|(n, ip)| (n.to_string(), *ip)).collect(),
    }
}

/// Runs `script` in the guest; (exit code, stdout+stderr, seconds).
fn sh(vm: &Vm, script: &str) -> (Option<i32>, String, f64) {
    let t0 = Instant::now();
    let out = vm.exec(&["sh", "-c", script]).unwrap();
    let text = format!("{}{}", out.stdout_text(), String::from_utf8_lossy(&out.stderr));
    (out.status.code, text, t0.elapsed().as_secs_f64())
}

#[test]
fn linux_wget_through_the_user_mode_backend() {
    let Some(g) = guest("linux_wget_through_the_user_mode_backend") else {
        return;
    };
    let (open, _) = http_server(); // CIDR rule
    let (named, named_requests) = http_server(); // domain rule only
    let (closed, closed_requests) = http_server(); // no rule
    let localhost = Ipv4Addr::LOCALHOST;
    let start_policy = policy(
        &[format!("127.0.0.1:{open}"), format!("svc.test:{named}")],
        &[("svc.test", localhost), ("other.test", localhost)],
    );
    let a = AgentGuest::new(&g, "net-user");
    let t = a
        .vm(&g)
        .arg("ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.2")
        .net(NetConfig::user(UserNetSpec::new(start_policy.clone())).mac("52:54:00:12:34:17"))
        .start();
    let _dump = ConsoleOnPanic::new("the user-net VM", &t.console);
    t.expect("AGENT-READY port=52", LINUX_TIMEOUT);
    let vm = &t.vm;

    let (code, text, _) = sh(vm, "cat /etc/resolv.conf");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nameserver 10.0.2.2"), "{text}");

    // Deny by default: refused fast, counted, nothing reached the server.
    let refused_before = vm.user_net_counters(0).unwrap().flows_refused;
    let (code, text, secs) = sh(vm, &format!("wget -O - http://10.0.2.2:{closed}/"));
    assert_ne!(code, Some(0), "{text}");
    assert!(secs < 10.0, "the refusal took {secs:.1} s: {text}");
    assert_eq!(closed_requests.load(Ordering::SeqCst), 0);
    let c = vm.user_net_counters(0).unwrap();
    assert!(c.flows_refused > refused_before, "{c:?}: {text}");

    // A CIDR rule: 1 MiB with a matching sha256.
    let want = format!("{:x}", Sha256::digest(big()));
    let (code, text, secs) = sh(
        vm,
        &format!("wget -q -O /tmp/big http://10.0.2.2:{open}/big && sha256sum /tmp/big"),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with(&want), "{text} vs {want}");
    eprintln!("1 MiB through the user-mode backend in {secs:.1} s (guest fork+exec included)");

    // A domain rule through the host map; NXDOMAIN; another pinned name.
    let (code, text, _) = sh(vm, &format!("wget -q -O - http://svc.test:{named}/hello"));
    assert_eq!((code, text.as_str()), (Some(0), "ok\n"));
    assert_eq!(named_requests.load(Ordering::SeqCst), 1);
    let (code, text, _) = sh(vm, &format!("wget -q -O - http://nope.test:{named}/"));
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("bad address"), "{text}");
    let (code, text, _) = sh(vm, &format!("wget -q -O - http://other.test:{named}/"));
    assert_ne!(code, Some(0), "{text}");
    assert_eq!(
        named_requests.load(Ordering::SeqCst),
        1,
        "no byte of the refused flow arrived"
    );

    // The metadata address.
    let (code, text, secs) = sh(vm, "wget -q -O - http://169.254.169.254/latest/meta-data/");
    assert_ne!(code, Some(0), "{text}");
    assert!(secs < 10.0, "{secs:.1} s: {text}");

    // A new policy closes a download in flight.
    let agent = vm.agent().unwrap();
    let slow = std::thread::spawn(move || {
        let out = agent
            .exec(&hearth::Command::new([
                "sh",
                "-c",
                &format!("wget -q -O - http://10.0.2.2:{open}/slow | wc -c"),
            ]))
            .unwrap();
        (out.status.code, out.stdout_text())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.user_net_counters(0).unwrap().open_tcp == 0 {
        assert!(Instant::now() < deadline, "the slow download never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    vm.set_net_policy(0, policy(&[], &[])).unwrap();
    let t0 = Instant::now();
    let (_, bytes) = slow.join().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30), "the download went on");
    let bytes: usize = bytes.trim().parse().unwrap_or(0);
    assert!(bytes < 300, "{bytes} bytes: the flow was not cut");
    assert_eq!(vm.user_net_counters(0).unwrap().flows_closed_by_policy, 1);
    t.vm.stop();
}
