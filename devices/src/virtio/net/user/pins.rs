//! Addresses pinned to names: learned from allowed DNS answers (for the
//! answer's TTL) or from the static host map (for as long as the policy
//! holds it). A flow to a pinned address is checked against its names.
//! Bounded: at most `max` learned pins, and [`MAX_NAMES_PER_ADDR`] names
//! per address; a full table evicts the pin closest to expiry.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Most names one address is pinned to.
pub const MAX_NAMES_PER_ADDR: usize = 16;
/// The shortest pin: a guest that connects right after a TTL-0 answer
/// still gets through.
pub const MIN_PIN: Duration = Duration::from_secs(10);
/// The longest pin.
pub const MAX_PIN: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug)]
struct Pin {
    name: String,
    /// `None`: from the host map.
    expires: Option<Instant>,
}

/// The pin table.
#[derive(Debug)]
pub struct Pins {
    by_addr: HashMap<Ipv4Addr, Vec<Pin>>,
    learned: usize,
    max: usize,
}

impl Pins {
    /// A table holding at most `max` learned pins.
    pub fn new(max: usize) -> Self {
        Self {
            by_addr: HashMap::new(),
            learned: 0,
            max,
        }
    }

    /// Learned pins held.
    pub fn learned(&self) -> usize {
        self.learned
    }

    /// Replaces the host-map pins with `hosts` (name → host-side address).
    pub fn set_static(&mut self, hosts: &BTreeMap<String, Ipv4Addr>) {
        for pins in self.by_addr.values_mut() {
            pins.retain(|p| p.expires.is_some());
        }
        for (name, ip) in hosts {
            let pins = self.by_addr.entry(*ip).or_default();
            if pins.len() < MAX_NAMES_PER_ADDR {
                pins.push(Pin {
                    name: name.clone(),
                    expires: None,
                });
            }
        }
        self.by_addr.retain(|_, p| !p.is_empty());
    }

    /// Pins `ip` to `name` for `ttl` (clamped to [`MIN_PIN`]..[`MAX_PIN`]).
    pub fn pin(&mut self, ip: Ipv4Addr, name: &str, ttl: Duration, now: Instant) {
        let expires = now + ttl.clamp(MIN_PIN, MAX_PIN);
        if let Some(p) = self
            .by_addr
            .get_mut(&ip)
            .and_then(|pins| pins.iter_mut().find(|p| p.name == name))
        {
            if let Some(e) = &mut p.expires {
                *e = (*e).max(expires);
            }
            return;
        }
        if self.learned >= self.max {
            self.expire(now);
        }
        if self.learned >= self.max && !self.evict_one() {
            return;
        }
        let pins = self.by_addr.entry(ip).or_default();
        if pins.len() >= MAX_NAMES_PER_ADDR {
            // Drop this address's learned pin closest to expiry.
            let Some(i) = pins
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.expires.map(|e| (i, e)))
                .min_by_key(|&(_, e)| e)
                .map(|(i, _)| i)
            else {
                return;
            };
            pins.swap_remove(i);
            self.learned -= 1;
        }
        pins.push(Pin {
            name: name.to_owned(),
            expires: Some(expires),
        });
        self.learned += 1;
    }

    /// Removes the learned pin closest to expiry; false if there is none.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .by_addr
            .iter()
            .flat_map(|(ip, pins)| {
                pins.iter()
                    .enumerate()
                    .filter_map(move |(i, p)| p.expires.map(|e| (e, *ip, i)))
            })
            .min_by_key(|&(e, _, _)| e);
        let Some((_, ip, i)) = victim else {
            return false;
        };
        if let Some(pins) = self.by_addr.get_mut(&ip) {
            pins.swap_remove(i);
            if pins.is_empty() {
                self.by_addr.remove(&ip);
            }
        }
        self.learned -= 1;
        true
    }

    /// The names `ip` is pinned to now.
    pub fn names(&self, ip: Ipv4Addr, now: Instant) -> Vec<&str> {
        self.by_addr.get(&ip).map_or_else(Vec::new, |pins| {
            pins.iter()
                .filter(|p| p.expires.is_none_or(|e| e > now))
                .map(|p| p.name.as_str())
                .collect()
        })
    }

    /// Drops expired pins.
    pub fn expire(&mut self, now: Instant) {
        let mut dropped = 0;
        for pins in self.by_addr.values_mut() {
            let before = pins.len();
            pins.retain(|p| p.expires.is_none_or(|e| e > now));
            dropped += before - pins.len();
        }
        self.by_addr.retain(|_, p| !p.is_empty());
        self.learned -= dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(93, 184, 0, n)
    }

    #[test]
    fn pins_expire_with_their_ttl() {
        let t0 = Instant::now();
        let mut p = Pins::new(10);
        p.pin(ip(1), "a.example.com", Duration::from_secs(60), t0);
        assert_eq!(p.names(ip(1), t0), vec!["a.example.com"]);
        assert!(p.names(ip(2), t0).is_empty());
        assert_eq!(
            p.names(ip(1), t0 + Duration::from_secs(59)),
            vec!["a.example.com"]
        );
        assert!(p.names(ip(1), t0 + Duration::from_secs(61)).is_empty());
        // TTL 0 still pins for the minimum.
        p.pin(ip(2), "b.example.com", Duration::ZERO, t0);
        assert_eq!(p.names(ip(2), t0 + MIN_PIN / 2), vec!["b.example.com"]);
        p.expire(t0 + Duration::from_secs(120));
        assert_eq!(p.learned(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut p = Pins::new(4);
        for i in 0..100u8 {
            p.pin(
                ip(i),
                &format!("n{i}.example.com"),
                Duration::from_secs(100 + u64::from(i)),
                t0,
            );
            assert!(p.learned() <= 4);
        }
        // The ones closest to expiry went first.
        assert_eq!(p.names(ip(99), t0).len(), 1);
        assert!(p.names(ip(0), t0).is_empty());
        // Names per address are bounded too.
        let mut p = Pins::new(1000);
        for i in 0..100 {
            p.pin(ip(1), &format!("n{i}.example.com"), Duration::from_secs(60), t0);
        }
        assert_eq!(p.names(ip(1), t0).len(), MAX_NAMES_PER_ADDR);
        assert_eq!(p.learned(), MAX_NAMES_PER_ADDR);
    }

    #[test]
    fn static_pins_are_replaced_not_expired() {
        let t0 = Instant::now();
        let mut p = Pins::new(4);
        let mut hosts = BTreeMap::new();
        hosts.insert("svc.test".to_string(), Ipv4Addr::LOCALHOST);
        p.set_static(&hosts);
        p.pin(Ipv4Addr::LOCALHOST, "x.test", Duration::from_secs(30), t0);
        assert_eq!(
            p.names(Ipv4Addr::LOCALHOST, t0 + Duration::from_secs(3600)),
            vec!["svc.test"]
        );
        p.set_static(&BTreeMap::new());
        assert_eq!(p.names(Ipv4Addr::LOCALHOST, t0), vec!["x.test"]);
        assert_eq!(p.learned(), 1);
    }
}
