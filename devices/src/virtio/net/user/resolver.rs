//! The upstream side of the backend's DNS: allowed names are asked of
//! the host's resolver over one non-blocking UDP socket, never waited
//! for on the event loop; answers are matched to the guest's question by
//! id and name, and unanswered questions expire.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use super::dns::{build_query, parse_answer, Query, UpstreamAnswer};

/// How long a question waits for the upstream resolver.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// A guest's question waiting for an upstream answer.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) query: Query,
    pub(super) guest: SocketAddrV4,
    pub(super) deadline: Instant,
}

/// The upstream resolver's socket and the questions in flight.
#[derive(Debug)]
pub(super) struct Resolver {
    pub(super) sock: Option<UdpSocket>,
    pending: HashMap<u16, Pending>,
    next_id: u16,
    max: usize,
}

impl Resolver {
    /// A resolver asking `upstream` (none: every forward fails).
    pub(super) fn new(upstream: Option<SocketAddr>, max: usize, seed: u16) -> Self {
        let sock = upstream.and_then(|up| {
            let bind: SocketAddr = if up.is_ipv4() {
                "0.0.0.0:0".parse().ok()?
            } else {
                "[::]:0".parse().ok()?
            };
            let s = UdpSocket::bind(bind).ok()?;
            s.connect(up).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        });
        Self {
            sock,
            pending: HashMap::new(),
            next_id: seed,
            max,
        }
    }

    /// Questions in flight.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Asks upstream for `query`'s name; an error when there is no
    /// upstream, too many questions wait, or the send fails.
    pub(super) fn forward(&mut self, query: Query, guest: SocketAddrV4, now: Instant) -> io::Result<()> {
        let Some(sock) = &self.sock else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no upstream resolver",
            ));
        };
        if self.pending.len() >= self.max {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "too many DNS questions in flight",
            ));
        }
        // An id not in use (at most `max` are).
        let mut id = self.next_id;
        while self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_mul(25_173).wrapping_add(13_849);
        sock.send(&build_query(id, &query.normalized()))?;
        self.pending.insert(
            id,
            Pending {
                query,
                guest,
                deadline: now + UPSTREAM_TIMEOUT,
            },
        );
        Ok(())
    }

    /// Reads at most `budget` answers; returns each with its question.
    pub(super) fn receive(&mut self, budget: usize) -> Vec<(Pending, UpstreamAnswer)> {
        let mut out = Vec::new();
        let Some(sock) = &self.sock else {
            return out;
        };
        let mut buf = [0u8; 1500];
        for _ in 0..budget {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            let Ok(answer) = parse_answer(&buf[..n]) else {
                continue;
            };
            let matches = self
                .pending
                .get(&answer.id)
                .is_some_and(|p| p.query.normalized() == answer.name);
            if matches {
                if let Some(p) = self.pending.remove(&answer.id) {
                    out.push((p, answer));
                }
            }
        }
        out
    }

    /// Questions past their deadline, removed.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Pending> {
        let ids: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| self.pending.remove(id)).collect()
    }
}
