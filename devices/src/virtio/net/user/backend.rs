//! [`UserNet`]: the user-mode [`NetBackend`]. Guest frames are handled as
//! they are written (ARP and TCP through smoltcp, one frame at a time;
//! DHCP, DNS, UDP and ICMP echo here); host sockets, timers and smoltcp's
//! output are served in a bounded turn (`pump`) when the device reads.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use vmm_sys_util::epoll::EpollEvent;

use super::config::{
    FlowEvent, FlowProtocol, FlowRecord, FlowRecorder, UserNetConfig, UserNetLimits, GATEWAY, GATEWAY_MAC,
    PREFIX_LEN,
};
use super::handle::{Counters, Shared, UserNetHandle};
use super::host::host_addrs;
use super::phy::Phy;
use super::pins::Pins;
use super::policy::{NetPolicy, PolicyError};
use super::poller::{self, Poller};
use super::resolver::Resolver;
use super::tcp::{FlowKey, TcpFlow};
use super::udp::UdpFlow;
use crate::virtio::net::backend::{GuestOffloads, NetBackend};
use crate::virtio::net::rxtx::VNET_HDR_LEN;

/// Most host readiness events read in one turn.
const EVENTS_PER_TURN: usize = 128;
/// The housekeeping tick while flows are open (timeouts, pins).
const TICK: Duration = Duration::from_secs(1);

/// Why a backend cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserNetError {
    /// The policy does not validate.
    #[error("network policy: {0}")]
    Policy(#[from] PolicyError),
    /// The limits do not validate.
    #[error("network limits: {0}")]
    Limits(String),
    /// An fd could not be made.
    #[error("user network backend: {0}")]
    Io(#[from] io::Error),
}

/// What a backend saves in a snapshot: its policy. Open flows are not
/// saved (a restored guest finds them reset, as after a cable pull).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserNetState {
    /// The policy in force.
    pub policy: NetPolicy,
}

/// Refusal records allowed in the current second.
#[derive(Debug)]
struct RecordBudget {
    second: Instant,
    used: u32,
}

/// The user-mode network backend: no TAP, no root, deny by default.
pub struct UserNet {
    pub(super) iface: Interface,
    pub(super) sockets: SocketSet<'static>,
    pub(super) phy: Phy,
    pub(super) poller: Poller,
    pub(super) shared: Arc<Shared>,
    pub(super) policy: NetPolicy,
    pub(super) limits: UserNetLimits,
    pub(super) mtu: u16,
    pub(super) host_addrs: Vec<Ipv4Addr>,
    pub(super) pins: Pins,
    pub(super) tcp: HashMap<FlowKey, TcpFlow>,
    pub(super) udp: HashMap<FlowKey, UdpFlow>,
    /// Flow id (poller token) to key, for both kinds.
    pub(super) ids: HashMap<u64, FlowKey>,
    pub(super) resolver: Resolver,
    pub(super) next_id: u64,
    /// The guest's MAC, learned from its frames.
    pub(super) guest_mac: Option<[u8; 6]>,
    recorder: FlowRecorder,
    budget: RecordBudget,
    epoch: Instant,
    events: Vec<EpollEvent>,
}

impl std::fmt::Debug for UserNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserNet")
            .field("tcp_flows", &self.tcp.len())
            .field("udp_flows", &self.udp.len())
            .field("to_guest", &self.phy.to_guest.len())
            .finish()
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // Not a secret: smoltcp's sequence numbers and DNS ids only.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(b)
}

