//! A session's bounded outbox: what the hub and command handlers queue for one
//! connection, drained by its writer in batches.
//!
//! An empty outbox owns no allocation (a channel allocates its first block up front),
//! which matters for tens of thousands of idle connections; the queue grows with a
//! burst and gives the memory back once drained. A queue that saw a little traffic keeps
//! a little capacity (reallocating on every burst would cost CPU under fan-out, where
//! queues refill as fast as they drain), until the connection's periodic ping asks for
//! it back ([`Outbox::release_when_drained`]): after at most one ping interval of quiet,
//! an idle connection's queue holds no memory. (The writer gives its batch back after
//! every write.)
//!
//! It is bounded in items and in bytes, and all outboxes of a node share a byte budget
//! (`limits.outbox_total_bytes`), so slow readers of large messages can not grow the
//! process without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use crate::config::LimitsConfig;
use crate::event::{Frame, Outgoing};
use crate::metrics::Metrics;

/// Capacity kept by an emptied queue; a larger one is released.
const KEEP: usize = 64;
/// Bytes counted for a control push (its frame is encoded by the writer).
const CONTROL_BYTES: usize = 128;

/// The queue and the bytes it holds: what a push and a drain touch, laid out first
/// (see [`Outbox`]).
#[derive(Debug, Default)]
#[repr(C)]
struct Queue {
    items: Items,
    bytes: usize,
}

/// A FIFO whose first item lives inline: a connection that gets one push at a time
/// (most of them) never allocates for its queue.
#[derive(Debug, Default)]
#[repr(C)]
struct Items {
    /// The oldest item, when `rest` was empty as it came. `None` with a non-empty
    /// `rest` after a partial drain: `rest` then holds the order alone.
    head: Option<Outgoing>,
    rest: VecDeque<Outgoing>,
}

impl Items {
    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.head.is_none() && self.rest.is_empty()
    }

    fn push_back(&mut self, item: Outgoing) {
        if self.is_empty() {
            self.head = Some(item);
        } else {
            if self.rest.capacity() == 0 {
                // Room for one: the burst an idle connection sees most is its connect's
                // replies, two or three items, which a first push would make room for 4
                // (64 bytes kept until the next ping). A longer burst grows it as usual.
                self.rest.reserve_exact(1);
            }
            self.rest.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<Outgoing> {
        self.head.take().or_else(|| self.rest.pop_front())
    }

    /// Heap capacity held (the inline head aside).
    fn capacity(&self) -> usize {
        self.rest.capacity()
    }
}

/// What one receive took.
#[derive(Debug)]
pub enum Taken {
    /// The only item queued (the batch buffer was left alone).
    One(Outgoing),
    /// This many items, moved into the batch buffer.
    Many(usize),
}

/// The limits every outbox of a node shares, and the node-wide byte count they are
/// checked against: one copy per node, read from a cache line every push shares.
#[derive(Debug)]
pub struct Budget {
    /// Items one outbox holds at most (`limits.outbox_size`).
    items: usize,
    /// Bytes one outbox holds at most (`limits.outbox_max_bytes`).
    bytes: usize,
    /// Bytes all outboxes hold at most (`limits.outbox_total_bytes`, 0: no budget).
    total: usize,
    /// Holds the node-wide count of queued bytes (`outbox_bytes`).
    metrics: Arc<Metrics>,
}

impl Budget {
    /// The budget of `limits`, counted in `metrics`.
    pub fn new(limits: &LimitsConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            items: limits.outbox_size,
            bytes: limits.outbox_max_bytes,
            total: limits.outbox_total_bytes,
            metrics,
        })
    }
}

/// A bounded multi-producer queue with one consumer.
///
/// A fan-out touches one outbox per recipient, each most likely out of the CPU's
/// caches, so what a push reads and writes fills two whole cache lines: the lock and
/// the inline head in the first, the rest of the queue, the byte count and the
/// consumer's waker in the second. The limits are the node's one shared copy.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Outbox {
    /// Held only to push or drain, never across an await.
    queue: Mutex<Queue>,
    /// The one consumer's waker: waking it takes no lock, unlike a `Notify`.
    consumer: AtomicWaker,
    budget: Arc<Budget>,
    /// Set by [`Outbox::release_when_drained`], cleared by the drain that releases.
    release: AtomicBool,
}

// The two cache lines of a push (see `Outbox`): a larger item or queue would spill.
const _: () = assert!(std::mem::offset_of!(Outbox, budget) <= 128);

/// Bytes an item pins while queued. A channel event's frame is shared by all its
/// recipients, yet each queue keeps it alive on its own, so each counts it whole.
fn size_of(item: &Outgoing) -> usize {
    item.as_frame().map_or(CONTROL_BYTES, Frame::len)
}

