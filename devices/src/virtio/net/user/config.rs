//! What a user-mode backend is made from: the address plan, its limits,
//! the policy, where DNS goes upstream, and the record of every decision
//! it makes (delivered through a callback the owner supplies).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::NetPolicy;

/// The guest's network.
pub const NETWORK: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Its prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The gateway, DHCP and DNS server; flows to it reach the host's
/// loopback (127.0.0.1), if a rule names that.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The address DHCP gives the guest.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The gateway's MAC.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// The host address the gateway stands for.
pub const HOST_LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Bounds on what one guest can make its backend hold. Every one is a
/// hard limit: past it, new flows are refused (and recorded) or frames
/// dropped, never memory grown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserNetLimits {
    /// Open TCP and UDP flows (each TCP flow holds two buffers of
    /// `tcp_buffer` bytes).
    pub max_flows: usize,
    /// TCP flows whose host connect has not finished.
    pub max_pending_connects: usize,
    /// Bytes of each TCP flow's buffer, each way.
    pub tcp_buffer: usize,
    /// Addresses pinned to names from DNS answers.
    pub max_dns_pins: usize,
    /// DNS queries waiting for the upstream resolver.
    pub max_dns_pending: usize,
    /// Frames waiting for the guest to take them.
    pub max_rx_frames: usize,
    /// Seconds a TCP flow may sit idle before it is closed.
    pub tcp_idle_secs: u64,
    /// Seconds a UDP flow may sit idle before it is closed.
    pub udp_idle_secs: u64,
    /// Seconds a host connect may take.
    pub connect_timeout_secs: u64,
    /// Seconds a flow to a pinned address has to show its name (TLS SNI
    /// or HTTP Host).
    pub sniff_timeout_secs: u64,
    /// Refusal records delivered per second; the rest are counted.
    pub refusal_records_per_sec: u32,
}

impl Default for UserNetLimits {
    fn default() -> Self {
        Self {
            max_flows: 256,
            max_pending_connects: 64,
            tcp_buffer: 64 * 1024,
            max_dns_pins: 4096,
            max_dns_pending: 64,
            max_rx_frames: 512,
            tcp_idle_secs: 600,
            udp_idle_secs: 60,
            connect_timeout_secs: 10,
            sniff_timeout_secs: 10,
            refusal_records_per_sec: 100,
        }
    }
}

impl UserNetLimits {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_flows == 0 || self.max_flows > 65_536 {
            return Err("max_flows must be 1 to 65536".into());
        }
        if !(4096..=16 << 20).contains(&self.tcp_buffer) {
            return Err("tcp_buffer must be 4 KiB to 16 MiB".into());
        }
        if self.max_rx_frames < 16 || self.max_rx_frames > 65_536 {
            return Err("max_rx_frames must be 16 to 65536".into());
        }
        if self.max_dns_pins > 1 << 20 || self.max_dns_pending > 65_536 || self.max_pending_connects > 65_536
        {
            return Err("a DNS or connect limit is past 2^20".into());
        }
        Ok(())
    }

    pub(crate) fn secs(s: u64) -> Duration {
        Duration::from_secs(s.max(1))
    }
}

/// The protocol of a recorded flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowProtocol {
    /// A TCP connection.
    Tcp,
    /// A UDP flow (datagrams between one guest port and one address).
    Udp,
    /// A DNS question to the backend.
    Dns,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowEvent {
    /// Allowed, and opened.
    Opened,
    /// Refused (by the policy, a limit, or the host).
    Refused,
    /// An opened flow ended; bytes and duration are final.
    Closed,
    /// A DNS question was answered (`verdict` says how).
    Answered,
}

/// One decision of the backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// What happened.
    pub event: FlowEvent,
    /// TCP, UDP or DNS.
    pub protocol: FlowProtocol,
    /// The host-side destination (for DNS, the first address answered,
    /// or unspecified).
    pub dst: Ipv4Addr,
    /// The destination port.
    pub port: u16,
    /// The name: pinned, sniffed or asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The rule that allowed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused or closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes from the guest to the host.
    pub bytes_out: u64,
    /// Bytes from the host to the guest.
    pub bytes_in: u64,
    /// How long the flow was open, in milliseconds.
    pub duration_ms: u64,
}

