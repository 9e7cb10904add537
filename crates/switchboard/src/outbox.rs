//! A session's bounded outbox: what the hub and command handlers queue for one
//! connection, drained by its writer in batches.
//!
//! An empty outbox owns no allocation (a channel allocates its first block up front),
//! which matters for tens of thousands of idle connections; the queue grows with a
//! burst and gives the memory back once drained.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use crate::event::Outgoing;

/// Capacity kept by an emptied queue; a larger one is released.
const KEEP: usize = 64;

/// A bounded multi-producer queue with one consumer.
#[derive(Debug)]
pub struct Outbox {
    /// Held only to push or drain, never across an await.
    queue: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    /// The one consumer's waker: waking it takes no lock, unlike a `Notify`.
    consumer: AtomicWaker,
}

impl Outbox {
    /// An outbox holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            consumer: AtomicWaker::new(),
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Outgoing>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item without waiting.
    ///
    /// # Errors
    /// Gives the item back when the outbox is full.
    pub fn push(&self, item: Outgoing) -> Result<(), Outgoing> {
        let mut queue = self.queue();
        if queue.len() >= self.capacity {
            return Err(item);
        }
        let was_empty = queue.is_empty();
        queue.push_back(item);
        drop(queue);
        // Only the first item needs a wake-up: the consumer drains all it finds.
        if was_empty {
            self.consumer.wake();
        }
        Ok(())
    }

    /// Moves up to `max` items into `buf`, waiting while the outbox is empty.
    /// Returns how many were moved.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is taken out before it is returned. Only one task may
    /// receive (the connection's writer).
    pub async fn recv_many(&self, buf: &mut Vec<Outgoing>, max: usize) -> usize {
        std::future::poll_fn(|cx| {
            if let Some(n) = self.take(buf, max) {
                return Poll::Ready(n);
            }
            self.consumer.register(cx.waker());
            // A push between the check and the registration found no waker: look again.
            match self.take(buf, max) {
                Some(n) => Poll::Ready(n),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn take(&self, buf: &mut Vec<Outgoing>, max: usize) -> Option<usize> {
        let mut queue = self.queue();
        if queue.is_empty() {
            return None;
        }
        let n = queue.len().min(max);
        buf.extend(queue.drain(..n));
        if queue.is_empty() && queue.capacity() > KEEP {
            queue.shrink_to(KEEP);
        }
        Some(n)
    }

    /// Takes one item if any is queued.
    pub fn try_recv(&self) -> Option<Outgoing> {
        self.queue().pop_front()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TextFrame;

    fn frame(s: &'static str) -> Outgoing {
        Outgoing::Frame(TextFrame::from_static(s))
    }

    #[tokio::test]
    async fn bounded_ordered_and_wakes_the_consumer() {
        let outbox = std::sync::Arc::new(Outbox::new(3));
        assert!(outbox.push(frame("a")).is_ok());
        assert!(outbox.push(frame("b")).is_ok());
        assert!(outbox.push(frame("c")).is_ok());
        assert!(outbox.push(frame("d")).is_err(), "full");
        let mut buf = Vec::new();
        assert_eq!(outbox.recv_many(&mut buf, 2).await, 2);
        assert_eq!(outbox.recv_many(&mut buf, 10).await, 1);
        let texts: Vec<_> = buf
            .iter()
            .map(|o| match o {
                Outgoing::Frame(f) => f.as_str().to_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
        // A consumer waiting on an empty outbox is woken by a push from elsewhere.
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            let mut buf = Vec::new();
            o.recv_many(&mut buf, 10).await
        });
        tokio::task::yield_now().await;
        outbox.push(frame("e")).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
        assert!(outbox.is_empty());
    }

    #[test]
    fn releases_memory_after_a_burst() {
        let outbox = Outbox::new(10_000);
        for _ in 0..5000 {
            outbox.push(frame("x")).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut buf = Vec::new();
        while !outbox.is_empty() {
            rt.block_on(outbox.recv_many(&mut buf, 256));
        }
        assert!(outbox.queue().capacity() <= KEEP);
    }
}
