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
//! A fan-out to a busy channel queues runs of the channel's feed rather than one item
//! per event ([`crate::feed`]); the writer receives a run as one item per event.
//!
//! It is bounded in items (each event of a run counted) and in bytes, and all outboxes
//! of a node share a byte budget (`limits.outbox_total_bytes`), so slow readers of large
//! messages can not grow the process without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use crate::config::LimitsConfig;
use crate::event::{ChannelEvent, Control, EventFrame, Frame, Outgoing};
use crate::feed::{Chunk, Place};
use crate::metrics::Metrics;

/// Capacity kept by an emptied queue; a larger one is released.
const KEEP: usize = 64;
/// Bytes counted for a control push (its frame is encoded by the writer).
const CONTROL_BYTES: usize = 128;

/// The queue, the bytes it holds and how many items: what a push and a drain touch,
/// laid out first (see [`Outbox`]).
#[derive(Debug, Default)]
#[repr(C)]
struct Queue {
    items: Items,
    bytes: usize,
    /// Items queued, each event of a run counted.
    count: usize,
}

/// An item as queued: an [`Outgoing`], or a run of a channel's events (see
/// [`crate::feed`]), which the consumer receives as one item per event. As small as an
/// item.
#[derive(Debug)]
enum Slot {
    Event(Arc<EventFrame>),
    Frame(Box<Frame>),
    Control(Box<Control>),
    /// Events `at..at + len` of `chunk`.
    Run {
        chunk: Arc<Chunk>,
        at: u16,
        len: u16,
    },
}

const _: () = assert!(std::mem::size_of::<Option<Slot>>() == 16);

impl From<Outgoing> for Slot {
    fn from(item: Outgoing) -> Self {
        match item {
            Outgoing::Event(e) => Self::Event(e),
            Outgoing::Frame(f) => Self::Frame(f),
            Outgoing::Control(c) => Self::Control(c),
        }
    }
}

/// Turns a run's event into the item the consumer receives (the session's encoding).
type Expand<'a> = &'a (dyn Fn(&ChannelEvent) -> Outgoing + Sync);

impl Slot {
    /// The item it holds, when not a run.
    fn into_item(self) -> Option<Outgoing> {
        match self {
            Self::Event(e) => Some(Outgoing::Event(e)),
            Self::Frame(f) => Some(Outgoing::Frame(f)),
            Self::Control(c) => Some(Outgoing::Control(c)),
            Self::Run { .. } => None,
        }
    }
}

/// A FIFO whose newest item lives inline: a connection that gets one push at a time
/// (most of them) never allocates for its queue, and a run of a channel's events grows
/// there, in the outbox's own cache lines, without touching the queue's buffer.
#[derive(Debug, Default)]
#[repr(C)]
struct Items {
    /// The newest item; `None` only when `rest` is empty too.
    last: Option<Slot>,
    /// The older items, oldest first.
    rest: VecDeque<Slot>,
}

impl Items {
    fn push_back(&mut self, slot: Slot) {
        if let Some(older) = self.last.replace(slot) {
            if self.rest.capacity() == 0 {
                // Room for one: the burst an idle connection sees most is its connect's
                // replies, two or three items, which a first push would make room for 4
                // (64 bytes kept until the next ping). A longer burst grows it as usual.
                self.rest.reserve_exact(1);
            }
            self.rest.push_back(older);
        }
    }

    /// The oldest item.
    fn front_mut(&mut self) -> Option<&mut Slot> {
        match self.rest.front_mut() {
            Some(front) => Some(front),
            None => self.last.as_mut(),
        }
    }

    fn pop_front(&mut self) -> Option<Slot> {
        self.rest.pop_front().or_else(|| self.last.take())
    }

