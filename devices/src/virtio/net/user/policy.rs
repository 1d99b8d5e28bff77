//! The egress policy of the user-mode backend, pure: rules parsed from
//! text (`CIDR[:PORTS]` or `DOMAIN[:PORTS]`), the static host map, the
//! special ranges that only a rule naming them opens, and the decisions
//! made from them. No fds, no clock: the backend asks, this answers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most rules a policy holds.
pub const MAX_RULES: usize = 1024;
/// Most static host-map entries a policy holds.
pub const MAX_HOSTS: usize = 1024;
/// Longest domain name (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;

/// Why a policy or rule is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rule that is neither `CIDR[:PORTS]` nor `DOMAIN[:PORTS]`.
    #[error("invalid rule {rule:?}: {reason}")]
    BadRule {
        /// The text.
        rule: String,
        /// Why.
        reason: &'static str,
    },
    /// A host-map name that is not a domain name.
    #[error("invalid host name {0:?} in the host map")]
    BadHostName(String),
    /// Too many rules or hosts.
    #[error("too many {what}: at most {max}")]
    TooMany {
        /// Rules or hosts.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

/// An IPv4 network, `a.b.c.d/len` (a bare address is a /32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub len: u8,
}

impl Cidr {
    /// `addr/len`, with the host bits cleared; `None` for a length past 32.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 {
            return None;
        }
        let net = u32::from_be_bytes(addr.octets()) & Self::mask_of(len);
        Some(Self {
            addr: Ipv4Addr::from_bits(net),
            len,
        })
    }

    const fn mask_of(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        }
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.len) == u32::from(self.addr)
    }

    /// Whether all of `self` lies inside `other`.
    pub fn within(&self, other: &Cidr) -> bool {
        self.len >= other.len && other.contains(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u8>().map_err(|_| "bad prefix length")?),
            None => (s, 32),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| "not an IPv4 address")?;
        Cidr::new(ip, len).ok_or("prefix length past 32")
    }
}

/// Ports a rule opens: all, or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl Ports {
    /// Every port.
    pub const ALL: Ports = Ports { lo: 0, hi: u16::MAX };

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address range.
    Cidr(Cidr),
    /// A name, exact (`api.example.com`) or with a leading wildcard
    /// (`*.example.com`: any name ending in `.example.com`, not the bare
    /// `example.com`). Stored lower case, without the `*.`.
    Domain {
        /// The name (or suffix).
        name: String,
        /// Whether it was `*.name`.
        wildcard: bool,
    },
}

/// One allow rule: `CIDR[:PORTS]` or `DOMAIN[:PORTS]`, PORTS being `N`
/// or `N-M`. It opens TCP and UDP alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rule {
    /// What it matches.
    pub target: Target,
    /// Which ports.
    pub ports: Ports,
}

/// Whether `name` is a plausible DNS name: labels of letters, digits,
/// `-` and `_`, 1 to 63 bytes each, 253 bytes in all.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `name` lower case, without one trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn parse_ports(s: &str) -> Result<Ports, &'static str> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| "bad port");
    match s.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (port(lo)?, port(hi)?);
            if lo > hi {
                return Err("port range runs backwards");
            }
            Ok(Ports { lo, hi })
        }
        None => {
            let p = port(s)?;
            Ok(Ports { lo: p, hi: p })
        }
    }
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| PolicyError::BadRule {
            rule: s.to_owned(),
            reason,
        };
        let (target, ports) = match s.rsplit_once(':') {
            Some((t, p)) => (t, parse_ports(p).map_err(bad)?),
            None => (s, Ports::ALL),
        };
        if target.is_empty() {
            return Err(bad("empty target"));
        }
        let looks_numeric = target
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
        let target = if looks_numeric {
            Target::Cidr(target.parse().map_err(bad)?)
        } else {
            let lower = normalize_name(target);
            let (name, wildcard) = match lower.strip_prefix("*.") {
                Some(rest) => (rest.to_owned(), true),
                None => (lower, false),
            };
            if !valid_name(&name) {
                return Err(bad("not a domain name, an IPv4 address or a CIDR"));
            }
            Target::Domain { name, wildcard }
        };
        Ok(Rule { target, ports })
    }
}

