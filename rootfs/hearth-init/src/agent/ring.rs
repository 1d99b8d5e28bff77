//! The output a process writes while no client reads it: at most
//! [`RING_BYTES`], the oldest bytes dropped (and counted) first. Bytes
//! keep their stream (stdout or stderr) and their order. Pure.
//!
//! The bytes live in one byte ring, allocated once at its full size on
//! first use; which stream each stretch belongs to is a list of runs,
//! adjacent runs of one stream merged. A process alternating tiny writes
//! to both streams could make many runs, so their count is capped too
//! ([`MAX_RUNS`]): past it the oldest run is dropped like old bytes.

use std::collections::VecDeque;

/// Output kept per process while no client reads it.
pub const RING_BYTES: usize = 1 << 20;
/// Most stream runs kept (each costs a few bytes of bookkeeping).
pub const MAX_RUNS: usize = 16 << 10;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (everything, on a terminal).
    Stdout,
    /// Standard error.
    Stderr,
}

/// The kept output of one process.
#[derive(Debug)]
pub struct Ring {
    cap: usize,
    bytes: VecDeque<u8>,
    /// (stream, length) of consecutive stretches of `bytes`, oldest first.
    runs: VecDeque<(Stream, u32)>,
    /// Bytes dropped and not yet reported (OUTPUT_DROPPED).
    dropped: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self::with_capacity(RING_BYTES)
    }
}

impl Ring {
    /// A ring keeping at most `cap` bytes (allocated on first use).
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            cap,
            bytes: VecDeque::new(),
            runs: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes dropped since the last [`Ring::take_dropped`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Returns and clears the dropped count (it is being reported).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Appends `data` of `stream`, dropping the oldest bytes past the cap.
    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Only the newest `cap` bytes of `data` can stay.
        let skip = data.len().saturating_sub(self.cap);
        self.dropped += skip as u64;
        let data = data.get(skip..).unwrap_or_default();
        let excess = (self.bytes.len() + data.len()).saturating_sub(self.cap);
        self.drop_front(excess);
        if self.bytes.capacity() < self.cap {
            // Once, at the full size: no doubling past the cap.
            self.bytes.reserve_exact(self.cap - self.bytes.len());
        }
        self.bytes.extend(data);
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match self.runs.back_mut() {
            Some((s, n)) if *s == stream => *n = n.saturating_add(len),
            _ => {
                self.runs.push_back((stream, len));
                if self.runs.len() > MAX_RUNS {
                    let oldest = self.runs.front().map_or(0, |&(_, n)| n as usize);
                    self.drop_front(oldest);
                }
            }
        }
    }

    /// Removes up to `max` bytes from the front, all of one stream.
    pub fn pop(&mut self, max: usize) -> Option<(Stream, Vec<u8>)> {
        let (stream, run) = *self.runs.front()?;
        let n = (run as usize).min(max).min(self.bytes.len());
        let out: Vec<u8> = self.bytes.drain(..n).collect();
        self.consume_runs(n);
        Some((stream, out))
    }

    /// Drops `n` bytes from the front, counting them.
    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.bytes.len());
        if n == 0 {
            return;
        }
        self.bytes.drain(..n);
        self.dropped += n as u64;
        self.consume_runs(n);
    }

    /// Shortens the runs by `n` bytes from the front.
    fn consume_runs(&mut self, mut n: usize) {
        while n > 0 {
            let Some((_, run)) = self.runs.front_mut() else {
                return;
            };
            let len = *run as usize;
            if len > n {
                *run = u32::try_from(len - n).unwrap_or(0);
                return;
            }
            n -= len;
            self.runs.pop_front();
        }
        // A run may have been emptied exactly.
        while self.runs.front().is_some_and(|&(_, len)| len == 0) {
            self.runs.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(ring: &mut Ring, max: usize) -> Vec<(Stream, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(chunk) = ring.pop(max) {
            out.push(chunk);
        }
        out
    }

    #[test]
    fn keeps_order_and_streams() {
        let mut ring = Ring::with_capacity(100);
        ring.push(Stream::Stdout, b"ab");
        ring.push(Stream::Stdout, b"cd");
        ring.push(Stream::Stderr, b"E");
        ring.push(Stream::Stdout, b"ef");
        assert_eq!(ring.len(), 7);
        assert_eq!(
            drain(&mut ring, 3),
            [
                (Stream::Stdout, b"abc".to_vec()),
                (Stream::Stdout, b"d".to_vec()),
                (Stream::Stderr, b"E".to_vec()),
                (Stream::Stdout, b"ef".to_vec()),
            ]
        );
        assert!(ring.is_empty());
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn drops_the_oldest_and_counts() {
        let mut ring = Ring::with_capacity(10);
        ring.push(Stream::Stderr, b"0123");
        ring.push(Stream::Stdout, b"456789");
        ring.push(Stream::Stdout, b"abc");
        assert_eq!(ring.len(), 10);
        assert_eq!(ring.dropped(), 3);
        assert_eq!(
            drain(&mut ring, 100),
            [
                (Stream::Stderr, b"3".to_vec()),
                (Stream::Stdout, b"456789abc".to_vec()),
            ]
        );
        // One push larger than the ring keeps its newest bytes.
        ring.push(Stream::Stdout, b"xy");
        ring.push(Stream::Stderr, b"0123456789ABCDEF");
        assert_eq!(ring.take_dropped(), 3 + 2 + 6);
        assert_eq!(ring.dropped(), 0);
        assert_eq!(drain(&mut ring, 100), [(Stream::Stderr, b"6789ABCDEF".to_vec())]);
    }

    #[test]
    fn memory_stays_at_the_cap() {
        let mut ring = Ring::default();
        let chunk = vec![7u8; 65536];
        for i in 0..100 {
            let stream = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            ring.push(stream, &chunk);
        }
        assert_eq!(ring.len(), RING_BYTES);
        assert!(ring.bytes.capacity() < 2 * RING_BYTES);
        assert_eq!(ring.dropped(), 100 * 65536 - RING_BYTES as u64);
        let total: usize = drain(&mut ring, 65536).iter().map(|(_, b)| b.len()).sum();
        assert_eq!(total, RING_BYTES);
    }

    #[test]
    fn run_count_is_capped() {
        let mut ring = Ring::with_capacity(RING_BYTES);
        for i in 0..(MAX_RUNS + 10) {
            let stream = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            ring.push(stream, b"x");
        }
        assert_eq!(ring.runs.len(), MAX_RUNS);
        assert_eq!(ring.len(), MAX_RUNS);
        assert_eq!(ring.dropped(), 10);
        // The first kept byte is of the 11th run (index 10: stdout).
        assert_eq!(ring.pop(1), Some((Stream::Stdout, b"x".to_vec())));
    }
}
