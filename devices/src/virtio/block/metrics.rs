//! Counters of a block device, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, bumped by the device.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Read requests completed.
    pub reads: AtomicU64,
    /// Write requests completed.
    pub writes: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// Discard and write-zeroes requests completed.
    pub discards: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Requests that failed in the backend.
    pub io_errors: AtomicU64,
    /// Requests refused as malformed.
    pub invalid_requests: AtomicU64,
    /// Times the rate limiter held the queue back.
    pub throttled: AtomicU64,
    /// Time the rate limiter held the queue back, in microseconds.
    pub throttled_us: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct BlockCounters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub io_errors: u64,
    pub invalid_requests: u64,
    pub throttled: u64,
    #[serde(default)]
    pub throttled_us: u64,
}

impl BlockMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> BlockCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockCounters {
            reads: g(&self.reads),
            writes: g(&self.writes),
            flushes: g(&self.flushes),
            discards: g(&self.discards),
            read_bytes: g(&self.read_bytes),
            write_bytes: g(&self.write_bytes),
            io_errors: g(&self.io_errors),
            invalid_requests: g(&self.invalid_requests),
            throttled: g(&self.throttled),
            throttled_us: g(&self.throttled_us),
        }
    }
}
