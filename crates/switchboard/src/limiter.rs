//! A token bucket: `rate` per second sustained, `burst` at once; and one per client
//! address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

/// Token bucket rate limiter (uses tokio's clock, so tests can pause time).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(rate).max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// A full bucket of `amount` tokens that refills at `amount` per `period` (login
    /// attempts per minute, say). An `amount` of 0 means unlimited.
    pub fn per_period(amount: u32, period: std::time::Duration) -> Self {
        let secs = period.as_secs_f64().max(f64::MIN_POSITIVE);
        Self {
            rate: f64::from(amount) / secs,
            burst: f64::from(amount.max(1)),
            tokens: f64::from(amount.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token; false when none is left.
    pub fn try_take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Addresses tracked at most: past this, the table is cleared (a full bucket and a
/// forgotten one behave alike, so only a client mid-burst gains a fresh burst).
const MAX_ADDRESSES: usize = 65_536;

/// A token bucket per client address.
#[derive(Debug)]
pub struct PerIpRate {
    rate: u32,
    burst: u32,
    /// When set, `rate` tokens per this period instead of per second.
    period: Option<std::time::Duration>,
    /// Short sections only: one look-up and one take.
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl PerIpRate {
    /// `rate` per second per address, `burst` at once; a `rate` of 0 means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            period: None,
            buckets: Mutex::default(),
        }
    }

    /// `amount` per `period` per address, as many at once; 0 means unlimited.
    pub fn per_period(amount: u32, period: std::time::Duration) -> Self {
        Self {
            rate: amount,
            burst: amount,
            period: Some(period),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token of `ip`'s bucket; false when none is left.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&ip) {
            buckets.clear();
        }
        buckets
            .entry(ip)
            .or_insert_with(|| match self.period {
                Some(period) => TokenBucket::per_period(self.rate, period),
                None => TokenBucket::new(self.rate, self.burst),
            })
            .try_take()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refills_at_rate() {
        let mut b = TokenBucket::new(10, 20);
        assert_eq!((0..30).filter(|_| b.try_take()).count(), 20);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..30).filter(|_| b.try_take()).count(), 5);
        let mut unlimited = TokenBucket::new(0, 0);
        assert!((0..10_000).all(|_| unlimited.try_take()));
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_buckets_are_separate() {
        let r = PerIpRate::new(1, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert_eq!((0..5).filter(|_| r.admit(a)).count(), 2);
        assert!(r.admit(b));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.admit(a));
    }

    #[tokio::test(start_paused = true)]
    async fn per_period_refills_over_the_period() {
        let r = PerIpRate::per_period(3, Duration::from_secs(60));
        let a: IpAddr = [127, 0, 0, 1].into();
        assert_eq!((0..5).filter(|_| r.admit(a)).count(), 3);
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(!r.admit(a), "one attempt comes back every 20 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.admit(a));
        assert!(!r.admit(a));
    }
}
