//! Rate limiters on a clock the input moves, so throttled paths (chains
//! handed back to the ring, held frames) are reached deterministically.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use hearth_devices::rate_limiter::{BucketConfig, Clock, RateLimit, RateLimiter};

/// A clock that moves only when told to.
#[derive(Clone, Debug)]
pub struct FakeClock(Arc<Mutex<Instant>>);

impl FakeClock {
    /// Starts now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += d;
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One bucket, small enough to run dry within an input.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct BucketSpec {
    size: u16,
    burst: u16,
    refill_ms: u8,
}

impl BucketSpec {
    fn config(self) -> BucketConfig {
        BucketConfig {
            size: u64::from(self.size).max(1),
            one_time_burst: u64::from(self.burst),
            refill_time_ms: u64::from(self.refill_ms).max(1),
        }
    }
}

/// Usually no limit; sometimes a bandwidth and/or ops bucket.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum LimitSpec {
    /// Unlimited.
    None,
    /// Limited.
    Some {
        /// Bytes.
        bandwidth: Option<BucketSpec>,
        /// Operations.
        ops: Option<BucketSpec>,
    },
}

impl LimitSpec {
    /// The limiter, on `clock`.
    pub fn limiter(self, clock: &FakeClock) -> RateLimiter {
        let config = match self {
            Self::None => RateLimit::default(),
            Self::Some { bandwidth, ops } => RateLimit {
                bandwidth: bandwidth.map(BucketSpec::config),
                ops: ops.map(BucketSpec::config),
            },
        };
        RateLimiter::with_clock(config, Box::new(clock.clone()))
    }
}
