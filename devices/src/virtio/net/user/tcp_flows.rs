//! The backend's table of TCP flows: deciding a guest's SYN (refuse,
//! connect the host first, or accept and read the name), serving every
//! flow in a turn, timeouts, reaping, and re-deciding flows when the
//! policy changes.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpListenEndpoint};
use vmm_sys_util::epoll::EventSet;

use super::backend::UserNet;
use super::config::{
    FlowEvent, FlowProtocol, FlowRecord, UserNetLimits, GATEWAY, HOST_LOOPBACK, NETWORK, PREFIX_LEN,
};
use super::handle::Counters;
use super::policy::{Cidr, Decision};
use super::sniff::{sniff, Sniffed, MAX_SNIFF_BYTES};
use super::tcp::{connect, guest_closed, FlowKey, TcpFlow, TcpState};

/// The host-side address a guest destination stands for: the gateway
/// is the host's loopback.
pub(super) fn host_side(dst: SocketAddrV4) -> SocketAddrV4 {
    if *dst.ip() == GATEWAY {
        SocketAddrV4::new(HOST_LOOPBACK, dst.port())
    } else {
        dst
    }
}

/// The address the guest is told for a host-side address.
pub(super) fn guest_visible(ip: Ipv4Addr) -> Ipv4Addr {
    if ip == HOST_LOOPBACK {
        GATEWAY
    } else {
        ip
    }
}

/// Whether `ip` is on the guest's network (its frames must come from it).
pub(super) fn in_subnet(ip: Ipv4Addr) -> bool {
    Cidr::new(NETWORK, PREFIX_LEN).is_some_and(|c| c.contains(ip))
}

/// What a turn decided for a flow, done once the table is not borrowed.
enum After {
    /// Connected: make the guest socket and give it the stashed SYN.
    Accept(FlowKey, Vec<u8>),
    /// Failed before the guest socket existed: refuse its SYN (RST).
    RefuseSyn(FlowKey, Vec<u8>, String),
    /// A record.
    Record(FlowRecord),
}

impl UserNet {
    fn pinned(&self, ip: Ipv4Addr, now: Instant) -> Vec<String> {
        self.pins.names(ip, now).into_iter().map(String::from).collect()
    }

    fn decide(&self, target: SocketAddrV4, sniffable: bool, now: Instant) -> (Decision, Vec<String>) {
        let names = self.pinned(*target.ip(), now);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = self
            .policy
            .decide(*target.ip(), target.port(), &refs, sniffable, &self.host_addrs);
        (d, names)
    }

