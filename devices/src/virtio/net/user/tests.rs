//! The backend with no VM: a simulated guest (smoltcp) exchanging frames
//! with it, and servers on the host's loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use smoltcp::socket::tcp;

use super::config::{FlowEvent, FlowProtocol, FlowRecord, UserNetConfig, UserNetLimits, GATEWAY, GUEST};
use super::dns::{self, RCODE_NOERROR, RCODE_NXDOMAIN};
use super::policy::NetPolicy;
use super::sim::{gateway, guest_addr, syn_frame, udp_frame, udp_to, SimGuest};
use super::{UserNet, UserNetHandle};
use crate::virtio::net::backend::NetBackend;

const T: Duration = Duration::from_secs(20);

type Records = Arc<Mutex<Vec<FlowRecord>>>;

fn backend(policy: NetPolicy, limits: UserNetLimits) -> (UserNet, UserNetHandle, Records) {
    let records: Records = Arc::default();
    let r = records.clone();
    let mut c = UserNetConfig::new(policy);
    c.limits = limits;
    c.dns_upstream = None;
    c.recorder = Arc::new(move |rec: &FlowRecord| r.lock().unwrap().push(rec.clone()));
    let (net, handle) = UserNet::new(c).unwrap();
    (net, handle, records)
}

fn policy(json: &str) -> NetPolicy {
    serde_json::from_str(json).unwrap()
}

fn records_of(r: &Records, event: FlowEvent) -> Vec<FlowRecord> {
    r.lock()
        .unwrap()
        .iter()
        .filter(|x| x.event == event)
        .cloned()
        .collect()
}

/// Data of `len` bytes that is not a repeating pattern.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 0x9e37_0000;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A loopback server that echoes one connection's bytes until EOF,
/// counting what it accepted.
fn echo_server() -> (u16, Arc<Mutex<usize>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(0));
    let a = accepted.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            *a.lock().unwrap() += 1;
            thread::spawn(move || {
                s.set_read_timeout(Some(T)).unwrap();
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// Sends `out` on `h` and reads back as much; returns what came back.
fn exchange(g: &mut SimGuest, net: &mut UserNet, h: smoltcp::iface::SocketHandle, out: &[u8]) -> Vec<u8> {
    let mut sent = 0;
    let mut back = Vec::new();
    let mut buf = vec![0u8; 65536];
    let ok = g.run_until(net, T, |g| {
        let s = g.tcp(h);
        if s.can_send() && sent < out.len() {
            sent += s.send_slice(&out[sent..]).unwrap_or(0);
        }
        while s.can_recv() {
            let n = s.recv_slice(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        back.len() >= out.len()
    });
    assert!(ok, "exchange stalled: sent {sent}, got {}", back.len());
    back
}

fn established(g: &mut SimGuest, net: &mut UserNet, h: smoltcp::iface::SocketHandle) -> bool {
    g.run_until(net, T, |g| g.tcp(h).state() == tcp::State::Established)
}

fn refused(g: &mut SimGuest, net: &mut UserNet, h: smoltcp::iface::SocketHandle) -> bool {
    g.run_until(net, T, |g| g.tcp(h).state() == tcp::State::Closed)
}

#[test]
fn deny_by_default_refuses_fast_and_records() {
    let (port, accepted) = echo_server();
    let (mut net, handle, records) = backend(NetPolicy::deny_all(), UserNetLimits::default());
    let mut g = SimGuest::new(1500);
    let start = Instant::now();
    let h = g.connect(gateway(port), 40000, 4096);
    assert!(refused(&mut g, &mut net, h));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        start.elapsed()
    );
    let r = records_of(&records, FlowEvent::Refused);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].protocol, r[0].dst, r[0].port),
        (FlowProtocol::Tcp, Ipv4Addr::LOCALHOST, port)
    );
    assert!(r[0].reason.as_deref().unwrap().contains("loopback"), "{r:?}");
    assert_eq!(*accepted.lock().unwrap(), 0);
    assert_eq!(handle.counters().flows_refused, 1);
}