impl FlowRecord {
    pub(crate) fn new(event: FlowEvent, protocol: FlowProtocol, dst: Ipv4Addr, port: u16) -> Self {
        Self {
            event,
            protocol,
            dst,
            port,
            name: None,
            rule: None,
            reason: None,
            bytes_out: 0,
            bytes_in: 0,
            duration_ms: 0,
        }
    }
}

impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            FlowProtocol::Tcp => "tcp",
            FlowProtocol::Udp => "udp",
            FlowProtocol::Dns => "dns",
        };
        let e = match self.event {
            FlowEvent::Opened => "opened",
            FlowEvent::Refused => "refused",
            FlowEvent::Closed => "closed",
            FlowEvent::Answered => "answered",
        };
        write!(f, "{p} {e} {}:{}", self.dst, self.port)?;
        if let Some(n) = &self.name {
            write!(f, " name={n}")?;
        }
        if let Some(r) = &self.rule {
            write!(f, " rule={r}")?;
        }
        if let Some(r) = &self.reason {
            write!(f, " reason={r:?}")?;
        }
        if self.event == FlowEvent::Closed {
            write!(
                f,
                " out={} in={} ms={}",
                self.bytes_out, self.bytes_in, self.duration_ms
            )?;
        }
        Ok(())
    }
}

/// Where records go: called on the event loop, so it must be quick (queue
/// the record, do not block).
pub type FlowRecorder = Arc<dyn Fn(&FlowRecord) + Send + Sync>;

/// Everything a [`UserNet`](super::UserNet) is made from.
#[derive(Clone)]
pub struct UserNetConfig {
    /// The policy in force at start.
    pub policy: NetPolicy,
    /// Bounds.
    pub limits: UserNetLimits,
    /// The resolver allowed names are asked; `None` reads the first
    /// `nameserver` of /etc/resolv.conf, once, at creation.
    pub dns_upstream: Option<SocketAddr>,
    /// The guest's MTU (frames to the guest fit it).
    pub mtu: u16,
    /// The decision record's sink.
    pub recorder: FlowRecorder,
}

impl fmt::Debug for UserNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserNetConfig")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("dns_upstream", &self.dns_upstream)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl UserNetConfig {
    /// A backend with `policy`, default limits, the host's resolver, MTU
    /// 1500, and records logged at info level.
    pub fn new(policy: NetPolicy) -> Self {
        Self {
            policy,
            limits: UserNetLimits::default(),
            dns_upstream: None,
            mtu: 1500,
            recorder: Arc::new(|r: &FlowRecord| log::info!("net flow: {r}")),
        }
    }
}

/// The first `nameserver` line of a resolv.conf, as a socket address on
/// port 53.
pub fn parse_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        match (w.next(), w.next()) {
            (Some("nameserver"), Some(ip)) => ip
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53)),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let t = "# c\nsearch x\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n";
        assert_eq!(parse_resolv_conf(t), Some("127.0.0.53:53".parse().unwrap()));
        assert_eq!(parse_resolv_conf("nameserver bogus\n"), None);
        assert_eq!(parse_resolv_conf(""), None);
    }

    #[test]
    fn limits_validate() {
        assert!(UserNetLimits::default().validate().is_ok());
        let bad = UserNetLimits {
            max_flows: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = UserNetLimits {
            tcp_buffer: 10,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let l: UserNetLimits = serde_json::from_str(r#"{"max_flows": 8}"#).unwrap();
        assert_eq!(l.max_flows, 8);
        assert_eq!(l.tcp_buffer, UserNetLimits::default().tcp_buffer);
    }

    #[test]
    fn records_print_and_serialize() {
        let mut r = FlowRecord::new(
            FlowEvent::Refused,
            FlowProtocol::Tcp,
            Ipv4Addr::new(169, 254, 169, 254),
            80,
        );
        r.reason = Some("cloud metadata".into());
        assert_eq!(
            r.to_string(),
            "tcp refused 169.254.169.254:80 reason=\"cloud metadata\""
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"event\":\"refused\""), "{json}");
        assert_eq!(serde_json::from_str::<FlowRecord>(&json).unwrap(), r);
    }
}
