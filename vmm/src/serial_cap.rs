//! A bound on the guest's serial console output: what the VMM writes to a
//! host file or its standard output stops at the VM's limit
//! ([`ResourceLimits::serial_output_bytes`](crate::ResourceLimits)), so a
//! guest that prints forever cannot fill the host's disk or log. Past it
//! the output is counted and dropped, and one warning says so.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Default [`ResourceLimits::serial_output_bytes`](crate::ResourceLimits):
/// 64 MiB.
pub const DEFAULT_SERIAL_OUTPUT_LIMIT: u64 = 64 << 20;

/// The guest's serial output since the VM started (or was restored).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SerialCounters {
    /// Bytes the guest wrote.
    pub bytes: u64,
    /// Of which dropped past the VM's limit.
    pub dropped_bytes: u64,
}

/// The counters, shared between the sink (on a vCPU thread) and metrics.
#[derive(Debug, Default)]
pub(crate) struct SerialTally {
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl SerialTally {
    pub fn read(&self) -> SerialCounters {
        SerialCounters {
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_bytes: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Writes at most `limit` bytes of guest output to `inner`, then counts
/// and drops the rest.
pub(crate) struct CappedSink<W> {
    inner: W,
    limit: u64,
    tally: Arc<SerialTally>,
}

impl<W: Write> CappedSink<W> {
    /// `limit`: `u64::MAX` for sinks the embedder bounds itself.
    pub fn new(inner: W, limit: u64, tally: Arc<SerialTally>) -> Self {
        Self { inner, limit, tally }
    }
}

impl<W: Write> Write for CappedSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len() as u64;
        // Only this sink adds to `bytes`: no race between load and add.
        let before = self.tally.bytes.fetch_add(len, Ordering::Relaxed);
        let room = self.limit.saturating_sub(before).min(len);
        let kept = usize::try_from(room).unwrap_or(buf.len());
        let dropped = len - room;
        if dropped > 0 && self.tally.dropped.fetch_add(dropped, Ordering::Relaxed) == 0 {
            log::warn!(
                "the guest's serial output reached its limit of {} bytes: the rest is dropped \
                 (counted in the VM's metrics)",
                self.limit
            );
        }
        if let Some(head) = buf.get(..kept).filter(|h| !h.is_empty()) {
            self.inner.write_all(head)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_is_dropped_and_counted() {
        let tally = Arc::new(SerialTally::default());
        let mut sink = CappedSink::new(Vec::new(), 10, tally.clone());
        sink.write_all(b"12345678").unwrap();
        // Straddles the limit: the head is kept.
        assert_eq!(sink.write(b"abcd").unwrap(), 4);
        for _ in 0..1000 {
            sink.write_all(b"x").unwrap();
        }
        assert_eq!(sink.inner, b"12345678ab");
        assert_eq!(
            tally.read(),
            SerialCounters {
                bytes: 1012,
                dropped_bytes: 1002
            }
        );
    }

    #[test]
    fn an_unbounded_sink_only_counts() {
        let tally = Arc::new(SerialTally::default());
        let mut sink = CappedSink::new(Vec::new(), u64::MAX, tally.clone());
        sink.write_all(&[7u8; 4096]).unwrap();
        assert_eq!(sink.inner.len(), 4096);
        assert_eq!(tally.read().bytes, 4096);
        assert_eq!(tally.read().dropped_bytes, 0);
    }

    #[test]
    fn a_zero_limit_writes_nothing() {
        let tally = Arc::new(SerialTally::default());
        let mut sink = CappedSink::new(Vec::new(), 0, tally.clone());
        sink.write_all(b"hello").unwrap();
        assert!(sink.inner.is_empty());
        assert_eq!(tally.read().dropped_bytes, 5);
    }
}