    fn flow_count(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    /// A guest TCP segment.
    pub(super) fn on_tcp(
        &mut self,
        eth: &[u8],
        src: SocketAddrV4,
        dst: SocketAddrV4,
        syn: bool,
        now: Instant,
    ) {
        if !in_subnet(*src.ip()) {
            Counters::add(&self.counters().frames_dropped, 1);
            return;
        }
        let key = (src, dst);
        if let Some(flow) = self.tcp.get(&key) {
            // While the host connect runs, the guest's SYN retransmits wait.
            if flow.handle.is_some() {
                self.ingest(eth, now);
            }
            return;
        }
        if !syn {
            // smoltcp answers a segment of no connection with an RST.
            self.ingest(eth, now);
            return;
        }
        let target = host_side(dst);
        let (decision, names) = self.decide(target, true, now);
        let refuse = |net: &mut Self, reason: String| {
            net.refuse(FlowProtocol::Tcp, target, names.first().cloned(), reason, now);
            net.ingest(eth, now);
        };
        let rule = match decision {
            Decision::Deny(reason) => return refuse(self, reason.to_string()),
            _ if self.flow_count() >= self.limits.max_flows => {
                return refuse(self, format!("flow limit ({})", self.limits.max_flows));
            }
            Decision::Allow(rule) => rule,
            Decision::Sniff => {
                let id = self.alloc_id();
                let deadline = now + UserNetLimits::secs(self.limits.sniff_timeout_secs);
                let mut flow = TcpFlow::new(id, key, target, TcpState::Sniffing, now, deadline);
                let Some(handle) = self.listen(dst) else {
                    return refuse(self, "cannot make a socket".into());
                };
                flow.handle = Some(handle);
                self.tcp.insert(key, flow);
                self.ids.insert(id, key);
                self.ingest(eth, now);
                return;
            }
        };
        if self.connecting() >= self.limits.max_pending_connects {
            return refuse(
                self,
                format!("pending connect limit ({})", self.limits.max_pending_connects),
            );
        }
        let stream = match connect(target) {
            Ok(s) => s,
            Err(e) => return refuse(self, format!("host connect: {e}")),
        };
        let id = self.alloc_id();
        let deadline = now + UserNetLimits::secs(self.limits.connect_timeout_secs);
        let mut flow = TcpFlow::new(id, key, target, TcpState::Connecting, now, deadline);
        flow.host = Some(stream);
        flow.syn = Some(eth.to_vec());
        flow.rule = Some(rule);
        flow.name = names.first().cloned();
        flow.update_interest(&self.poller, None, id);
        self.tcp.insert(key, flow);
        self.ids.insert(id, key);
    }

    fn connecting(&self) -> usize {
        self.tcp
            .values()
            .filter(|f| f.state == TcpState::Connecting)
            .count()
    }

    /// A guest-side socket listening on exactly `dst`, for one SYN.
    fn listen(&mut self, dst: SocketAddrV4) -> Option<SocketHandle> {
        let size = self.limits.tcp_buffer;
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; size]),
            tcp::SocketBuffer::new(vec![0; size]),
        );
        s.set_nagle_enabled(false);
        s.listen(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*dst.ip())),
            port: dst.port(),
        })
        .ok()?;
        Some(self.sockets.add(s))
    }

    /// A host socket is ready.
    pub(super) fn on_host_ready(&mut self, id: u64, events: EventSet) {
        let Some(key) = self.ids.get(&id) else {
            return;
        };
        if let Some(f) = self.tcp.get_mut(key) {
            f.on_ready(events);
        } else if let Some(f) = self.udp.get_mut(key) {
            f.readable = true;
        }
    }

    /// A record of `event` on `flow`: its target and name.
    fn record_of(flow: &TcpFlow, event: FlowEvent) -> FlowRecord {
        let mut r = FlowRecord::new(event, FlowProtocol::Tcp, *flow.target.ip(), flow.target.port());
        r.name = flow.name.clone();
        r
    }

    /// The opening of `flow`, with the rule that let it.
    fn opened_record(flow: &TcpFlow) -> FlowRecord {
        let mut r = Self::record_of(flow, FlowEvent::Opened);
        r.rule = flow.rule.clone();
        r
    }

    /// A refusal of `flow`, and why.
    fn refused_record(flow: &TcpFlow, why: String) -> FlowRecord {
        let mut r = Self::record_of(flow, FlowEvent::Refused);
        r.reason = Some(why);
        r
    }

    /// Serves every TCP flow once.
    pub(super) fn tcp_turn(&mut self, now: Instant) {
        let mut after = Vec::new();
        let max_pending = self.limits.max_pending_connects;
        let mut connecting = self.connecting();
        for flow in self.tcp.values_mut() {
            let sock = flow.handle.map(|h| self.sockets.get_mut::<tcp::Socket>(h));
            match (flow.state, sock) {
                (TcpState::Connecting, sock) => match flow.connect_result() {
                    None => {}
                    Some(Ok(())) => {
                        flow.state = TcpState::Open;
                        connecting = connecting.saturating_sub(1);
                        Counters::add(&self.shared.counters.flows_opened, 1);
                        after.push(After::Record(Self::opened_record(flow)));
                        if let Some(syn) = flow.syn.take() {
                            after.push(After::Accept(flow.key, syn));
                        }
                    }
                    Some(Err(e)) => {
                        let why = format!("host connect: {e}");
                        connecting = connecting.saturating_sub(1);
                        match (flow.syn.take(), sock) {
                            (Some(syn), _) => after.push(After::RefuseSyn(flow.key, syn, why)),
                            (None, Some(sock)) => {
                                flow.fail(sock, why.clone());
                                after.push(After::Record(Self::refused_record(flow, why)));
                            }
                            (None, None) => {}
                        }
                    }
                },
                (TcpState::Sniffing, Some(sock)) => {
                    let queued = sock.recv_queue();
                    let closed = guest_closed(sock);
                    if queued == 0 && !closed {
                        flow.update_interest(&self.poller, None, flow.id);
                        continue;
                    }
                    let mut buf = vec![0u8; queued.min(MAX_SNIFF_BYTES)];
                    let n = sock.peek_slice(&mut buf).unwrap_or(0);
                    let verdict = match sniff(&buf[..n]) {
                        Sniffed::NeedMore if !closed && queued < MAX_SNIFF_BYTES => continue,
                        Sniffed::Name(name) => {
                            let pinned = self.pins.names(*flow.target.ip(), now);
                            let d = self.policy.decide_name(&name, flow.target.port(), &pinned);
                            flow.name = Some(name);
                            d
                        }
                        _ => Decision::Deny(super::policy::DenyReason::NoName),
                    };
                    let refused = match verdict {
                        Decision::Allow(_) if connecting >= max_pending => {
                            Some(format!("pending connect limit ({max_pending})"))
                        }
                        Decision::Allow(rule) => match connect(flow.target) {
                            Ok(stream) => {
                                flow.host = Some(stream);
                                flow.rule = Some(rule);
                                flow.sniffed = true;
                                flow.state = TcpState::Connecting;
                                flow.deadline = now + UserNetLimits::secs(self.limits.connect_timeout_secs);
                                connecting += 1;
                                None
                            }
                            Err(e) => Some(format!("host connect: {e}")),
                        },
                        Decision::Deny(reason) => Some(reason.to_string()),
                        Decision::Sniff => Some("no name".into()),
                    };
                    if let Some(why) = refused {
                        flow.fail(sock, why.clone());
                        Counters::add(&self.shared.counters.flows_refused, 1);
                        after.push(After::Record(Self::refused_record(flow, why)));
                    }
                    flow.update_interest(&self.poller, None, flow.id);
                    continue;
                }
                (TcpState::Open, Some(sock)) => {
                    if flow.wants_step(sock) {
                        flow.step(sock, now);
                    }
                    flow.update_interest(&self.poller, Some(sock), flow.id);
                    continue;
                }
                _ => {}
            }
            let sock = flow.handle.map(|h| &*self.sockets.get_mut::<tcp::Socket>(h));
            flow.update_interest(&self.poller, sock, flow.id);
        }
        for a in after {
            match a {
                After::Accept(key, syn) => self.accept(key, &syn, now),
                After::RefuseSyn(key, syn, why) => {
                    if let Some(flow) = self.tcp.remove(&key) {
                        self.ids.remove(&flow.id);
                        self.refuse(FlowProtocol::Tcp, flow.target, flow.name, why, now);
                    }
                    self.ingest(&syn, now);
                }
                After::Record(r) => self.record(r, now),
            }
        }
    }

    /// The host accepted: the guest's SYN meets a listener made for it.
    fn accept(&mut self, key: FlowKey, syn: &[u8], now: Instant) {
        let Some(handle) = self.listen(key.1) else {
            return;
        };
        if let Some(flow) = self.tcp.get_mut(&key) {
            flow.handle = Some(handle);
        }
        self.ingest(syn, now);
        // A SYN smoltcp did not take leaves the listener listening: that
        // flow is over (and no other SYN may reach its listener).
        if self.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
        }
    }

    /// Removes finished flows, recording the ones that were open.
    pub(super) fn tcp_reap(&mut self, now: Instant) {
        let done: Vec<FlowKey> = self
            .tcp
            .iter()
            .filter(|(_, f)| {
                f.handle
                    .is_some_and(|h| TcpFlow::finished(self.sockets.get::<tcp::Socket>(h)))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            let Some(flow) = self.tcp.remove(&key) else {
                continue;
            };
            self.ids.remove(&flow.id);
            if let Some(h) = flow.handle {
                self.sockets.remove(h);
            }
            if flow.state == TcpState::Open {
                let mut r = Self::record_of(&flow, FlowEvent::Closed);
                r.rule = flow.rule;
                r.reason = flow.error;
                r.bytes_out = flow.bytes_out;
                r.bytes_in = flow.bytes_in;
                r.duration_ms = now.saturating_duration_since(flow.opened).as_millis() as u64;
                self.record(r, now);
            }
        }
        self.counters()
            .open_tcp
            .store(self.tcp.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends the flow under `key` for `why`: its SYN refused if the guest
    /// socket does not exist yet, else an RST.
    fn end_flow(&mut self, key: FlowKey, why: String, now: Instant) {
        let Some(flow) = self.tcp.get_mut(&key) else {
            return;
        };
        match (flow.syn.take(), flow.handle) {
            (Some(syn), _) => {
                if let Some(flow) = self.tcp.remove(&key) {
                    self.ids.remove(&flow.id);
                    self.refuse(FlowProtocol::Tcp, flow.target, flow.name, why, now);
                }
                self.ingest(&syn, now);
            }
            (None, Some(h)) => {
                let was_open = flow.state == TcpState::Open;
                flow.fail(self.sockets.get_mut::<tcp::Socket>(h), why.clone());
                if !was_open {
                    let (target, name) = (flow.target, flow.name.clone());
                    self.refuse(FlowProtocol::Tcp, target, name, why, now);
                }
            }
            (None, None) => {
                if let Some(flow) = self.tcp.remove(&key) {
                    self.ids.remove(&flow.id);
                }
            }
        }
    }

    /// Closes flows past their connect, sniff or idle deadlines.
    pub(super) fn tcp_expire(&mut self, now: Instant) {
        let idle = UserNetLimits::secs(self.limits.tcp_idle_secs);
        let late: Vec<(FlowKey, &'static str)> = self
            .tcp
            .iter()
            .filter(|(_, f)| f.error.is_none())
            .filter_map(|(k, f)| match f.state {
                TcpState::Connecting if f.deadline <= now => Some((*k, "host connect timed out")),
                TcpState::Sniffing if f.deadline <= now => Some((*k, "no TLS SNI or HTTP Host in time")),
                TcpState::Open if f.last_active + idle <= now => Some((*k, "idle")),
                _ => None,
            })
            .collect();
        for (key, why) in late {
            self.end_flow(key, why.into(), now);
        }
    }

    /// Re-decides every TCP flow under a new policy; closes the ones it
    /// no longer allows.
    pub(super) fn tcp_recheck(&mut self, now: Instant) {
        let mut closing = Vec::new();
        for (key, f) in &self.tcp {
            if f.error.is_some() {
                continue;
            }
            let names = self.pins.names(*f.target.ip(), now);
            let d = match &f.name {
                Some(n) if f.sniffed => self.policy.decide_name(n, f.target.port(), &names),
                _ => self
                    .policy
                    .decide(*f.target.ip(), f.target.port(), &names, true, &self.host_addrs),
            };
            let keep = match d {
                Decision::Allow(_) => true,
                Decision::Sniff => f.state == TcpState::Sniffing,
                Decision::Deny(_) => false,
            };
            if !keep {
                closing.push(*key);
            }
        }
        for key in closing {
            Counters::add(&self.counters().flows_closed_by_policy, 1);
            self.end_flow(key, "closed: the new policy does not allow it".into(), now);
        }
    }
}