impl TryFrom<String> for Rule {
    type Error = PolicyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Cidr(c) if c.len == 32 => write!(f, "{}", c.addr)?,
            Target::Cidr(c) => write!(f, "{c}")?,
            Target::Domain { name, wildcard } => {
                if *wildcard {
                    f.write_str("*.")?;
                }
                f.write_str(name)?;
            }
        }
        match self.ports {
            Ports::ALL => Ok(()),
            Ports { lo, hi } if lo == hi => write!(f, ":{lo}"),
            Ports { lo, hi } => write!(f, ":{lo}-{hi}"),
        }
    }
}

impl From<Rule> for String {
    fn from(r: Rule) -> Self {
        r.to_string()
    }
}

impl Rule {
    /// Whether a domain rule matches `name` (normalized) on any port.
    pub fn matches_name(&self, name: &str) -> bool {
        match &self.target {
            Target::Domain {
                name: n,
                wildcard: false,
            } => n == name,
            Target::Domain {
                name: n,
                wildcard: true,
            } => name
                .strip_suffix(n.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Target::Cidr(_) => false,
        }
    }
}

/// A range closed unless a rule names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Special {
    /// The range.
    pub range: Cidr,
    /// What it is, for records.
    pub what: &'static str,
}

const fn special(a: u8, b: u8, c: u8, d: u8, len: u8, what: &'static str) -> Special {
    let range = match Cidr::new(Ipv4Addr::new(a, b, c, d), len) {
        Some(r) => r,
        None => Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            len: 0,
        },
    };
    Special { range, what }
}

/// Ranges closed unless a rule names them: private, loopback,
/// link-local (cloud metadata at 169.254.169.254 included), shared,
/// multicast and reserved.
pub const SPECIAL_RANGES: &[Special] = &[
    special(0, 0, 0, 0, 8, "this-network"),
    special(10, 0, 0, 0, 8, "private"),
    special(100, 64, 0, 0, 10, "shared (CGNAT; Alibaba metadata)"),
    special(127, 0, 0, 0, 8, "loopback"),
    special(169, 254, 169, 254, 32, "cloud metadata"),
    special(169, 254, 0, 0, 16, "link-local"),
    special(172, 16, 0, 0, 12, "private"),
    special(192, 0, 0, 0, 24, "IETF protocol assignments"),
    special(192, 168, 0, 0, 16, "private"),
    special(198, 18, 0, 0, 15, "benchmarking"),
    special(224, 0, 0, 0, 4, "multicast"),
    special(240, 0, 0, 0, 4, "reserved/broadcast"),
];

/// The egress policy: deny everything, then allow what `allow` names.
/// `hosts` is a static host map the backend's DNS answers first.
///
/// ```json
/// {"allow": ["203.0.113.0/24:443", "*.example.com:443", "127.0.0.1:8080"],
///  "hosts": {"svc.test": "127.0.0.1"}}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetPolicy {
    /// Allow rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Rule>,
    /// Static names (lower case) and their addresses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, Ipv4Addr>,
}

/// What the policy says about a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule (its text).
    Allow(String),
    /// The address is pinned to names a domain rule allows on this port:
    /// the name must be read from the flow (TLS SNI or HTTP Host).
    Sniff,
    /// Refused.
    Deny(DenyReason),
}

