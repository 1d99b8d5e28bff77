//! virtio-net on a TAP, through the test guest's own driver, each test in
//! a network namespace of its own: ARP, ping both ways, the guest's UDP
//! hello, 1000 datagrams each way through its echo server, and one-line
//! errors for bad TAP configurations.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::net::{SocketAddr, UdpSocket};

use hearth::{NetConfig, Vm};
use hearth_tests::netns::NetNs;
use hearth_tests::udp_echo::{boot, boot_echo, echo_addr, echo_many, GUEST_PORT, HOST_PORT, MAC};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

#[test]
fn net_scenario_arp_ping_and_udp_both_ways() {
    let ns = NetNs::new();
    ns.enter();
    let host = UdpSocket::bind((ns.host_ip, HOST_PORT)).unwrap();
    host.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let t = boot(&ns, |n| n);
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

#[test]
fn a_thousand_datagrams_each_way_and_none_lost() {
    let ns = NetNs::new();
    let (t, host) = boot_echo(&ns, |n| n);
    let guest = echo_addr(&ns);
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
    let t = boot(&ns, |n| n);
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
