//! The user-mode network backend's frame path and its pure parsers, as a
//! hostile guest drives them: a sequence of guest frames (raw bytes, or
//! mostly valid ARP, DHCP, DNS, UDP, TCP SYN and ICMP frames with
//! arbitrary fields), reads of what the backend answers, and the parsers
//! (DNS, DHCP, TLS SNI and HTTP Host, rules) on the raw bytes.
//!
//! The policy opens only the host's loopback port 1 (by a domain rule
//! through the host map, so flows are sniffed and their connects refused
//! on this machine): nothing leaves it. Invariants: no panic; every frame
//! read starts with a virtio-net header and fits a packet; flows never
//! exceed the limit.

use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use hearth_devices::virtio::net::user::sim::{syn_frame, udp_frame};
use hearth_devices::virtio::net::user::{dhcp, dns, sniff, NetPolicy, UserNet, UserNetConfig, UserNetLimits};
use hearth_devices::virtio::net::{NetBackend, MAX_PACKET_LEN};

#[derive(Arbitrary, Debug)]
enum Op {
    Raw(Vec<u8>),
    Dns { name: String, raw: Option<Vec<u8>> },
    Dhcp(Vec<u8>),
    Udp { dst: u32, port: u16, payload: Vec<u8> },
    Syn { dst: u32, port: u16, sport: u16 },
    Read(u8),
}

const MAX_FLOWS: usize = 8;

fn backend() -> Option<UserNet> {
    let policy: NetPolicy = policy()
        .and_then(|p| p.validate().ok().map(|()| p))
        .unwrap_or_default();
    let mut c = UserNetConfig::new(policy);
    c.limits = UserNetLimits {
        max_flows: MAX_FLOWS,
        max_rx_frames: 64,
        ..UserNetLimits::default()
    };
    c.dns_upstream = None;
    c.recorder = Arc::new(|_| {});
    UserNet::new(c).ok().map(|(n, _)| n)
}

fn policy() -> Option<NetPolicy> {
    let mut p = NetPolicy::default();
    p.allow.push("a.test:1".parse().ok()?);
    p.hosts.insert("a.test".into(), Ipv4Addr::LOCALHOST);
    Some(p)
}

fn guest(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), port)
}

fn send(net: &mut UserNet, eth: &[u8]) {
    let hdr = [0u8; 12];
    let _ = net.write_frame(&[IoSlice::new(&hdr), IoSlice::new(eth)]);
}

pub fn user_net(data: &[u8]) {
    // The pure parsers see the raw input whole.
    let _ = dns::parse_query(data);
    let _ = dns::parse_answer(data);
    let _ = dhcp::parse(data);
    let _ = sniff::sniff(data);
    let _ = hearth_devices::virtio::net::user::frame::classify(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<hearth_devices::virtio::net::user::Rule>();
    }
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Some(mut net) = backend() else {
        return;
    };
    let handle = net.handle();
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    for op in ops.into_iter().take(256) {
        match op {
            Op::Raw(bytes) => send(&mut net, &bytes),
            Op::Dns { name, raw } => {
                let q = raw.unwrap_or_else(|| dns::build_query(7, &name));
                send(
                    &mut net,
                    &udp_frame(guest(5353), SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 53), &q),
                );
            }
            Op::Dhcp(bytes) => send(
                &mut net,
                &udp_frame(guest(68), SocketAddrV4::new(Ipv4Addr::BROADCAST, 67), &bytes),
            ),
            // Destinations stay on this machine: the gateway (the host's
            // loopback) or closed ranges the policy refuses.
            Op::Udp { dst, port, payload } => {
                let ip = if dst & 1 == 0 {
                    Ipv4Addr::new(10, 0, 2, 2)
                } else {
                    Ipv4Addr::from(dst | 0x7f00_0000)
                };
                send(
                    &mut net,
                    &udp_frame(guest(4000), SocketAddrV4::new(ip, port), &payload),
                );
            }
            Op::Syn { dst, port, sport } => {
                let ip = if dst & 1 == 0 {
                    Ipv4Addr::new(10, 0, 2, 2)
                } else {
                    Ipv4Addr::new(169, 254, 169, 254)
                };
                send(
                    &mut net,
                    &syn_frame(guest(sport), SocketAddrV4::new(ip, port), dst),
                );
            }
            Op::Read(n) => {
                for _ in 0..n {
                    let Ok(len) = net.read_frame(&mut buf) else { break };
                    assert!((12..=MAX_PACKET_LEN).contains(&len), "frame of {len} bytes");
                }
            }
        }
        let c = handle.counters();
        assert!(c.open_tcp + c.open_udp <= MAX_FLOWS as u64, "{c:?}");
    }
}