/// Why a flow is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule allows it.
    NoRule,
    /// In a special range that no matching rule names.
    Blocked(&'static str),
    /// The host's own address, which no matching rule names.
    HostAddress,
    /// The name read from the flow is not allowed, or not pinned to the
    /// address.
    NameMismatch(String),
    /// No name could be read from the flow.
    NoName,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRule => f.write_str("no rule allows it"),
            DenyReason::Blocked(what) => write!(f, "{what} range, not named by a rule"),
            DenyReason::HostAddress => f.write_str("the host's own address, not named by a rule"),
            DenyReason::NameMismatch(n) => write!(f, "name {n:?} is not allowed for this address"),
            DenyReason::NoName => f.write_str("no TLS SNI or HTTP Host before the limit"),
        }
    }
}

impl NetPolicy {
    /// The policy that allows nothing.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Checks the policy: sizes and host names. Rules were checked when
    /// parsed.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.allow.len() > MAX_RULES {
            return Err(PolicyError::TooMany {
                what: "rules",
                max: MAX_RULES,
            });
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(PolicyError::TooMany {
                what: "hosts",
                max: MAX_HOSTS,
            });
        }
        for name in self.hosts.keys() {
            if !valid_name(name) || *name != normalize_name(name) {
                return Err(PolicyError::BadHostName(name.clone()));
            }
        }
        Ok(())
    }

    /// Whether some domain rule matches `name` on any port (DNS answers
    /// for it; others get NXDOMAIN).
    pub fn name_allowed(&self, name: &str) -> bool {
        self.allow.iter().any(|r| r.matches_name(name))
    }

    /// The first domain rule matching `name` on `port`.
    pub fn name_rule(&self, name: &str, port: u16) -> Option<&Rule> {
        self.allow
            .iter()
            .find(|r| r.ports.contains(port) && r.matches_name(name))
    }

    /// Whether `rule` names every closed range `ip` is in.
    fn names_all(cidr: &Cidr, ip: Ipv4Addr, host_addrs: &[Ipv4Addr]) -> bool {
        let specials_ok = SPECIAL_RANGES
            .iter()
            .filter(|s| s.range.contains(ip))
            .all(|s| cidr.within(&s.range));
        specials_ok && (!host_addrs.contains(&ip) || cidr.len == 32)
    }

    /// Why `ip` is closed when no rule names it, if it is.
    pub fn closed_range(ip: Ipv4Addr, host_addrs: &[Ipv4Addr]) -> Option<DenyReason> {
        if host_addrs.contains(&ip) {
            return Some(DenyReason::HostAddress);
        }
        SPECIAL_RANGES
            .iter()
            .find(|s| s.range.contains(ip))
            .map(|s| DenyReason::Blocked(s.what))
    }

    /// The first CIDR rule that allows `ip:port`, naming every closed
    /// range `ip` is in.
    pub fn cidr_rule(&self, ip: Ipv4Addr, port: u16, host_addrs: &[Ipv4Addr]) -> Option<&Rule> {
        self.allow.iter().find(|r| match &r.target {
            Target::Cidr(c) => r.ports.contains(port) && c.contains(ip) && Self::names_all(c, ip, host_addrs),
            Target::Domain { .. } => false,
        })
    }

    /// Decides a new flow to `ip:port` (the host-side address), given the
    /// names `ip` is pinned to. `sniffable` is true for TCP (whose name
    /// can be read from the first bytes); for UDP a pinned name a domain
    /// rule allows is enough.
    pub fn decide(
        &self,
        ip: Ipv4Addr,
        port: u16,
        pinned: &[&str],
        sniffable: bool,
        host_addrs: &[Ipv4Addr],
    ) -> Decision {
        if let Some(r) = self.cidr_rule(ip, port, host_addrs) {
            return Decision::Allow(r.to_string());
        }
        if let Some(r) = pinned.iter().find_map(|n| self.name_rule(n, port)) {
            return if sniffable {
                Decision::Sniff
            } else {
                Decision::Allow(r.to_string())
            };
        }
        Decision::Deny(Self::closed_range(ip, host_addrs).unwrap_or(DenyReason::NoRule))
    }

    /// Decides a sniffed flow: `name` (from SNI or Host) must be one of
    /// the names `ip` is pinned to, and a domain rule must allow it on
    /// `port`.
    pub fn decide_name(&self, name: &str, port: u16, pinned: &[&str]) -> Decision {
        let name = normalize_name(name);
        if pinned.iter().any(|p| *p == name) {
            if let Some(r) = self.name_rule(&name, port) {
                return Decision::Allow(format!("{r} (name {name})"));
            }
        }
        Decision::Deny(DenyReason::NameMismatch(name))
    }

    /// Whether an upstream DNS answer's address may be given to the
    /// guest and pinned: not in a closed range, unless a CIDR rule names
    /// it (defeats DNS rebinding to private and metadata addresses).
    pub fn answer_usable(&self, ip: Ipv4Addr, host_addrs: &[Ipv4Addr]) -> bool {
        Self::closed_range(ip, host_addrs).is_none()
            || self.allow.iter().any(|r| match &r.target {
                Target::Cidr(c) => c.contains(ip) && Self::names_all(c, ip, host_addrs),
                Target::Domain { .. } => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> NetPolicy {
        NetPolicy {
            allow: rules.iter().map(|r| r.parse().unwrap()).collect(),
            hosts: BTreeMap::new(),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_print() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8:443", "10.0.0.0/8:443"),
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:80-90", "1.2.3.4:80-90"),
            ("API.Example.com.:443", "api.example.com:443"),
            ("*.example.com", "*.example.com"),
        ] {
            let r: Rule = text.parse().unwrap();
            assert_eq!(r.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<Rule>().unwrap(), r);
        }
        for bad in [
            "",
            ":80",
            "1.2.3.4:",
            "1.2.3.4:70000",
            "1.2.3.4/33",
            "1.2.3.256",
            "a..b",
            "*.",
            "x:90-80",
            "exa mple.com",
            "*.*.com",
            "1.2.3.4:8o",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_json_round_trips_and_rejects_unknown_fields() {
        let json = r#"{"allow":["203.0.113.0/24:443","*.example.com:443"],"hosts":{"svc.test":"127.0.0.1"}}"#;
        let p: NetPolicy = serde_json::from_str(json).unwrap();
        p.validate().unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
        assert!(serde_json::from_str::<NetPolicy>(r#"{"allow":["nope nope"]}"#).is_err());
        assert!(serde_json::from_str::<NetPolicy>(r#"{"deny":[]}"#).is_err());
        let bad_host: NetPolicy = serde_json::from_str(r#"{"hosts":{"Bad Name":"1.2.3.4"}}"#).unwrap();
        assert!(bad_host.validate().is_err());
        assert_eq!(
            serde_json::from_str::<NetPolicy>("{}").unwrap(),
            NetPolicy::deny_all()
        );
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let r: Rule = "*.example.com".parse().unwrap();
        assert!(r.matches_name("a.example.com"));
        assert!(r.matches_name("a.b.example.com"));
        assert!(!r.matches_name("example.com"));
        assert!(!r.matches_name("badexample.com"));
        assert!(!r.matches_name("a.example.com.evil"));
        let exact: Rule = "example.com:443".parse().unwrap();
        assert!(exact.matches_name("example.com"));
        assert!(!exact.matches_name("a.example.com"));
    }

    #[test]
    fn deny_by_default() {
        let p = NetPolicy::deny_all();
        assert_eq!(
            p.decide(ip("93.184.216.34"), 80, &[], true, &[]),
            Decision::Deny(DenyReason::NoRule)
        );
        assert_eq!(
            p.decide(ip("169.254.169.254"), 80, &[], true, &[]),
            Decision::Deny(DenyReason::Blocked("cloud metadata"))
        );
        assert_eq!(
            p.decide(ip("127.0.0.1"), 80, &[], true, &[]),
            Decision::Deny(DenyReason::Blocked("loopback"))
        );
    }

    #[test]
    fn cidr_rules_and_ports() {
        let p = policy(&["93.184.216.0/24:80", "127.0.0.1:8080"]);
        assert!(matches!(
            p.decide(ip("93.184.216.34"), 80, &[], true, &[]),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.decide(ip("93.184.216.34"), 81, &[], true, &[]),
            Decision::Deny(_)
        ));
        assert!(matches!(
            p.decide(ip("127.0.0.1"), 8080, &[], true, &[]),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.decide(ip("127.0.0.2"), 8080, &[], true, &[]),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn special_ranges_need_a_rule_naming_them() {
        let host = [ip("203.0.113.7")];
        let p = policy(&["0.0.0.0/0"]);
        assert!(matches!(
            p.decide(ip("8.8.8.8"), 53, &[], true, &host),
            Decision::Allow(_)
        ));
        for closed in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "172.20.0.1",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
        ] {
            assert!(
                matches!(
                    p.decide(ip(closed), 80, &[], true, &host),
                    Decision::Deny(DenyReason::Blocked(_))
                ),
                "{closed}"
            );
        }
        assert_eq!(
            p.decide(ip("203.0.113.7"), 80, &[], true, &host),
            Decision::Deny(DenyReason::HostAddress)
        );
        // Link-local as a whole does not name the metadata address.
        let p = policy(&["169.254.0.0/16"]);
        assert!(matches!(
            p.decide(ip("169.254.1.1"), 80, &[], true, &[]),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.decide(ip("169.254.169.254"), 80, &[], true, &[]),
            Decision::Deny(_)
        ));
        let p = policy(&["169.254.169.254:80", "203.0.113.7/32"]);
        assert!(matches!(
            p.decide(ip("169.254.169.254"), 80, &[], true, &[]),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.decide(ip("203.0.113.7"), 22, &[], true, &host),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn domain_rules_sniff_tcp_and_allow_udp_on_pinned_addresses() {
        let p = policy(&["*.example.com:443"]);
        let a = ip("93.184.216.34");
        assert_eq!(p.decide(a, 443, &["www.example.com"], true, &[]), Decision::Sniff);
        assert!(matches!(
            p.decide(a, 443, &["www.example.com"], false, &[]),
            Decision::Allow(_)
        ));
        assert!(matches!(
            p.decide(a, 80, &["www.example.com"], true, &[]),
            Decision::Deny(_)
        ));
        assert!(matches!(
            p.decide(a, 443, &["other.org"], true, &[]),
            Decision::Deny(_)
        ));
        assert!(matches!(
            p.decide_name("WWW.example.com", 443, &["www.example.com"]),
            Decision::Allow(_)
        ));
        assert_eq!(
            p.decide_name("evil.org", 443, &["www.example.com"]),
            Decision::Deny(DenyReason::NameMismatch("evil.org".into()))
        );
        // Allowed by a rule, but not pinned to this address: refused.
        assert!(matches!(
            p.decide_name("api.example.com", 443, &["www.example.com"]),
            Decision::Deny(_)
        ));
        assert!(p.name_allowed("api.example.com"));
        assert!(!p.name_allowed("example.org"));
    }

    #[test]
    fn rebinding_answers_are_unusable_unless_named() {
        let p = policy(&["*.example.com"]);
        assert!(p.answer_usable(ip("93.184.216.34"), &[]));
        assert!(!p.answer_usable(ip("127.0.0.1"), &[]));
        assert!(!p.answer_usable(ip("169.254.169.254"), &[]));
        let p = policy(&["*.example.com", "10.0.0.0/8"]);
        assert!(p.answer_usable(ip("10.9.9.9"), &[]));
    }

    #[test]
    fn cidr_math() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.addr, ip("10.0.0.0"));
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        assert!(c.within(&all));
        assert!(!all.within(&c));
    }
}