impl Outbox {
    /// An outbox within `budget` (`outbox_size` items, `outbox_max_bytes`, and the
    /// node-wide `outbox_total_bytes`).
    pub fn new(budget: Arc<Budget>) -> Self {
        Self {
            queue: Mutex::default(),
            consumer: AtomicWaker::new(),
            budget,
            release: AtomicBool::new(false),
        }
    }

    /// Asks for the queue's memory back the next time it is drained (once). Called with
    /// a periodic ping, which is queued right after, so the next drain comes soon.
    pub fn release_when_drained(&self) {
        self.release.store(true, Ordering::Relaxed);
    }

    /// Reads both cache lines of a push, without taking the lock (see
    /// [`crate::session::Session::warm`]): what is read goes nowhere.
    pub fn warm(&self) {
        std::hint::black_box(self.queue.is_poisoned());
        std::hint::black_box(self.release.load(Ordering::Relaxed));
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item without waiting.
    ///
    /// # Errors
    /// Gives the item back when the outbox is full: `outbox_size` items, or
    /// `outbox_max_bytes` (an empty outbox takes one item of any size), or, while all
    /// outboxes together hold over `outbox_total_bytes`, when this one holds more than
    /// 1/16 of `outbox_max_bytes`: the largest backlogs are refused first.
    pub fn push(&self, item: Outgoing) -> Result<(), Outgoing> {
        let size = size_of(&item);
        let budget = &*self.budget;
        let mut queue = self.queue();
        let was_empty = queue.items.is_empty();
        let bytes = queue.bytes + size;
        if queue.items.len() >= budget.items || (!was_empty && bytes > budget.bytes) {
            return Err(item);
        }
        if budget.total != 0 && bytes > budget.bytes / 16 {
            let total = usize::try_from(budget.metrics.outbox_bytes.get()).unwrap_or(0);
            if total + size > budget.total {
                return Err(item);
            }
        }
        queue.items.push_back(item);
        queue.bytes = bytes;
        drop(queue);
        budget.metrics.outbox_bytes.add(signed(size));
        // Only the first item needs a wake-up: the consumer drains all it finds.
        if was_empty {
            self.consumer.wake();
        }
        Ok(())
    }

    /// Wakes the consumer with no item: what it waits for besides items changed (its
    /// session is closing, see [`Outbox::register_consumer`]).
    pub fn wake_consumer(&self) {
        self.consumer.wake();
    }

    /// Registers the consumer's waker without taking anything: a consumer that waits
    /// on something else too (its session's close) is woken through the outbox, and
    /// needs no second waiting future of its own.
    pub fn register_consumer(&self, waker: &std::task::Waker) {
        self.consumer.register(waker);
    }

    /// Moves up to `max` items into `buf`, waiting while the outbox is empty.
    /// Returns how many were moved.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is taken out before it is returned. Only one task may
    /// receive (the connection's writer).
    pub async fn recv_many(&self, buf: &mut Vec<Outgoing>, max: usize) -> usize {
        match self.recv_batch(buf, max).await {
            Taken::One(item) => {
                buf.push(item);
                1
            }
            Taken::Many(n) => n,
        }
    }

    /// As [`Outbox::recv_many`], but a lone item comes back as it is, without touching
    /// `buf`: a connection that gets one push at a time needs no batch buffer.
    ///
    /// # Cancel safety
    /// As [`Outbox::recv_many`].
    pub async fn recv_batch(&self, buf: &mut Vec<Outgoing>, max: usize) -> Taken {
        std::future::poll_fn(|cx| {
            if let Some(t) = self.take(buf, max) {
                return Poll::Ready(t);
            }
            self.consumer.register(cx.waker());
            // A push between the check and the registration found no waker: look again.
            match self.take(buf, max) {
                Some(t) => Poll::Ready(t),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn take(&self, buf: &mut Vec<Outgoing>, max: usize) -> Option<Taken> {
        let mut queue = self.queue();
        let taken = match queue.items.len() {
            0 => return None,
            1 => {
                let item = queue.items.pop_front()?;
                let size = size_of(&item);
                queue.bytes -= size;
                (Taken::One(item), size)
            }
            len => {
                let n = len.min(max);
                if buf.capacity() == 0 {
                    // Exactly, like the queue's first room: a first burst is short.
                    buf.reserve_exact(n);
                } else {
                    buf.reserve(n);
                }
                let start = buf.len();
                buf.extend(queue.items.head.take());
                let from_rest = n - (buf.len() - start);
                buf.extend(queue.items.rest.drain(..from_rest));
                let size = buf[start..].iter().map(size_of).sum();
                queue.bytes -= size;
                (Taken::Many(n), size)
            }
        };
        if queue.items.is_empty() {
            if self.release.load(Ordering::Relaxed) {
                // Under the lock, with one consumer: a request made meanwhile is at
                // worst lost to the next ping.
                self.release.store(false, Ordering::Relaxed);
                queue.items.rest = VecDeque::new();
            } else if queue.items.capacity() > KEEP {
                queue.items.rest.shrink_to(KEEP);
            }
        }
        drop(queue);
        self.budget.metrics.outbox_bytes.add(-signed(taken.1));
        Some(taken.0)
    }

    /// Takes one item if any is queued.
    pub fn try_recv(&self) -> Option<Outgoing> {
        let mut queue = self.queue();
        let item = queue.items.pop_front()?;
        let size = size_of(&item);
        queue.bytes -= size;
        drop(queue);
        self.budget.metrics.outbox_bytes.add(-signed(size));
        Some(item)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue().items.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.queue().bytes
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let bytes = self.queue().bytes;
        self.budget.metrics.outbox_bytes.add(-signed(bytes));
    }
}

fn signed(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Frame;

    fn frame(s: &'static str) -> Outgoing {
        Outgoing::frame(Frame::from_static(s))
    }

    fn outbox(items: usize, bytes: usize, total: usize, metrics: &Arc<Metrics>) -> Outbox {
        let limits = LimitsConfig {
            outbox_size: items,
            outbox_max_bytes: bytes,
            outbox_total_bytes: total,
            ..LimitsConfig::default()
        };
        Outbox::new(Budget::new(&limits, metrics.clone()))
    }

    fn sized(n: usize) -> Outgoing {
        Outgoing::frame("x".repeat(n))
    }

    #[test]
    fn bounded_in_bytes_alone_and_together() {
        let metrics = Arc::new(Metrics::default());
        let a = outbox(100, 1000, 2000, &metrics);
        // An empty outbox takes one item of any size; then the byte limit holds.
        assert!(a.push(sized(1500)).is_ok());
        assert!(a.push(sized(1)).is_err());
        let mut buf = Vec::new();
        while a.try_recv().is_some() {}
        assert_eq!(metrics.outbox_bytes.get(), 0);
        assert!(a.push(sized(600)).is_ok());
        assert!(a.push(sized(300)).is_ok());
        assert!(a.push(sized(200)).is_err(), "over outbox_max_bytes");
        // Over the shared budget, a small outbox still gets its item, a large one not.
        let b = outbox(100, 1000, 2000, &metrics);
        assert!(b.push(sized(900)).is_ok());
        assert!(b.push(sized(50)).is_ok());
        assert_eq!(metrics.outbox_bytes.get(), 1850);
        let small = outbox(100, 1000, 2000, &metrics);
        assert!(small.push(sized(50)).is_ok(), "under 1/16 of the limit");
        assert!(b.push(sized(80)).is_err(), "over the shared budget");
        // Taking and dropping give the bytes back.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(a.recv_many(&mut buf, 10));
        drop(b);
        drop(small);
        assert_eq!(metrics.outbox_bytes.get(), 0);
    }

    #[tokio::test]
    async fn bounded_ordered_and_wakes_the_consumer() {
        let outbox = std::sync::Arc::new(outbox(3, usize::MAX, 0, &Arc::default()));
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
                Outgoing::Frame(f) => String::from_utf8_lossy(f.as_bytes()).into_owned(),
                Outgoing::Event(_) | Outgoing::Control(_) => String::new(),
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

    #[tokio::test]
    async fn a_ping_gives_an_idle_queue_its_memory_back() {
        let outbox = outbox(100, usize::MAX, 0, &Arc::default());
        let mut buf = Vec::new();
        // A lone item stays inline; a second one takes heap capacity, kept afterwards.
        outbox.push(frame("x")).unwrap();
        assert_eq!(outbox.queue().items.capacity(), 0);
        outbox.push(frame("y")).unwrap();
        outbox.recv_many(&mut buf, 10).await;
        assert_eq!(buf.len(), 2);
        assert!(
            outbox.queue().items.capacity() > 0,
            "kept for the next delivery"
        );
        outbox.release_when_drained();
        outbox.push(frame("ping")).unwrap();
        outbox.recv_many(&mut buf, 10).await;
        assert_eq!(outbox.queue().items.capacity(), 0);
        // Once: the next burst keeps its room again.
        outbox.push(frame("x")).unwrap();
        outbox.push(frame("y")).unwrap();
        buf.clear();
        outbox.recv_many(&mut buf, 10).await;
        assert_eq!(buf.len(), 2);
        assert!(outbox.queue().items.capacity() > 0);
    }

    #[test]
    fn releases_memory_after_a_burst() {
        let outbox = outbox(10_000, usize::MAX, 0, &Arc::default());
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
        assert!(outbox.queue().items.capacity() <= KEEP);
    }
}
