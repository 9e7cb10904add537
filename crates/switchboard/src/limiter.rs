//! A token bucket: `rate` per second sustained, `burst` at once.

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
}
