//! Token-bucket rate limiting, with time passed in so the logic is testable.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Bucket parameters: `burst` tokens, refilled at `per_minute` tokens per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained rate.
    pub per_minute: u32,
    /// Bucket size.
    pub burst: u32,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens, in thousandths, so refills of less than a token are kept.
    milli_tokens: u64,
    updated_ms: u64,
}

/// Most keys tracked before idle, full buckets are dropped.
const MAX_KEYS: usize = 100_000;

/// Per-key token buckets.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    /// A limiter with `rate` for every key.
    pub fn new(rate: Rate) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.rate.burst) * 1000
    }

    fn refill(&self, b: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(b.updated_ms);
        // per_minute tokens per 60_000 ms = per_minute milli-tokens per 60 ms.
        let gained = elapsed.saturating_mul(u64::from(self.rate.per_minute)) / 60;
        b.milli_tokens = (b.milli_tokens.saturating_add(gained)).min(self.capacity());
        b.updated_ms = now_ms;
    }

    /// Takes one token for `key`, or says how many milliseconds until one is available.
    pub fn check(&self, key: K, now_ms: u64) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            let cap = self.capacity();
            let rate = self.rate;
            buckets.retain(|_, b| {
                let elapsed = now_ms.saturating_sub(b.updated_ms);
                b.milli_tokens.saturating_add(elapsed.saturating_mul(u64::from(rate.per_minute)) / 60) < cap
            });
        }
        let capacity = self.capacity();
        let bucket = buckets.entry(key).or_insert(Bucket { milli_tokens: capacity, updated_ms: now_ms });
        self.refill(bucket, now_ms);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            return Ok(());
        }
        let missing = 1000 - bucket.milli_tokens;
        let per_minute = u64::from(self.rate.per_minute.max(1));
        Err((missing * 60).div_ceil(per_minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(Rate { per_minute: 60, burst: 3 });
        for _ in 0..3 {
            assert!(limiter.check(1u8, 0).is_ok());
        }
        let wait = limiter.check(1u8, 0).unwrap_err();
        assert_eq!(wait, 1000, "one token per second");
        assert!(limiter.check(1u8, 500).is_err());
        assert!(limiter.check(1u8, 1000).is_ok());
        assert!(limiter.check(2u8, 0).is_ok(), "keys are independent");
        // A long idle period refills only up to the burst.
        for _ in 0..3 {
            assert!(limiter.check(1u8, 1_000_000).is_ok());
        }
        assert!(limiter.check(1u8, 1_000_000).is_err());
    }
}
