//! The user-mode network backend with no VM, against a TAP: a simulated
//! guest (smoltcp, `user::sim`) exchanges frames with the backend
//! directly, as the virtio-net device would, and talks TCP to an echo
//! server on the host.
//!
//! - stream: the guest sends `MIB` MiB and reads the echo back; MB/s is
//!   payload bytes each way over the wall time, CPU is the process's user
//!   and system time (guest stack, backend, server, host kernel) per MB
//!   moved each way;
//! - connection setup: connect, established, close, one at a time;
//! - memory per open flow: RSS growth over `FLOWS` established flows.
//!
//! The TAP runs (root only) use a TAP in a network namespace of the
//! bench's own (10.0.2.2/24 on the host side); without root they are
//! skipped. Medians over the runs.
//!
//! `cargo bench -p hearth-devices --bench user_net [-- RUNS]` (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use hearth_devices::virtio::net::user::sim::{gateway, SimGuest};
use hearth_devices::virtio::net::user::{NetPolicy, UserNet, UserNetConfig};
use hearth_devices::virtio::net::{NetBackend, Tap};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

const MIB: usize = 16;
const CONNS: usize = 50;
const FLOWS: usize = 200;
const T: Duration = Duration::from_secs(60);

fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid rusage to write.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn echo_server(addr: &str) -> u16 {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn established(g: &mut SimGuest, net: &mut dyn NetBackend, h: SocketHandle) {
    assert!(g.run_until(net, T, |g| g.tcp(h).state() == tcp::State::Established));
}

/// Echoes `bytes` through a new connection; returns (seconds, CPU seconds).
fn stream(
    g: &mut SimGuest,
    net: &mut dyn NetBackend,
    dst: SocketAddrV4,
    port: u16,
    bytes: usize,
) -> (f64, f64) {
    let h = g.connect(dst, port, 256 * 1024);
    established(g, net, h);
    let chunk = vec![0x5au8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut got) = (0usize, 0usize);
    let (t0, c0) = (Instant::now(), cpu_secs());
    assert!(g.run_until(net, T, |g| {
        let s = g.tcp(h);
        while sent < bytes && s.can_send() {
            let n = s.send_slice(&chunk[..chunk.len().min(bytes - sent)]).unwrap();
            if n == 0 {
                break;
            }
            sent += n;
        }
        while s.can_recv() {
            got += s.recv_slice(&mut buf).unwrap();
        }
        got >= bytes
    }));
    let r = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
    g.tcp(h).abort();
    g.step(net);
    g.sockets.remove(h);
    r
}

/// Connections per second: connect, established, close.
fn setup_rate(g: &mut SimGuest, net: &mut dyn NetBackend, dst: SocketAddrV4, base: u16) -> f64 {
    let t0 = Instant::now();
    for i in 0..CONNS {
        let h = g.connect(dst, base + i as u16, 4096);
        established(g, net, h);
        g.tcp(h).abort();
        g.step(net);
        g.sockets.remove(h);
    }
    CONNS as f64 / t0.elapsed().as_secs_f64()
}

/// RSS growth per established flow, in KiB.
fn per_flow_kib(g: &mut SimGuest, net: &mut dyn NetBackend, dst: SocketAddrV4, base: u16) -> f64 {
    let before = rss_kib();
    // In batches: the backend refuses connects past its pending limit.
    let mut hs = Vec::new();
    for batch in 0..FLOWS / 25 {
        let new: Vec<_> = (0..25)
            .map(|i| g.connect(dst, base + (batch * 25 + i) as u16, 4096))
            .collect();
        assert!(g.run_until(net, T, |g| new
            .iter()
            .all(|&h| g.tcp(h).state() == tcp::State::Established)));
        hs.extend(new);
    }
    // Some bytes each way, so buffers are touched as in use.
    for &h in &hs {
        g.tcp(h).send_slice(&[1u8; 2048]).unwrap();
    }
    let mut buf = [0u8; 4096];
    let mut got = vec![0usize; hs.len()];
    assert!(g.run_until(net, T, |g| {
        for (i, &h) in hs.iter().enumerate() {
            while g.tcp(h).can_recv() {
                got[i] += g.tcp(h).recv_slice(&mut buf).unwrap();
            }
        }
        got.iter().all(|&n| n >= 2048)
    }));
    let kib = (rss_kib().saturating_sub(before)) as f64 / FLOWS as f64;
    for h in hs {
        g.tcp(h).abort();
        g.step(net);
        g.sockets.remove(h);
    }
    kib
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn report(name: &str, runs: usize, g: &mut SimGuest, net: &mut dyn NetBackend, dst: SocketAddrV4, port: u16) {
    let bytes = MIB << 20;
    let mut rates = Vec::new();
    let mut cpu = Vec::new();
    for r in 0..runs {
        let (secs, cpu_s) = stream(g, net, dst, 20_000 + r as u16, bytes);
        rates.push(bytes as f64 / 1e6 / secs);
        cpu.push(cpu_s * 1e3 / (bytes as f64 / 1e6));
    }
    let _ = port;
    let setup = median(
        (0..runs)
            .map(|r| setup_rate(g, net, dst, 30_000 + (r * CONNS) as u16))
            .collect(),
    );
    let per_flow = per_flow_kib(g, net, dst, 50_000);
    println!(
        "{name:<5} stream {MIB} MiB echo: {:>7.1} MB/s each way, {:>5.2} ms CPU per MB | setup {:>6.0} conn/s | {:>6.1} KiB RSS per open flow",
        median(rates),
        median(cpu),
        setup,
        per_flow
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(args: &[&str]) -> bool {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    // A namespace of our own when we can: the TAP and the servers live in
    // it, and nothing leaves it.
    // SAFETY: unshare affects only this (still single-threaded) process.
    let own_ns = is_root()
        && unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0
        && sh(&["ip", "link", "set", "lo", "up"]);
    println!("user_net bench: {runs} runs, medians; own network namespace: {own_ns}");

    let port = echo_server("0.0.0.0:0");
    let mut c = UserNetConfig::new(NetPolicy {
        allow: vec![format!("127.0.0.1:{port}").parse().unwrap()],
        hosts: Default::default(),
    });
    c.recorder = std::sync::Arc::new(|_r| {});
    c.limits.max_flows = 1024;
    let (mut user, _h) = UserNet::new(c).unwrap();
    let mut g = SimGuest::new(1500);
    report("user", runs, &mut g, &mut user, gateway(port), port);

    if !own_ns {
        println!("tap   skipped: needs root (a TAP in a network namespace of the bench's own)");
        return;
    }
    let mut tap = Tap::open("hrthbench0", true).unwrap();
    assert!(sh(&["ip", "addr", "add", "10.0.2.2/24", "dev", "hrthbench0"]));
    assert!(sh(&["ip", "link", "set", "hrthbench0", "up"]));
    tap.set_offload(Default::default()).unwrap();
    let mut g = SimGuest::new(1500);
    report(
        "tap",
        runs,
        &mut g,
        &mut tap,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port),
        port,
    );
}
