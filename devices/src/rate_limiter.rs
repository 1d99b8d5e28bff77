//! Token-bucket rate limiting for device I/O: one bucket for bytes, one
//! for operations, each with an optional one-time burst.
//!
//! A bucket holds up to `size` tokens and refills linearly, `size` tokens
//! every `refill_time`. The one-time burst is an extra budget spent first
//! and never refilled. A request takes its tokens from both buckets or
//! waits: the device stops taking requests and retries after
//! [`RateLimiter::wait_time`].

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One bucket's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens per `refill_time_ms` (bytes, or operations), and the most
    /// the bucket holds.
    pub size: u64,
    /// Extra tokens available once, at the start.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds to refill from empty to full.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// `per_second` tokens per second.
    pub fn per_second(per_second: u64) -> Self {
        Self {
            size: per_second,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 || self.refill_time_ms == 0 {
            return Err("size and refill_time_ms must be positive".into());
        }
        Ok(())
    }
}

/// A limiter's settings: either bucket may be absent (unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BucketConfig>,
    /// Operations (requests or frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<BucketConfig>,
}

impl RateLimit {
    /// Whether neither bucket is set.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Checks both buckets.
    pub fn validate(&self) -> Result<(), String> {
        for (name, b) in [("bandwidth", self.bandwidth), ("ops", self.ops)] {
            if let Some(b) = b {
                b.validate().map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Where time comes from (tests use a fake one).
pub trait Clock: Send {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    config: BucketConfig,
    /// Budget in token-nanoseconds-per-refill units is avoided: tokens are
    /// kept as an integer, refill computed from elapsed time.
    tokens: u64,
    burst: u64,
    last: Instant,
}

impl Bucket {
    fn new(config: BucketConfig, now: Instant) -> Self {
        Self {
            config,
            tokens: config.size,
            burst: config.one_time_burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let period = u128::from(self.config.refill_time_ms) * 1_000_000;
        let add = elapsed * u128::from(self.config.size) / period;
        if add > 0 {
            self.tokens = (u128::from(self.tokens) + add).min(u128::from(self.config.size)) as u64;
            // Advance by the time the added tokens account for, so rounding
            // never loses refill.
            let used = add * period / u128::from(self.config.size);
            self.last += Duration::from_nanos(used.min(u128::from(u64::MAX)) as u64);
            if self.tokens == self.config.size {
                self.last = now;
            }
        }
    }

    /// Whether `n` tokens are available (from the burst, then the bucket).
    fn has(&self, n: u64) -> bool {
        // A request larger than the bucket passes once it is full, so that
        // it cannot wait forever.
        self.burst.saturating_add(self.tokens) >= n.min(self.config.size + self.burst)
    }

    fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        self.tokens = self.tokens.saturating_sub(n - from_burst);
    }

    /// Time until `n` tokens are there.
    fn wait_for(&self, n: u64) -> Duration {
        let need = n
            .min(self.config.size + self.burst)
            .saturating_sub(self.burst + self.tokens);
        let nanos = u128::from(need) * u128::from(self.config.refill_time_ms) * 1_000_000
            / u128::from(self.config.size);
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64 + 1)
    }
}

/// A rate limiter for one direction of one device.
pub struct RateLimiter {
    bandwidth: Option<Bucket>,
    ops: Option<Bucket>,
    clock: Box<dyn Clock>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("bandwidth", &self.bandwidth)
            .field("ops", &self.ops)
            .finish()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(RateLimit::default())
    }
}

impl RateLimiter {
    /// A limiter on the real clock.
    pub fn new(config: RateLimit) -> Self {
        Self::with_clock(config, Box::new(MonotonicClock))
    }

    /// A limiter on `clock`.
    pub fn with_clock(config: RateLimit, clock: Box<dyn Clock>) -> Self {
        let now = clock.now();
        Self {
            bandwidth: config.bandwidth.map(|c| Bucket::new(c, now)),
            ops: config.ops.map(|c| Bucket::new(c, now)),
            clock,
        }
    }

    /// Replaces the settings (buckets start full).
    pub fn update(&mut self, config: RateLimit) {
        let now = self.clock.now();
        self.bandwidth = config.bandwidth.map(|c| Bucket::new(c, now));
        self.ops = config.ops.map(|c| Bucket::new(c, now));
    }

    /// Whether the limiter limits anything.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Takes one operation of `bytes` bytes if both buckets allow it.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let now = self.clock.now();
        for b in [self.bandwidth.as_mut(), self.ops.as_mut()].into_iter().flatten() {
            b.refill(now);
        }
        let ok = self.bandwidth.as_ref().is_none_or(|b| b.has(bytes))
            && self.ops.as_ref().is_none_or(|b| b.has(1));
        if ok {
            if let Some(b) = self.bandwidth.as_mut() {
                b.take(bytes);
            }
            if let Some(b) = self.ops.as_mut() {
                b.take(1);
            }
        }
        ok
    }

    /// How long until an operation of `bytes` bytes would pass.
    pub fn wait_time(&self, bytes: u64) -> Duration {
        let bw = self
            .bandwidth
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(bytes));
        let ops = self.ops.as_ref().map_or(Duration::ZERO, |b| b.wait_for(1));
        bw.max(ops)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A clock the test moves by hand.
    #[derive(Clone)]
    pub struct FakeClock(pub Arc<Mutex<Instant>>);

    impl FakeClock {
        pub fn new() -> Self {
            Self(Arc::new(Mutex::new(Instant::now())))
        }
        pub fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn limiter(config: RateLimit) -> (RateLimiter, FakeClock) {
        let clock = FakeClock::new();
        (RateLimiter::with_clock(config, Box::new(clock.clone())), clock)
    }

    #[test]
    fn unlimited_always_passes() {
        let (mut l, _) = limiter(RateLimit::default());
        assert!((0..1000).all(|_| l.consume(1 << 20)));
        assert_eq!(l.wait_time(1 << 20), Duration::ZERO);
    }

    #[test]
    fn bandwidth_refills_linearly() {
        let (mut l, clock) = limiter(RateLimit {
            bandwidth: Some(BucketConfig::per_second(1000)),
            ops: None,
        });
        assert!(l.consume(600));
        assert!(l.consume(400));
        assert!(!l.consume(1), "the bucket is empty");
        assert_eq!(
            l.wait_time(100),
            Duration::from_millis(100) + Duration::from_nanos(1)
        );
        clock.advance(Duration::from_millis(99));
        assert!(!l.consume(100));
        clock.advance(Duration::from_millis(2));
        assert!(l.consume(100));
        // Refill never exceeds the bucket.
        clock.advance(Duration::from_secs(10));
        assert!(l.consume(1000));
        assert!(!l.consume(1));
    }

    #[test]
    fn ops_bucket_and_both_buckets() {
        let (mut l, clock) = limiter(RateLimit {
            bandwidth: Some(BucketConfig::per_second(1000)),
            ops: Some(BucketConfig::per_second(2)),
        });
        assert!(l.consume(100));
        assert!(l.consume(100));
        assert!(!l.consume(100), "third op in the same second");
        assert_eq!(
            l.wait_time(100),
            Duration::from_millis(500) + Duration::from_nanos(1)
        );
        clock.advance(Duration::from_millis(500));
        assert!(l.consume(100));
        // Plenty of ops later, the bytes bucket is what stops a request.
        clock.advance(Duration::from_secs(2));
        assert!(l.consume(900));
        assert!(!l.consume(200), "only 100 bytes left");
        assert!(l.wait_time(200) > Duration::from_millis(99));
        clock.advance(Duration::from_millis(100));
        assert!(l.consume(200));
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let (mut l, clock) = limiter(RateLimit {
            bandwidth: Some(BucketConfig {
                size: 100,
                one_time_burst: 1000,
                refill_time_ms: 1000,
            }),
            ops: None,
        });
        assert!(l.consume(1000));
        assert!(l.consume(100));
        assert!(!l.consume(1));
        clock.advance(Duration::from_secs(5));
        assert!(l.consume(100));
        assert!(!l.consume(1), "the burst did not come back");
    }

    #[test]
    fn oversized_request_passes_when_full() {
        let (mut l, clock) = limiter(RateLimit {
            bandwidth: Some(BucketConfig::per_second(100)),
            ops: None,
        });
        assert!(l.consume(1000), "a full bucket lets a large request through");
        assert!(!l.consume(1000));
        clock.advance(Duration::from_secs(1));
        assert!(l.consume(1000));
    }

    #[test]
    fn long_run_average_matches_the_rate() {
        let (mut l, clock) = limiter(RateLimit {
            bandwidth: Some(BucketConfig::per_second(1 << 20)),
            ops: None,
        });
        let start = clock.now();
        let mut bytes = 0u64;
        while clock.now().duration_since(start) < Duration::from_secs(20) {
            if l.consume(4096) {
                bytes += 4096;
            } else {
                clock.advance(l.wait_time(4096));
            }
        }
        // The bucket starts full (1 MiB), then refills at 1 MiB/s.
        let secs = clock.now().duration_since(start).as_secs_f64();
        let rate = (bytes - (1 << 20)) as f64 / secs;
        assert!((rate / f64::from(1 << 20) - 1.0).abs() < 0.01, "rate {rate}");
    }

    #[test]
    fn config_validation() {
        assert!(RateLimit::default().validate().is_ok());
        let bad = RateLimit {
            bandwidth: Some(BucketConfig {
                size: 0,
                one_time_burst: 0,
                refill_time_ms: 1,
            }),
            ops: None,
        };
        assert!(bad.validate().is_err());
    }
}
