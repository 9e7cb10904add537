//! Idempotent publish: the first result of each `(channel, idempotency_key)` is
//! remembered for a window, so a retried request publishes once.
//!
//! Memory is bounded twice: entries expire after the window, and past [`CAPACITY`]
//! the oldest are forgotten early (a retry that late may then publish again).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::error::ApiError;
use super::wire::PublishResult;

/// Most keys remembered at once.
pub const CAPACITY: usize = 100_000;

type Slot = Arc<OnceCell<PublishResult>>;

/// Remembered publish results.
#[derive(Debug)]
pub struct IdempotencyCache {
    window: Duration,
    capacity: usize,
    /// Short critical sections only; the publish itself runs outside the lock.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<Arc<str>, Slot>,
    /// Keys in insertion order, for expiry and eviction.
    order: VecDeque<(Arc<str>, Instant)>,
}

impl IdempotencyCache {
    /// A cache remembering results for `window`, at most `capacity` keys.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Runs `publish` unless `key` was used in `channel` within the window, in which
    /// case the first result is returned. Concurrent calls with one key wait for the
    /// first; a failed publish is not remembered, so the next call tries again.
    ///
    /// # Errors
    /// What `publish` returns.
    pub async fn run<F, Fut>(
        &self,
        channel: &str,
        key: &str,
        publish: F,
    ) -> Result<PublishResult, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<PublishResult, ApiError>>,
    {
        let slot = self.slot(channel, key);
        slot.get_or_try_init(publish).await.cloned()
    }

    fn slot(&self, channel: &str, key: &str) -> Slot {
        let now = Instant::now();
        // Channel names can not contain a newline, so this joins unambiguously.
        let id = format!("{channel}\n{key}");
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.forget_old(now, self.window, self.capacity);
        if let Some(slot) = inner.slots.get(id.as_str()) {
            return slot.clone();
        }
        let id: Arc<str> = id.into();
        let slot = Slot::default();
        inner.slots.insert(id.clone(), slot.clone());
        inner.order.push_back((id, now));
        slot
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slots
            .len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drops expired keys, and the oldest ones while there is no room for one more.
    fn forget_old(&mut self, now: Instant, window: Duration, capacity: usize) {
        while let Some((id, at)) = self.order.front() {
            if now.duration_since(*at) < window && self.slots.len() < capacity {
                break;
            }
            self.slots.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    async fn counting(n: &AtomicU64) -> Result<PublishResult, ApiError> {
        let offset = n.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(PublishResult {
            offset,
            epoch: "e".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn same_key_publishes_once_within_the_window() {
        let cache = IdempotencyCache::new(Duration::from_secs(300), 10);
        let n = AtomicU64::new(0);
        let a = cache.run("chat:1", "k", || counting(&n)).await.unwrap();
        tokio::time::advance(Duration::from_secs(299)).await;
        let b = cache.run("chat:1", "k", || counting(&n)).await.unwrap();
        assert_eq!((a.offset, b.offset), (1, 1));
        assert_eq!(n.load(Ordering::SeqCst), 1);

        // Keys are per channel.
        let c = cache.run("chat:2", "k", || counting(&n)).await.unwrap();
        assert_eq!(c.offset, 2);

        tokio::time::advance(Duration::from_secs(2)).await;
        let d = cache.run("chat:1", "k", || counting(&n)).await.unwrap();
        assert_eq!(d.offset, 3, "the window passed: published again");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_not_remembered() {
        let cache = IdempotencyCache::new(Duration::from_secs(300), 10);
        let n = AtomicU64::new(0);
        let err = cache
            .run("chat:1", "k", || async {
                Err(ApiError::BadRequest("nope".into()))
            })
            .await;
        assert!(err.is_err());
        let ok = cache.run("chat:1", "k", || counting(&n)).await.unwrap();
        assert_eq!(ok.offset, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_capped_oldest_first() {
        let cache = IdempotencyCache::new(Duration::from_secs(300), 3);
        let n = AtomicU64::new(0);
        for k in ["a", "b", "c", "d"] {
            cache.run("chat:1", k, || counting(&n)).await.unwrap();
        }
        assert_eq!(cache.len(), 3);
        // "a" was forgotten to make room; "d" is still remembered.
        let d = cache.run("chat:1", "d", || counting(&n)).await.unwrap();
        assert_eq!(d.offset, 4);
        let a = cache.run("chat:1", "a", || counting(&n)).await.unwrap();
        assert_eq!(a.offset, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_retries_wait_for_the_first() {
        let cache = Arc::new(IdempotencyCache::new(Duration::from_secs(300), 10));
        let n = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (cache, n) = (cache.clone(), n.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .run("chat:1", "k", || async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        counting(&n).await
                    })
                    .await
                    .unwrap()
                    .offset
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 1);
        }
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