    /// Hands up to `max` of the oldest items to `out`, a run's events one by one (a run
    /// cut short keeps the rest). Returns how many.
    fn drain_into(
        &mut self,
        max: usize,
        expand: Expand<'_>,
        out: &mut impl FnMut(Outgoing),
    ) -> usize {
        let mut moved = 0;
        while moved < max {
            let Some(front) = self.front_mut() else {
                break;
            };
            if let Slot::Run { chunk, at, len } = front {
                let n = (*len).min(u16::try_from(max - moved).unwrap_or(u16::MAX));
                for i in *at..*at + n {
                    // Always set: a run is made only of events already in their chunk.
                    // Were one missing, it would go unsent, its bytes still counted.
                    if let Some(event) = chunk.get(i) {
                        out(expand(event));
                    }
                }
                *at += n;
                *len -= n;
                moved += usize::from(n);
                if *len > 0 {
                    break;
                }
                self.pop_front();
            } else if let Some(item) = self.pop_front().and_then(Slot::into_item) {
                out(item);
                moved += 1;
            }
        }
        moved
    }

    /// Heap capacity held (the inline item aside).
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
/// caches, so what a push reads and writes fills two whole cache lines: the lock, the
/// newest item (where a run grows) and the queue's buffer pointer in the first, the
/// counts and the consumer's waker in the second. The limits are the node's one
/// shared copy.
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

