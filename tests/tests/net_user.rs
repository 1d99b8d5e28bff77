//! The user-mode network backend under the test guest's own virtio-net
//! driver (no TAP, no root): ARP for the gateway, ping of the gateway, the
//! guest's UDP hello to a host loopback server the policy allows, echoes
//! both ways, a policy replaced at run time closing the flow, and the
//! policy carried through a snapshot.

// Integration tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use std::sync::mpsc::Receiver;

use hearth::{
    EventKind, EventSink, NetBackendKind, NetConfig, NetPolicy, RestoreOptions, SerialBuffer, SerialOutput,
    UserNetSpec, Vm, VmEvent,
};
use hearth::{FlowEvent, FlowProtocol, FlowRecord};
use hearth_tests::udp_echo::{GUEST_PORT, MAC};
use hearth_tests::{TestVm, GUEST_TIMEOUT};

const GUEST_IP: &str = "10.0.2.15";
const GATEWAY: &str = "10.0.2.2";

fn policy(allow: &[&str], hosts: &[(&str, [u8; 4])]) -> NetPolicy {
    NetPolicy {
        allow: allow.iter().map(|r| r.parse().unwrap()).collect(),
        hosts: hosts
            .iter()
            .map(|(n, ip)| (n.to_string(), (*ip).into()))
            .collect(),
    }
}

/// Boots the `net` scenario on a user-mode interface whose policy allows
/// the host's UDP port `port` (the guest sends to the gateway, which
/// stands for the host's loopback).
fn boot(port: u16) -> TestVm {
    boot_with(port, None)
}

/// [`boot`], with the VM's events going to `events`.
fn boot_with(port: u16, events: Option<EventSink>) -> TestVm {
    let spec = UserNetSpec::new(policy(&[&format!("127.0.0.1:{port}")], &[]));
    let b = TestVm::scenario("net")
        .arg(&format!(
            "tg.net.ip={GUEST_IP} tg.net.host={GATEWAY} tg.net.port={port} tg.net.listen={GUEST_PORT}"
        ))
        .net(NetConfig::user(spec).mac(MAC));
    let console = SerialBuffer::new();
    let mut config = b.config(&console);
    config.events = events;
    let vm = Vm::start(config).unwrap();
    TestVm { vm, console }
}

/// The flow records among the events received so far.
fn flows(rx: &Receiver<VmEvent>) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(500)) {
        if let EventKind::Flow { device, flow } = e.kind {
            assert_eq!(device, "net0");
            out.push(flow);
        }
    }
    out
}

#[test]
fn test_guest_net_scenario_on_the_user_backend() {
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(GUEST_TIMEOUT)).unwrap();
    let port = host.local_addr().unwrap().port();
    let (sink, events) = EventSink::channel(1024);
    let t = boot_with(port, Some(sink));
    t.expect(&format!("NET-READY mac={MAC} ip={GUEST_IP}\n"), GUEST_TIMEOUT);
    t.expect("NET-ARP-OK host_mac=52:55:0a:00:02:02\n", GUEST_TIMEOUT);
    t.expect("NET-PING-OK\n", GUEST_TIMEOUT);
    t.expect("NET-UDP-SENT\n", GUEST_TIMEOUT);

    // The hello arrives from the backend's socket for this flow.
    let mut buf = [0u8; 2048];
    let (n, flow) = host.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("HELLO-UDP {GUEST_IP}").as_bytes());
    assert!(flow.ip().is_loopback(), "{flow}");

    // Datagrams to the flow reach the guest's echo port and come back.
    for i in 0..20 {
        let msg = format!("echo-{i}");
        host.send_to(msg.as_bytes(), flow).unwrap();
        let (n, from) = host.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), flow));
    }
    let c = t.vm.user_net_counters(0).unwrap();
    assert_eq!((c.flows_opened, c.open_udp), (1, 1), "{c:?}");

    // A new policy without the rule closes the flow: nothing comes back.
    t.vm.set_net_policy(0, NetPolicy::deny_all()).unwrap();
    assert_eq!(t.vm.net_policy(0).unwrap(), NetPolicy::deny_all());
    // The backend applies it at its next turn (woken at once).
    let t0 = Instant::now();
    while t.vm.user_net_counters(0).unwrap().flows_closed_by_policy == 0 {
        assert!(t0.elapsed() < GUEST_TIMEOUT, "the new policy was not applied");
        std::thread::sleep(Duration::from_millis(10));
    }
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = host.send_to(b"after", flow);
    assert!(host.recv_from(&mut buf).is_err(), "the closed flow still echoes");
    let c = t.vm.user_net_counters(0).unwrap();
    assert_eq!((c.flows_closed_by_policy, c.open_udp), (1, 0), "{c:?}");
    assert!(t.lines_with("NET-ERROR").is_empty(), "{}", t.console.text());

    // Errors name the device: a TAP interface has no policy.
    assert!(t.vm.set_net_policy(1, NetPolicy::deny_all()).is_err());
    t.vm.stop();

    // Every decision went to the VM's event sink: the flow opened by the
    // rule, then closed by the new policy with its byte counts.
    let f = flows(&events);
    let udp: Vec<_> = f
        .iter()
        .filter(|r| r.protocol == FlowProtocol::Udp && r.port == port)
        .collect();
    assert_eq!(
        udp.iter().map(|r| r.event).collect::<Vec<_>>(),
        [FlowEvent::Opened, FlowEvent::Closed],
        "{f:?}"
    );
    assert!(udp[0].rule.is_some(), "{:?}", udp[0]);
    assert!(udp[1].bytes_out > 0 && udp[1].bytes_in > 0, "{:?}", udp[1]);
}

#[test]
fn the_policy_travels_in_a_snapshot() {
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let t = boot(port);
    t.expect("NET-UDP-SENT\n", GUEST_TIMEOUT);
    let replaced = policy(&["*.example.com:443"], &[("svc.test", [127, 0, 0, 1])]);
    t.vm.set_net_policy(0, replaced.clone()).unwrap();
    t.vm.pause().unwrap();
    let dir = std::env::temp_dir().join(format!("hearth-net-user-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    t.vm.snapshot(&dir).unwrap();
    t.vm.stop();
    drop(t);

    let console = SerialBuffer::new();
    let vm = Vm::restore(&dir, &RestoreOptions::new().serial(SerialOutput::Buffer(console))).unwrap();
    assert_eq!(vm.net_policy(0).unwrap(), replaced);
    // The snapshot's config records it too.
    let saved = hearth::Snapshot::open(&dir).unwrap();
    match &saved.config().nets[0].kind {
        NetBackendKind::User(spec) => assert_eq!(spec.policy, replaced),
        other => panic!("{other:?}"),
    }
    vm.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
