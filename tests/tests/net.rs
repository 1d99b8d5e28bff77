//! virtio-net on a TAP, through the test guest's own driver, each test in
//! a network namespace of its own: ARP, ping both ways, the guest's UDP
//! hello, 1000 datagrams each way through its echo server, and one-line
//! errors for bad TAP configurations.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hearth::{NetConfig, Vm};
use hearth_tests::netns::NetNs;
use hearth_tests::{TestVm, GUEST_TIMEOUT};

const MAC: &str = "52:54:00:12:34:56";
const HOST_PORT: u16 = 7777;
const GUEST_PORT: u16 = 7778;

/// Boots the `net` scenario in `ns` (the calling thread enters it).
fn boot(ns: &NetNs) -> TestVm {
    ns.enter();
    TestVm::scenario("net")
        .arg(&format!(
            "tg.net.ip={} tg.net.host={} tg.net.port={HOST_PORT} tg.net.listen={GUEST_PORT}",
            ns.guest_ip, ns.host_ip
        ))
        .net(NetConfig::tap(&ns.tap).mac(MAC))
        .start()
}

#[test]
fn net_scenario_arp_ping_and_udp_both_ways() {
    let ns = NetNs::new();
    ns.enter();
    let host = UdpSocket::bind((ns.host_ip, HOST_PORT)).unwrap();
    host.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let t = boot(&ns);
    t.expect(
        &format!("NET-READY mac={MAC} ip={}\n", ns.guest_ip),
        GUEST_TIMEOUT,
    );
    t.expect("NET-ARP-OK host_mac=", GUEST_TIMEOUT);
    t.expect("NET-PING-OK\n", GUEST_TIMEOUT);
    t.expect("NET-UDP-SENT\n", GUEST_TIMEOUT);

    // The guest's datagram, byte for byte, from its address and port.
    let mut buf = [0u8; 2048];
    let (n, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("HELLO-UDP {}", ns.guest_ip).as_bytes());
    assert_eq!(from, SocketAddr::from((ns.guest_ip, GUEST_PORT)));

    // The host pings the guest: its ICMP echo server answers.
    let out = ns
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "5", &ns.guest_ip.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 received"), "{text}");

    // A datagram from the host comes back unchanged.
    host.send_to(b"ping-from-host", (ns.guest_ip, GUEST_PORT))
        .unwrap();
    let (n, from) = host.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (
            &b"ping-from-host"[..],
            SocketAddr::from((ns.guest_ip, GUEST_PORT))
        )
    );

    let c = t.vm.net_counters()[0];
    assert!(c.rx_frames >= 5 && c.tx_frames >= 5, "{c:?}");
    assert_eq!(c.tx_dropped_malformed, 0);
    assert!(t.lines_with("NET-ERROR").is_empty(), "{}", t.console.text());
    t.vm.stop();
}

/// Sends `count` distinct datagrams of `len` bytes with at most `window`
/// unanswered, and checks every echo. Returns the time taken.
fn echo_many(host: &UdpSocket, guest: SocketAddr, count: u32, len: usize, window: u32) -> Duration {
    let payload = |i: u32| -> Vec<u8> {
        let mut p = format!("{i:08}:").into_bytes();
        p.resize(len, b'a' + (i % 26) as u8);
        p
    };
    let (mut sent, mut got) = (0u32, HashSet::new());
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while got.len() < count as usize {
        while sent < count && sent - got.len() as u32 <= window {
            host.send_to(&payload(sent), guest).unwrap();
            sent += 1;
        }
        let (n, from) = host
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{} of {count} echoes back, then: {e}", got.len()));
        assert_eq!(from, guest);
        let i: u32 = std::str::from_utf8(&buf[..8]).unwrap().parse().unwrap();
        assert_eq!(&buf[..n], &payload(i)[..], "echo {i} differs");
        assert!(got.insert(i), "echo {i} came twice");
    }
    start.elapsed()
}

#[test]
fn a_thousand_datagrams_each_way_and_none_lost() {
    let ns = NetNs::new();
    ns.enter();
    let host = UdpSocket::bind((ns.host_ip, HOST_PORT)).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = boot(&ns);
    t.expect("NET-UDP-SENT\n", GUEST_TIMEOUT);
    let mut hello = [0u8; 64];
    host.recv_from(&mut hello).unwrap();

    let guest = SocketAddr::from((ns.guest_ip, GUEST_PORT));
    let small = echo_many(&host, guest, 1000, 64, 32);
    let large = echo_many(&host, guest, 1000, 1472, 32);
    eprintln!("1000 echoes: 64 B in {small:?}, 1472 B in {large:?}");
    let c = t.vm.net_counters()[0];
    assert!(c.rx_frames >= 2000 && c.tx_frames >= 2000, "{c:?}");
    assert_eq!(c.rx_dropped_no_buffer, 0, "{c:?}");
    t.vm.stop();
}

fn start_error(config: NetConfig) -> String {
    let ns_console = hearth::SerialBuffer::new();
    let mut c = TestVm::scenario("net").config(&ns_console);
    c.nets = vec![config];
    match Vm::start(c) {
        Ok(_) => panic!("the VM started"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_tap_configurations_are_one_line_errors() {
    let ns = NetNs::new();
    ns.enter();
    let e = start_error(NetConfig::tap("tap-missing"));
    assert_eq!(
        e,
        "TAP interface tap-missing does not exist (create it with `ip tuntap add tap-missing mode tap`)"
    );
    let e = start_error(NetConfig::tap("lo"));
    assert_eq!(e, "interface lo exists but is not a TAP interface");
    let e = start_error(NetConfig::tap("bad/name"));
    assert!(e.starts_with("invalid TAP interface name \"bad/name\""), "{e}");

    // A TAP another VM holds is busy.
    let t = boot(&ns);
    t.expect("NET-READY", GUEST_TIMEOUT);
    let e = start_error(NetConfig::tap(&ns.tap));
    assert_eq!(e, "TAP interface tap0 is busy: another process has it open");
    t.vm.stop();
    drop(t);

    // With `create`, a missing TAP is made (inside the namespace).
    let console = hearth::SerialBuffer::new();
    let mut c = TestVm::scenario("hello").config(&console);
    c.nets = vec![NetConfig::tap("tap-new").create(true)];
    let vm = Vm::start(c).unwrap();
    ns.exec(&["link", "show", "tap-new"]);
    vm.stop();
    let e = start_error(NetConfig::tap("tap0").mac("01:00:5e:00:00:01"));
    assert!(e.contains("multicast") && !e.contains('\n'), "{e}");
}