    /// Asks for both cache lines of a push, without taking the lock (see
    /// [`crate::session::Session::warm`]).
    pub fn warm(&self) {
        prefetch(&self.queue);
        prefetch(&self.consumer);
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item without waiting.
    ///
    /// # Errors
    /// Gives the item back when the outbox is full (see [`Outbox::admits`]).
    pub fn push(&self, item: Outgoing) -> Result<(), Outgoing> {
        let size = size_of(&item);
        let mut queue = self.queue();
        let was_empty = queue.count == 0;
        if !self.admits(&queue, size) {
            return Err(item);
        }
        queue.items.push_back(Slot::from(item));
        self.queued(queue, size, was_empty);
        Ok(())
    }

    /// Queues the event at `place` (whose frame for this outbox's session is `size`
    /// bytes) without waiting: the newest queued item grows by it when it is the run
    /// of the same chunk up to just before it, else a run of it alone is queued.
    /// Returns false when the outbox is full (see [`Outbox::admits`]).
    pub fn push_at(&self, place: Place<'_>, size: usize) -> bool {
        let mut queue = self.queue();
        let was_empty = queue.count == 0;
        if !self.admits(&queue, size) {
            return false;
        }
        match &mut queue.items.last {
            Some(Slot::Run { chunk, at, len })
                if Arc::ptr_eq(chunk, place.chunk)
                    && u32::from(*at) + u32::from(*len) == u32::from(place.at) =>
            {
                *len += 1;
            }
            _ => queue.items.push_back(Slot::Run {
                chunk: place.chunk.clone(),
                at: place.at,
                len: 1,
            }),
        }
        self.queued(queue, size, was_empty);
        true
    }

    /// Whether an item of `size` bytes fits: under `outbox_size` items and
    /// `outbox_max_bytes` (an empty outbox takes one item of any size), and, while all
    /// outboxes together hold over `outbox_total_bytes`, only if this one holds no more
    /// than 1/16 of `outbox_max_bytes`: the largest backlogs are refused first.
    fn admits(&self, queue: &Queue, size: usize) -> bool {
        let budget = &*self.budget;
        let bytes = queue.bytes + size;
        if queue.count >= budget.items || (queue.count != 0 && bytes > budget.bytes) {
            return false;
        }
        if budget.total != 0 && bytes > budget.bytes / 16 {
            let total = usize::try_from(budget.metrics.outbox_bytes.get()).unwrap_or(0);
            if total + size > budget.total {
                return false;
            }
        }
        true
    }

    /// Counts an item of `size` bytes just queued, releases the lock, and wakes the
    /// consumer for the first item: it drains all it finds.
    fn queued(&self, mut queue: MutexGuard<'_, Queue>, size: usize, was_empty: bool) {
        queue.bytes += size;
        queue.count += 1;
        drop(queue);
        self.budget.metrics.outbox_bytes.add(signed(size));
        if was_empty {
            self.consumer.wake();
        }
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

    /// Moves up to `max` items into `buf`, waiting while the outbox is empty; a run's
    /// events become items through `expand`. Returns how many were moved.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is taken out before it is returned. Only one task may
    /// receive (the connection's writer).
    pub async fn recv_many(
        &self,
        buf: &mut Vec<Outgoing>,
        max: usize,
        expand: impl Fn(&ChannelEvent) -> Outgoing + Sync,
    ) -> usize {
        match self.recv_batch(buf, max, expand).await {
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
    /// Not an `async fn`: its future, which every idle connection's writer holds, is
    /// then only what the poll needs (an `async fn` would keep its arguments twice).
    ///
    /// # Cancel safety
    /// As [`Outbox::recv_many`].
    pub fn recv_batch<'a>(
        &'a self,
        buf: &'a mut Vec<Outgoing>,
        max: usize,
        expand: impl Fn(&ChannelEvent) -> Outgoing + Sync + 'a,
    ) -> impl std::future::Future<Output = Taken> + 'a {
        std::future::poll_fn(move |cx| {
            if let Some(t) = self.take(buf, max, &expand) {
                return Poll::Ready(t);
            }
            self.consumer.register(cx.waker());
            // A push between the check and the registration found no waker: look again.
            match self.take(buf, max, &expand) {
                Some(t) => Poll::Ready(t),
                None => Poll::Pending,
            }
        })
    }

    fn take(&self, buf: &mut Vec<Outgoing>, max: usize, expand: Expand<'_>) -> Option<Taken> {
        let mut queue = self.queue();
        let taken = match queue.count {
            0 => return None,
            1 => match Self::take_one(&mut queue, expand) {
                Some(item) => {
                    let size = size_of(&item);
                    (Taken::One(item), 1, size)
                }
                None => {
                    queue.count = 0;
                    return None;
                }
            },
            count => {
                let n = count.min(max);
                if buf.capacity() == 0 {
                    // Exactly, like the queue's first room: a first burst is short.
                    buf.reserve_exact(n);
                } else {
                    buf.reserve(n);
                }
                let start = buf.len();
                let moved = queue
                    .items
                    .drain_into(n, expand, &mut |item| buf.push(item));
                let size = buf[start..].iter().map(size_of).sum();
                (Taken::Many(buf.len() - start), moved, size)
            }
        };
        queue.count -= taken.1;
        queue.bytes = queue.bytes.saturating_sub(taken.2);
        if queue.count == 0 {
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
        self.budget.metrics.outbox_bytes.add(-signed(taken.2));
        Some(taken.0)
    }

    /// The oldest item (a run's first event), leaving the count to the caller.
    fn take_one(queue: &mut Queue, expand: Expand<'_>) -> Option<Outgoing> {
        let mut one = None;
        queue
            .items
            .drain_into(1, expand, &mut |item| one = Some(item));
        one
    }

    /// Takes one item if any is queued (a run's first event, through `expand`).
    pub fn try_recv(&self, expand: Expand<'_>) -> Option<Outgoing> {
        let mut queue = self.queue();
        if queue.count == 0 {
            return None;
        }
        let item = Self::take_one(&mut queue, expand);
        queue.count -= 1;
        let size = item.as_ref().map_or(0, size_of);
        queue.bytes = queue.bytes.saturating_sub(size);
        drop(queue);
        self.budget.metrics.outbox_bytes.add(-signed(size));
        item
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue().count == 0
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

/// Asks the CPU for the cache line holding `value`, without waiting for it: unlike a
/// read, the instruction retires at once, so a fan-out can ask for the lines of
/// recipients further ahead than its reads could reach.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(value);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = value;
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

    /// How the tests' sessions encode a run's event: its offset, as text.
    fn plain(event: &ChannelEvent) -> Outgoing {
        Outgoing::frame(event.offset().to_string())
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
        while a.try_recv(&plain).is_some() {}
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
        rt.block_on(a.recv_many(&mut buf, 10, plain));
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
        assert_eq!(outbox.recv_many(&mut buf, 2, plain).await, 2);
        assert_eq!(outbox.recv_many(&mut buf, 10, plain).await, 1);
        assert_eq!(texts(&buf), ["a", "b", "c"]);
        // A consumer waiting on an empty outbox is woken by a push from elsewhere.
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            let mut buf = Vec::new();
            o.recv_many(&mut buf, 10, plain).await
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
        outbox.recv_many(&mut buf, 10, plain).await;
        assert_eq!(buf.len(), 2);
        assert!(
            outbox.queue().items.capacity() > 0,
            "kept for the next delivery"
        );
        outbox.release_when_drained();
        outbox.push(frame("ping")).unwrap();
        outbox.recv_many(&mut buf, 10, plain).await;
        assert_eq!(outbox.queue().items.capacity(), 0);
        // Once: the next burst keeps its room again.
        outbox.push(frame("x")).unwrap();
        outbox.push(frame("y")).unwrap();
        buf.clear();
        outbox.recv_many(&mut buf, 10, plain).await;
        assert_eq!(buf.len(), 2);
        assert!(outbox.queue().items.capacity() > 0);
    }

    fn texts(items: &[Outgoing]) -> Vec<String> {
        items
            .iter()
            .map(|o| match o {
                Outgoing::Frame(f) => String::from_utf8_lossy(f.as_bytes()).into_owned(),
                Outgoing::Event(_) | Outgoing::Control(_) => String::new(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_run_grows_in_place_and_comes_out_one_item_per_event() {
        use crate::feed::tests::event;
        use crate::feed::{Feed, CHUNK};
        let feed = Feed::default();
        let placed: Vec<_> = (1..=CHUNK as u64 + 2)
            .map(|n| feed.append(&event(n)).unwrap())
            .collect();
        // What `plain` makes of the event: its offset as text.
        let push = |o: &Outbox, i: usize| {
            let (chunk, at) = &placed[i];
            o.push_at(Place { chunk, at: *at }, (i + 1).to_string().len())
        };
        let metrics = Arc::new(Metrics::default());
        let outbox = outbox(5, usize::MAX, 0, &metrics);
        for i in 0..3 {
            assert!(push(&outbox, i));
        }
        assert_eq!(
            outbox.queue().items.capacity(),
            0,
            "consecutive events make one run, held inline"
        );
        outbox.push(frame("reply")).unwrap();
        assert!(push(&outbox, 3), "a new run after another item");
        assert!(!push(&outbox, 4), "outbox_size counts events, not runs");
        assert_eq!(outbox.bytes(), 3 + 5 + 1);
        let mut buf = Vec::new();
        assert_eq!(
            outbox.recv_many(&mut buf, 2, plain).await,
            2,
            "a run cut short"
        );
        assert_eq!(
            outbox.try_recv(&plain).map(|o| texts(&[o])),
            Some(vec!["3".to_owned()])
        );
        assert_eq!(outbox.recv_many(&mut buf, 10, plain).await, 2);
        assert_eq!(texts(&buf), ["1", "2", "reply", "4"]);
        assert!(outbox.is_empty());
        assert_eq!(metrics.outbox_bytes.get(), 0);

        // A run ends with its chunk; the next chunk's events start another.
        let outbox = self::outbox(100, usize::MAX, 0, &metrics);
        for i in CHUNK - 2..CHUNK + 2 {
            assert!(push(&outbox, i));
        }
        assert!(push(&outbox, 0), "an earlier event: no run grows backwards");
        assert!(
            push(&outbox, 2),
            "an event skipped (not for this session): no run either"
        );
        buf.clear();
        assert_eq!(outbox.recv_many(&mut buf, 256, plain).await, 6);
        assert_eq!(texts(&buf), ["63", "64", "65", "66", "1", "3"]);
        assert_eq!(metrics.outbox_bytes.get(), 0);
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
            rt.block_on(outbox.recv_many(&mut buf, 256, plain));
        }
        assert!(outbox.queue().items.capacity() <= KEEP);
    }
}