impl UserNet {
    /// A backend for one VM, and a handle on it.
    pub fn new(config: UserNetConfig) -> Result<(Self, UserNetHandle), UserNetError> {
        config.policy.validate()?;
        config.limits.validate().map_err(UserNetError::Limits)?;
        let poller = Poller::new()?;
        let shared = Arc::new(Shared::new(config.policy.clone(), poller.waker()?));
        let mut phy = Phy::new(config.mtu, config.limits.max_rx_frames);
        let seed = random_u64();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        iface_config.random_seed = seed;
        let epoch = Instant::now();
        let mut iface = Interface::new(iface_config, &mut phy, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY), PREFIX_LEN));
        });
        // Every address the guest asks for is answered here (AnyIP over a
        // default route through ourselves); the policy decides the rest.
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        iface.set_any_ip(true);
        let upstream = config.dns_upstream.or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| super::config::parse_resolv_conf(&t))
        });
        let mut pins = Pins::new(config.limits.max_dns_pins);
        pins.set_static(&config.policy.hosts);
        let resolver = Resolver::new(upstream, config.limits.max_dns_pending, seed as u16);
        if let Some(sock) = &resolver.sock {
            use std::os::fd::AsRawFd;
            poller.ctl(
                vmm_sys_util::epoll::ControlOperation::Add,
                sock.as_raw_fd(),
                vmm_sys_util::epoll::EventSet::IN,
                poller::DNS,
            )?;
        }
        let net = Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            phy,
            poller,
            shared: shared.clone(),
            policy: config.policy,
            limits: config.limits,
            mtu: config.mtu,
            host_addrs: host_addrs(),
            pins,
            tcp: HashMap::new(),
            udp: HashMap::new(),
            ids: HashMap::new(),
            resolver,
            next_id: poller::FIRST_FLOW,
            guest_mac: None,
            recorder: config.recorder,
            budget: RecordBudget {
                second: epoch,
                used: 0,
            },
            epoch,
            events: vec![EpollEvent::default(); EVENTS_PER_TURN],
        };
        Ok((net, UserNetHandle(shared)))
    }

    /// A handle on this backend.
    pub fn handle(&self) -> UserNetHandle {
        UserNetHandle(self.shared.clone())
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub(super) fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    pub(super) fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Delivers a record; refusals past the per-second budget are only
    /// counted.
    pub(super) fn record(&mut self, r: FlowRecord, now: Instant) {
        if r.event == FlowEvent::Refused {
            if now.saturating_duration_since(self.budget.second) >= Duration::from_secs(1) {
                self.budget = RecordBudget { second: now, used: 0 };
            }
            if self.budget.used >= self.limits.refusal_records_per_sec {
                Counters::add(&self.counters().records_suppressed, 1);
                return;
            }
            self.budget.used += 1;
        }
        (self.recorder)(&r);
    }

    /// Records a refusal and counts it.
    pub(super) fn refuse(
        &mut self,
        proto: FlowProtocol,
        dst: std::net::SocketAddrV4,
        name: Option<String>,
        reason: String,
        now: Instant,
    ) {
        Counters::add(&self.counters().flows_refused, 1);
        let mut r = FlowRecord::new(FlowEvent::Refused, proto, *dst.ip(), dst.port());
        r.name = name;
        r.reason = Some(reason);
        self.record(r, now);
    }

    /// Handles one guest frame (Ethernet, no virtio-net header).
    fn on_guest_frame(&mut self, eth: &[u8], now: Instant) {
        use super::frame::{classify, GuestFrame};
        let parsed = match classify(eth) {
            Ok(p) => p,
            Err(_) => {
                Counters::add(&self.counters().frames_dropped, 1);
                return;
            }
        };
        if parsed.src_mac[0] & 1 == 0 {
            self.guest_mac = Some(parsed.src_mac);
        }
        match parsed.kind {
            // Only the gateway exists on this wire.
            GuestFrame::Arp { target } if target == GATEWAY => self.ingest(eth, now),
            GuestFrame::Udp { src, dst, payload } => self.on_udp(src, dst, payload, now),
            GuestFrame::Tcp { src, dst, syn } => self.on_tcp(eth, src, dst, syn, now),
            GuestFrame::Echo { src, dst, icmp } if dst == GATEWAY => self.on_echo(src, icmp),
            _ => Counters::add(&self.counters().frames_dropped, 1),
        }
    }

    /// Gives one frame to smoltcp.
    pub(super) fn ingest(&mut self, eth: &[u8], now: Instant) {
        self.phy.ingress = Some(eth.to_vec());
        let t = self.smol_now(now);
        let _ = self
            .iface
            .poll_ingress_single(t, &mut self.phy, &mut self.sockets);
        self.phy.ingress = None;
    }

    /// One bounded turn: the policy, host sockets, smoltcp's output,
    /// timeouts, and the timer.
    fn pump(&mut self) {
        let now = Instant::now();
        self.poller.clear();
        if let Some(policy) = self.shared.take_pending() {
            self.apply_policy(policy, now);
        }
        let n = self.poller.ready(&mut self.events);
        let mut dns_ready = false;
        for i in 0..n {
            let ev = self.events[i];
            match ev.data() {
                poller::WAKE | poller::TIMER => {}
                poller::DNS => dns_ready = true,
                id => self.on_host_ready(id, ev.event_set()),
            }
        }
        if dns_ready {
            self.dns_receive(now);
        }
        self.udp_turn(now);
        self.tcp_turn(now);
        let t = self.smol_now(now);
        self.iface.poll_egress(t, &mut self.phy, &mut self.sockets);
        self.tcp_reap(now);
        self.expire(now);
        self.arm_timer(now);
        if !self.phy.to_guest.is_empty() {
            self.poller.wake();
        }
    }

    fn arm_timer(&mut self, now: Instant) {
        let t = self.smol_now(now);
        let mut next = self
            .iface
            .poll_delay(t, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()).max(Duration::from_millis(1)));
        if !self.tcp.is_empty() || !self.udp.is_empty() || self.resolver.pending() > 0 {
            next = Some(next.map_or(TICK, |d| d.min(TICK)));
        }
        // A full queue to the guest is drained by the device's reads,
        // which pump again: no timer needed to retry.
        match next {
            Some(d) if self.phy.has_room() => self.poller.arm(d),
            _ => self.poller.disarm(),
        }
    }

    /// Closes flows past their deadlines and drops stale pins.
    fn expire(&mut self, now: Instant) {
        self.pins.expire(now);
        for p in self.resolver.expired(now) {
            self.dns_reply(&p.query, p.guest, super::dns::RCODE_SERVFAIL, &[], 0);
            Counters::add(&self.counters().dns_refused, 1);
        }
        self.tcp_expire(now);
        self.udp_expire(now);
    }

    /// Replaces the policy now, closing flows it does not allow.
    pub(super) fn apply_policy(&mut self, policy: NetPolicy, now: Instant) {
        self.pins.set_static(&policy.hosts);
        self.policy = policy;
        self.tcp_recheck(now);
        self.udp_recheck(now);
    }
}

impl NetBackend for UserNet {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.phy.to_guest.is_empty() {
            self.pump();
        }
        let Some(frame) = self.phy.to_guest.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[IoSlice<'_>]) -> io::Result<()> {
        let now = Instant::now();
        let whole;
        let bytes: &[u8] = match frame {
            [one] => one,
            _ => {
                whole = frame.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>();
                &whole
            }
        };
        let Some(eth) = bytes.get(VNET_HDR_LEN..) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        self.on_guest_frame(eth, now);
        // smoltcp may have output, and flows new input: serve them.
        self.poller.wake();
        Ok(())
    }

    fn set_offload(&mut self, _offloads: GuestOffloads) -> io::Result<()> {
        // Frames to the guest are always whole, with full checksums.
        Ok(())
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.poller.fd())
    }

    fn save_state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(UserNetState {
            policy: self.shared_policy(),
        })
        .ok()
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> io::Result<()> {
        let s =
            UserNetState::deserialize(state).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        s.policy
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.shared.set(s.policy);
        Ok(())
    }
}

use serde::Deserialize as _;

impl UserNet {
    /// The policy in force or pending (what a snapshot must carry).
    fn shared_policy(&self) -> NetPolicy {
        self.handle().policy()
    }
}
