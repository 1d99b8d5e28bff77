//! What the backend answers itself, and UDP: DHCP, DNS on the gateway
//! (host map, NXDOMAIN for names no rule allows, forwarding the rest),
//! ICMP echo to the gateway, and the table of proxied UDP flows.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, EventSet};

use super::backend::UserNet;
use super::config::{FlowEvent, FlowProtocol, FlowRecord, UserNetLimits, GATEWAY, GATEWAY_MAC, GUEST};
use super::dhcp::{self, Lease};
use super::dns::{self, Query, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_SERVFAIL, TYPE_A};
use super::frame::{build_echo_reply, build_udp, max_udp_payload, BROADCAST_MAC};
use super::handle::Counters;
use super::policy::{valid_name, Decision};
use super::tcp_flows::{guest_visible, host_side, in_subnet};
use super::udp::{UdpFlow, STEP_DATAGRAMS};

/// TTL of answers from the host map.
const HOSTS_TTL: u32 = 60;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;
/// Most answers read from the upstream resolver in one turn.
const DNS_PER_TURN: usize = 64;

impl UserNet {
    fn guest_mac_or_broadcast(&self) -> [u8; 6] {
        self.guest_mac.unwrap_or(BROADCAST_MAC)
    }

    /// Queues a UDP datagram for the guest (dropped when the queue is
    /// full or it does not fit the MTU).
    fn udp_to_guest(&mut self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> bool {
        if payload.len() > max_udp_payload(self.mtu) {
            Counters::add(&self.counters().frames_dropped, 1);
            return true;
        }
        let frame = build_udp(GATEWAY_MAC, self.guest_mac_or_broadcast(), from, to, payload);
        self.phy.push(frame)
    }

    /// A guest UDP datagram.
    pub(super) fn on_udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], now: Instant) {
        if dst.port() == DHCP_SERVER_PORT {
            return self.on_dhcp(payload);
        }
        if *dst.ip() == GATEWAY && dst.port() == DNS_PORT {
            return self.on_dns(src, payload, now);
        }
        if !in_subnet(*src.ip()) {
            Counters::add(&self.counters().frames_dropped, 1);
            return;
        }
        let key = (src, dst);
        if let Some(f) = self.udp.get_mut(&key) {
            f.send(payload, now);
            return;
        }
        let target = host_side(dst);
        let names: Vec<String> = self
            .pins
            .names(*target.ip(), now)
            .into_iter()
            .map(String::from)
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let rule = match self
            .policy
            .decide(*target.ip(), target.port(), &refs, false, &self.host_addrs)
        {
            Decision::Allow(rule) => rule,
            Decision::Deny(reason) => {
                return self.refuse(
                    FlowProtocol::Udp,
                    target,
                    names.first().cloned(),
                    reason.to_string(),
                    now,
                )
            }
            Decision::Sniff => return,
        };
        if self.tcp.len() + self.udp.len() >= self.limits.max_flows {
            let why = format!("flow limit ({})", self.limits.max_flows);
            return self.refuse(FlowProtocol::Udp, target, names.first().cloned(), why, now);
        }
        let id = self.alloc_id();
        let mut flow = match UdpFlow::open(id, target, rule, now) {
            Ok(f) => f,
            Err(e) => return self.refuse(FlowProtocol::Udp, target, None, format!("host socket: {e}"), now),
        };
        flow.name = names.first().cloned();
        if let Err(e) = self.poller.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&flow.sock),
            EventSet::IN,
            id,
        ) {
            return self.refuse(FlowProtocol::Udp, target, None, format!("poller: {e}"), now);
        }
        flow.send(payload, now);
        let mut r = FlowRecord::new(FlowEvent::Opened, FlowProtocol::Udp, *target.ip(), target.port());
        r.name = flow.name.clone();
        r.rule = Some(flow.rule.clone());
        Counters::add(&self.counters().flows_opened, 1);
        self.udp.insert(key, flow);
        self.ids.insert(id, key);
        self.counters()
            .open_udp
            .store(self.udp.len() as u64, Ordering::Relaxed);
        self.record(r, now);
    }

    /// Reads the ready UDP flows' host sockets, within a budget each.
    pub(super) fn udp_turn(&mut self, now: Instant) {
        let ready: Vec<_> = self
            .udp
            .iter()
            .filter(|(_, f)| f.readable)
            .map(|(k, _)| *k)
            .collect();
        let mut buf = vec![0u8; 65_536];
        for key in ready {
            for _ in 0..STEP_DATAGRAMS {
                if !self.phy.has_room() {
                    return;
                }
                let Some(f) = self.udp.get_mut(&key) else {
                    break;
                };
                let n = match f.sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        f.readable = false;
                        break;
                    }
                    // An ICMP error from the host side: nothing to read.
                    Err(_) => continue,
                };
                f.bytes_in += n as u64;
                f.last_active = now;
                let (from, to) = (key.1, key.0);
                self.udp_to_guest(from, to, &buf[..n]);
            }
        }
    }

    fn udp_close(&mut self, key: (SocketAddrV4, SocketAddrV4), why: &str, now: Instant) {
        let Some(f) = self.udp.remove(&key) else {
            return;
        };
        self.ids.remove(&f.id);
        let mut r = FlowRecord::new(
            FlowEvent::Closed,
            FlowProtocol::Udp,
            *f.target.ip(),
            f.target.port(),
        );
        r.name = f.name;
        r.rule = Some(f.rule);
        r.reason = Some(why.into());
        r.bytes_out = f.bytes_out;
        r.bytes_in = f.bytes_in;
        r.duration_ms = now.saturating_duration_since(f.opened).as_millis() as u64;
        self.counters()
            .open_udp
            .store(self.udp.len() as u64, Ordering::Relaxed);
        self.record(r, now);
    }

    /// Closes idle UDP flows.
    pub(super) fn udp_expire(&mut self, now: Instant) {
        let idle = UserNetLimits::secs(self.limits.udp_idle_secs);
        let late: Vec<_> = self
            .udp
            .iter()
            .filter(|(_, f)| f.last_active + idle <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.udp_close(key, "idle", now);
        }
    }

    /// Closes the UDP flows a new policy does not allow.
    pub(super) fn udp_recheck(&mut self, now: Instant) {
        let closing: Vec<_> = self
            .udp
            .iter()
            .filter(|(_, f)| {
                let names = self.pins.names(*f.target.ip(), now);
                !matches!(
                    self.policy
                        .decide(*f.target.ip(), f.target.port(), &names, false, &self.host_addrs),
                    Decision::Allow(_)
                )
            })
            .map(|(k, _)| *k)
            .collect();
        for key in closing {
            Counters::add(&self.counters().flows_closed_by_policy, 1);
            self.udp_close(key, "closed: the new policy does not allow it", now);
        }
    }

    /// ICMP echo to the gateway.
    pub(super) fn on_echo(&mut self, src: Ipv4Addr, icmp: &[u8]) {
        if icmp.len() > max_udp_payload(self.mtu) {
            return;
        }
        let frame = build_echo_reply(GATEWAY_MAC, self.guest_mac_or_broadcast(), GATEWAY, src, icmp);
        self.phy.push(frame);
    }

    /// A DHCP message: the one lease, broadcast back.
    fn on_dhcp(&mut self, payload: &[u8]) {
        let Ok(req) = dhcp::parse(payload) else {
            Counters::add(&self.counters().frames_dropped, 1);
            return;
        };
        let lease = Lease {
            guest: GUEST,
            gateway: GATEWAY,
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            lease_secs: 86_400,
            mtu: self.mtu,
        };
        let Some(kind) = dhcp::reply_type(&req, &lease) else {
            return;
        };
        let reply = dhcp::build_reply(&req, &lease, kind);
        let frame = build_udp(
            GATEWAY_MAC,
            BROADCAST_MAC,
            SocketAddrV4::new(GATEWAY, DHCP_SERVER_PORT),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
            &reply,
        );
        self.phy.push(frame);
    }

    /// Answers `q` from the gateway's port 53.
    pub(super) fn dns_reply(
        &mut self,
        q: &Query,
        guest: SocketAddrV4,
        rcode: u8,
        addrs: &[Ipv4Addr],
        ttl: u32,
    ) {
        let answer = dns::build_answer(q, rcode, addrs, ttl);
        self.udp_to_guest(SocketAddrV4::new(GATEWAY, DNS_PORT), guest, &answer);
    }

    fn dns_record(
        &mut self,
        event: FlowEvent,
        name: String,
        dst: Ipv4Addr,
        why: Option<String>,
        now: Instant,
    ) {
        let mut r = FlowRecord::new(event, FlowProtocol::Dns, dst, DNS_PORT);
        r.name = Some(name);
        r.reason = why;
        self.record(r, now);
    }

    /// A guest's DNS question.
    fn on_dns(&mut self, guest: SocketAddrV4, payload: &[u8], now: Instant) {
        let Ok(q) = dns::parse_query(payload) else {
            Counters::add(&self.counters().frames_dropped, 1);
            return;
        };
        let name = q.normalized();
        if let Some(ip) = self.policy.hosts.get(&name).copied() {
            let addrs = if q.qtype == TYPE_A {
                vec![guest_visible(ip)]
            } else {
                Vec::new()
            };
            self.dns_reply(&q, guest, RCODE_NOERROR, &addrs, HOSTS_TTL);
            Counters::add(&self.counters().dns_answered, 1);
            return self.dns_record(FlowEvent::Answered, name, ip, Some("host map".into()), now);
        }
        if !valid_name(&name) || !self.policy.name_allowed(&name) {
            self.dns_reply(&q, guest, RCODE_NXDOMAIN, &[], 0);
            Counters::add(&self.counters().dns_refused, 1);
            let why = Some("NXDOMAIN: no rule names it".into());
            return self.dns_record(FlowEvent::Refused, name, Ipv4Addr::UNSPECIFIED, why, now);
        }
        if q.qtype != TYPE_A {
            // IPv4 only: other types of allowed names have no data.
            self.dns_reply(&q, guest, RCODE_NOERROR, &[], HOSTS_TTL);
            return;
        }
        if let Err(e) = self.resolver.forward(q.clone(), guest, now) {
            self.dns_reply(&q, guest, RCODE_SERVFAIL, &[], 0);
            Counters::add(&self.counters().dns_refused, 1);
            self.dns_record(
                FlowEvent::Refused,
                name,
                Ipv4Addr::UNSPECIFIED,
                Some(format!("SERVFAIL: {e}")),
                now,
            );
        }
    }

    /// Answers from the upstream resolver: usable addresses are pinned
    /// to the name and given to the guest.
    pub(super) fn dns_receive(&mut self, now: Instant) {
        for (pending, answer) in self.resolver.receive(DNS_PER_TURN) {
            if answer.rcode != RCODE_NOERROR {
                self.dns_reply(&pending.query, pending.guest, answer.rcode, &[], 0);
                Counters::add(&self.counters().dns_refused, 1);
                continue;
            }
            let mut addrs = Vec::new();
            let mut ttl = u32::MAX;
            let mut dropped = 0;
            for (ip, t) in answer.addrs {
                if !self.policy.answer_usable(ip, &self.host_addrs) {
                    dropped += 1;
                    continue;
                }
                self.pins
                    .pin(ip, &answer.name, Duration::from_secs(u64::from(t)), now);
                addrs.push(guest_visible(ip));
                ttl = ttl.min(t);
            }
            let first = addrs.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED);
            self.dns_reply(
                &pending.query,
                pending.guest,
                RCODE_NOERROR,
                &addrs,
                ttl.min(3600),
            );
            Counters::add(&self.counters().dns_answered, 1);
            let why = (dropped > 0).then(|| format!("{dropped} address(es) in closed ranges withheld"));
            self.dns_record(FlowEvent::Answered, answer.name, first, why, now);
        }
    }
}