#[test]
fn cidr_rule_carries_a_mebibyte_both_ways() {
    let (port, accepted) = echo_server();
    let (mut net, handle, records) = backend(
        policy(&format!(r#"{{"allow":["127.0.0.1:{port}"]}}"#)),
        UserNetLimits::default(),
    );
    let mut g = SimGuest::new(1500);
    let h = g.connect(gateway(port), 40001, 256 * 1024);
    assert!(established(&mut g, &mut net, h));
    let out = data(1 << 20, 1);
    let back = exchange(&mut g, &mut net, h, &out);
    assert_eq!(Sha256::digest(&back), Sha256::digest(&out));
    g.tcp(h).close();
    assert!(
        g.run_until(&mut net, T, |_| !records_of(&records, FlowEvent::Closed)
            .is_empty())
    );
    let closed = records_of(&records, FlowEvent::Closed);
    assert_eq!(closed[0].bytes_out, 1 << 20);
    assert_eq!(closed[0].bytes_in, 1 << 20);
    assert_eq!(
        closed[0].rule.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(records_of(&records, FlowEvent::Opened).len(), 1);
    assert_eq!(*accepted.lock().unwrap(), 1);
    assert!(g.run_until(&mut net, T, |_| handle.counters().open_tcp == 0));
}

/// Asks the backend's DNS for `name`; returns (rcode, addresses).
fn resolve(g: &mut SimGuest, net: &mut UserNet, name: &str, id: u16) -> (u8, Vec<Ipv4Addr>) {
    g.capture = true;
    g.seen.clear();
    let q = dns::build_query(id, name);
    g.inject(
        net,
        &udp_frame(guest_addr(5353), SocketAddrV4::new(GATEWAY, 53), &q),
    )
    .unwrap();
    let mut answer = None;
    assert!(g.run_until(net, T, |g| {
        answer = udp_to(&g.seen, 5353).pop();
        answer.is_some()
    }));
    g.capture = false;
    let (from, payload) = answer.unwrap();
    assert_eq!(from, SocketAddrV4::new(GATEWAY, 53));
    let a = dns::parse_answer(&payload).unwrap();
    assert_eq!(a.id, id);
    (a.rcode, a.addrs.into_iter().map(|(ip, _)| ip).collect())
}

#[test]
fn domain_rules_dns_and_name_checks() {
    let (port, accepted) = echo_server();
    let p = policy(&format!(
        r#"{{"allow":["svc.test:{port}"],"hosts":{{"svc.test":"127.0.0.1","other.test":"127.0.0.1"}}}}"#
    ));
    let (mut net, _handle, records) = backend(p, UserNetLimits::default());
    let mut g = SimGuest::new(1500);
    // The host map answers (the host's loopback is the gateway to the
    // guest); names no rule allows get NXDOMAIN.
    assert_eq!(
        resolve(&mut g, &mut net, "SVC.test", 1),
        (RCODE_NOERROR, vec![GATEWAY])
    );
    assert_eq!(
        resolve(&mut g, &mut net, "evil.example", 2),
        (RCODE_NXDOMAIN, vec![])
    );
    assert!(records_of(&records, FlowEvent::Refused)
        .iter()
        .any(|r| r.protocol == FlowProtocol::Dns && r.name.as_deref() == Some("evil.example")));

    // HTTP with the allowed Host goes through, byte for byte.
    let h = g.connect(gateway(port), 40010, 65536);
    assert!(established(&mut g, &mut net, h));
    let req = b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n";
    assert_eq!(exchange(&mut g, &mut net, h, req), req);
    // TLS with the allowed SNI too.
    let hello = super::sniff::tests::client_hello(Some("svc.test"), 300);
    let h = g.connect(gateway(port), 40011, 65536);
    assert!(established(&mut g, &mut net, h));
    assert_eq!(exchange(&mut g, &mut net, h, &hello), hello);
    assert_eq!(*accepted.lock().unwrap(), 2);

    // Another name pinned to the same address, but not allowed: refused
    // before any byte reaches the server.
    for (i, first) in [
        b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n".to_vec(),
        super::sniff::tests::client_hello(Some("other.test"), 0),
        b"\x00\x01binary".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let h = g.connect(gateway(port), 40020 + i as u16, 65536);
        assert!(established(&mut g, &mut net, h));
        g.tcp(h).send_slice(&first).unwrap();
        assert!(refused(&mut g, &mut net, h), "case {i}");
    }
    assert_eq!(*accepted.lock().unwrap(), 2, "nothing was forwarded");
    let refusals = records_of(&records, FlowEvent::Refused);
    assert!(
        refusals.iter().any(|r| r.name.as_deref() == Some("other.test")),
        "{refusals:?}"
    );
}

#[test]
fn upstream_answers_are_pinned_and_rebinding_withheld() {
    // A fake upstream resolver on the loopback.
    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = up.recv_from(&mut buf) {
            let Ok(q) = dns::parse_query(&buf[..n]) else {
                continue;
            };
            let ip = if q.normalized().starts_with("rebind") {
                Ipv4Addr::new(169, 254, 169, 254)
            } else {
                Ipv4Addr::new(203, 0, 113, 9)
            };
            let _ = up.send_to(&dns::build_answer(&q, RCODE_NOERROR, &[ip], 120), from);
        }
    });
    let records: Records = Arc::default();
    let r = records.clone();
    let mut c = UserNetConfig::new(policy(r#"{"allow":["*.example.test:443"]}"#));
    c.dns_upstream = Some(up_addr);
    c.recorder = Arc::new(move |rec: &FlowRecord| r.lock().unwrap().push(rec.clone()));
    let (mut net, _h) = UserNet::new(c).unwrap();
    let mut g = SimGuest::new(1500);
    let a = Ipv4Addr::new(203, 0, 113, 9);
    assert_eq!(
        resolve(&mut g, &mut net, "www.example.test", 7),
        (RCODE_NOERROR, vec![a])
    );
    assert_eq!(net.pins.names(a, Instant::now()), vec!["www.example.test"]);
    assert_eq!(
        resolve(&mut g, &mut net, "rebind.example.test", 8),
        (RCODE_NOERROR, vec![])
    );
    assert!(net
        .pins
        .names(Ipv4Addr::new(169, 254, 169, 254), Instant::now())
        .is_empty());
    assert_eq!(resolve(&mut g, &mut net, "example.test", 9).0, RCODE_NXDOMAIN);
}

#[test]
fn replacing_the_policy_closes_a_flow() {
    let (port, _) = echo_server();
    let (mut net, handle, records) = backend(
        policy(&format!(r#"{{"allow":["127.0.0.1:{port}"]}}"#)),
        UserNetLimits::default(),
    );
    let mut g = SimGuest::new(1500);
    let h = g.connect(gateway(port), 40030, 65536);
    assert!(established(&mut g, &mut net, h));
    assert_eq!(exchange(&mut g, &mut net, h, b"ping"), b"ping");
    handle.set_policy(NetPolicy::deny_all()).unwrap();
    assert!(refused(&mut g, &mut net, h), "the flow was reset");
    assert_eq!(handle.counters().flows_closed_by_policy, 1);
    let closed = records_of(&records, FlowEvent::Closed);
    assert_eq!(closed.len(), 1);
    assert!(
        closed[0].reason.as_deref().unwrap().contains("policy"),
        "{closed:?}"
    );
    assert_eq!(closed[0].bytes_out, 4);
    // And a new connection is refused.
    let h = g.connect(gateway(port), 40031, 4096);
    assert!(refused(&mut g, &mut net, h));
}

#[test]
fn metadata_and_host_addresses_are_refused() {
    // Even "everything on port 80" does not open closed ranges.
    let (mut net, _handle, records) =
        backend(policy(r#"{"allow":["0.0.0.0/0:80"]}"#), UserNetLimits::default());
    let mut g = SimGuest::new(1500);
    let mut targets = vec![
        (Ipv4Addr::new(169, 254, 169, 254), "cloud metadata"),
        (Ipv4Addr::new(10, 1, 1, 1), "private"),
    ];
    if let Some(ip) = super::host::host_addrs().first() {
        targets.push((*ip, "host's own"));
    }
    for (i, (ip, why)) in targets.iter().enumerate() {
        let h = g.connect(SocketAddrV4::new(*ip, 80), 40040 + i as u16, 4096);
        assert!(refused(&mut g, &mut net, h), "{ip}");
        let r = records_of(&records, FlowEvent::Refused);
        assert!(
            r.iter()
                .any(|r| r.dst == *ip && r.reason.as_deref().unwrap().contains(why)),
            "{r:?}"
        );
    }
}

#[test]
fn flood_limits_and_garbage_keep_memory_bounded() {
    let (port, _) = echo_server();
    let limits = UserNetLimits {
        max_flows: 8,
        max_pending_connects: 4,
        refusal_records_per_sec: 10,
        max_rx_frames: 64,
        ..UserNetLimits::default()
    };
    let start = Instant::now();
    let (mut net, handle, records) = backend(
        policy(&format!(
            r#"{{"allow":["127.0.0.1:{port}","svc.test"],"hosts":{{"svc.test":"127.0.0.1"}}}}"#
        )),
        limits,
    );
    let mut g = SimGuest::new(1500);
    // 2000 SYNs to an allowed server, 2000 to refused addresses, and
    // garbage, without the guest ever reading.
    for i in 0..2000u32 {
        let src = guest_addr(10_000 + (i % 50_000) as u16);
        g.inject(&mut net, &syn_frame(src, gateway(port), i)).unwrap();
        g.inject(
            &mut net,
            &syn_frame(src, SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80), i),
        )
        .unwrap();
        let junk = data(20 + (i as usize % 1500), i as u8);
        let _ = g.inject(&mut net, &junk);
        assert!(net.tcp.len() <= 8 && net.sockets.iter().count() <= 8);
        assert!(net.phy.to_guest.len() <= 64);
    }
    let c = handle.counters();
    assert!(c.flows_refused >= 3992, "{c:?}");
    assert!(c.records_suppressed > 0, "{c:?}");
    // 10 a second, in each second the flood lasted (a slow machine may
    // take more than one).
    let seconds = start.elapsed().as_secs() as usize + 1;
    assert!(
        records_of(&records, FlowEvent::Refused).len() <= 10 * seconds,
        "refusal records are bounded per second"
    );
    assert!(c.frames_dropped > 0);
    // Still answering: DNS works, and a second backend in the process
    // never noticed.
    let (mut other, _, _) = backend(
        policy(r#"{"hosts":{"a.test":"1.2.3.4"}}"#),
        UserNetLimits::default(),
    );
    let mut g2 = SimGuest::new(1500);
    assert_eq!(
        resolve(&mut g2, &mut other, "a.test", 3),
        (RCODE_NOERROR, vec![Ipv4Addr::new(1, 2, 3, 4)])
    );
    for _ in 0..50 {
        g.step(&mut net);
    }
    assert_eq!(
        resolve(&mut g, &mut net, "svc.test", 4),
        (RCODE_NOERROR, vec![GATEWAY])
    );
}

#[test]
fn ping_gateway_and_udp_echo() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = echo.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let (mut net, handle, records) = backend(
        policy(&format!(r#"{{"allow":["127.0.0.1:{uport}"]}}"#)),
        UserNetLimits::default(),
    );
    let mut g = SimGuest::new(1500);
    g.capture = true;
    // ICMP echo to the gateway.
    let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"hearth");
    let c = super::frame::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let f = super::frame::build_echo_reply(
        super::sim::SIM_MAC,
        super::config::GATEWAY_MAC,
        GUEST,
        GATEWAY,
        &icmp,
    );
    let mut req = f[crate::virtio::net::rxtx::VNET_HDR_LEN..].to_vec();
    let icmp_at = 14 + 20;
    req[icmp_at..].copy_from_slice(&icmp);
    g.inject(&mut net, &req).unwrap();
    assert!(g
        .run_until(&mut net, T, |g| g.seen.iter().any(|f| f.len() > icmp_at
            && f[icmp_at] == 0
            && f[icmp_at + 8..] == *b"hearth")));
    // UDP echo through an allowed host port; a refused one is recorded.
    g.inject(
        &mut net,
        &udp_frame(guest_addr(7000), gateway(uport), b"hello udp"),
    )
    .unwrap();
    assert!(g.run_until(&mut net, T, |g| udp_to(&g.seen, 7000)
        .iter()
        .any(|(from, p)| *from == gateway(uport) && p == b"hello udp")));
    g.inject(&mut net, &udp_frame(guest_addr(7001), gateway(uport + 1), b"no"))
        .unwrap();
    assert!(records_of(&records, FlowEvent::Refused)
        .iter()
        .any(|r| r.protocol == FlowProtocol::Udp && r.port == uport + 1));
    assert_eq!(handle.counters().open_udp, 1);
}

#[test]
fn dhcp_configures_a_smoltcp_client() {
    use smoltcp::socket::dhcpv4;
    let (mut net, _h, _) = backend(NetPolicy::deny_all(), UserNetLimits::default());
    let mut g = SimGuest::new(1500);
    let h = g.sockets.add(dhcpv4::Socket::new());
    let mut got = None;
    assert!(g.run_until(&mut net, T, |g| {
        if let Some(dhcpv4::Event::Configured(c)) = g.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            got = Some((c.address, c.router, c.dns_servers.to_vec()));
        }
        got.is_some()
    }));
    let (addr, router, dns) = got.unwrap();
    assert_eq!(addr.address(), GUEST);
    assert_eq!(addr.prefix_len(), 24);
    assert_eq!(router, Some(GATEWAY));
    assert_eq!(dns, vec![GATEWAY]);
}

#[test]
fn state_round_trip_carries_the_policy() {
    let p = policy(r#"{"allow":["10.9.0.0/16:22","*.example.com"],"hosts":{"svc.test":"127.0.0.1"}}"#);
    let (net, handle, _) = backend(p.clone(), UserNetLimits::default());
    let state = net.save_state().unwrap();
    let (mut fresh, fresh_handle, _) = backend(NetPolicy::deny_all(), UserNetLimits::default());
    fresh.restore_state(&state).unwrap();
    assert_eq!(fresh_handle.policy(), p);
    assert_eq!(handle.policy(), p);
    assert!(fresh
        .restore_state(&serde_json::json!({"policy": {"allow": ["bad rule!"]}}))
        .is_err());
    assert!(fresh.restore_state(&serde_json::json!({"nope": 1})).is_err());
}
