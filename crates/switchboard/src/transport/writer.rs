//! The one writer driver of every connection-oriented transport: it drains a session's
//! outbox in batches, encodes each item, feeds the frames to the transport's
//! [`FrameSink`] and flushes once per batch; at the close it writes what was still
//! queued and the protocol's farewell, then ends the connection with the disconnect.
//!
//! A sink is what differs: WebSocket messages ([`super::websocket`]), or the chunks of a
//! streaming HTTP response ([`super::streaming`]).

use std::future::{poll_fn, Future};
use std::task::Poll;

use switchboard_protocol::Disconnect;

use crate::event::{Frame, Outgoing};
use crate::outbox::Taken;
use crate::session::Session;

/// Most outbox items taken for one write: many deliveries per write system call (a
/// saturated broadcast finds about 35 per connection), few enough that the batch stays
/// small under fan-out.
pub(crate) const BATCH: usize = 256;

/// The peer stopped taking data: the connection is gone.
#[derive(Debug)]
pub(crate) struct SinkClosed;

/// Where a transport's frames go.
pub(crate) trait FrameSink: Send {
    /// Takes one frame for the next flush (it may already write when its buffer fills).
    fn feed(&mut self, frame: Frame) -> impl Future<Output = Result<(), SinkClosed>> + Send;
    /// Makes room for `frames` more frames before a batch is fed: one allocation
    /// for the batch, not one per doubling.
    fn reserve(&mut self, _frames: usize) {}
    /// Writes what was fed: one write for the whole batch.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkClosed>> + Send;
    /// Ends the connection after what was fed: a WebSocket close frame carrying
    /// `reason`, or the end of a response stream.
    fn close(self, reason: Disconnect) -> impl Future<Output = ()> + Send;
}

/// How a transport turns outbox items into frames, and what it says before closing.
#[derive(Clone, Copy)]
pub(crate) struct Wire {
    /// Encodes one outbox item of the session (whose node's configuration may name
    /// what it carries: a Pusher app's channel names).
    pub(crate) encode: fn(&Session, Outgoing) -> Frame,
    /// Frames sent before the connection ends (the protocol's own disconnect message:
    /// a stream has no close frame to carry the code).
    pub(crate) farewell: fn(&Session, Disconnect) -> Vec<Frame>,
    /// The close code and reason the client is sent for a disconnect: the protocol's
    /// own numbers where its clients act on them (Pusher's 4000-4299), the disconnect
    /// as it is otherwise ([`same_close`]).
    pub(crate) close: fn(Disconnect) -> Disconnect,
}

/// Closes with switchboard's own code and reason.
pub(crate) fn same_close(reason: Disconnect) -> Disconnect {
    reason
}

/// Writes the session's outbox to `sink` until the session closes, then what was still
/// queued, the farewell, and the close.
///
/// Not an `async fn` wrapping [`write_loop_with`]: that would keep a second copy of the
/// sink in every idle connection's task.
pub(crate) fn write_loop(
    sink: impl FrameSink,
    session: impl AsRef<Session> + Send,
    wire: Wire,
) -> impl Future<Output = ()> + Send {
    write_loop_with(sink, session, wire, wire.encode)
}

/// [`write_loop`] with an encoder of the transport's own, which may note what it
/// writes (Socket.IO's recovery remembers the order of publications). `session` may be
/// owned (an `Arc`, for a task of its own) or borrowed.
///
/// A plain function returning an `async` block, not an `async fn`: an `async fn` keeps
/// its parameters twice in its future (as passed, and as moved into its body), and
/// this future is every connection's for its whole life.
#[allow(clippy::manual_async_fn)] // see above: the size of every connection's future
pub(crate) fn write_loop_with(
    mut sink: impl FrameSink,
    session: impl AsRef<Session> + Send,
    wire: Wire,
    encode: impl Fn(&Session, Outgoing) -> Frame + Send + Sync,
) -> impl Future<Output = ()> + Send {
    async move {
        let session = session.as_ref();
        let mut batch = Vec::new();
        // The close is learnt through the outbox's waker, which `Session::close` and
        // `Session::cleanup` wake: a cancellation future (72 bytes) would take room in
        // every idle connection's writer, and lock the token's waiter list on every
        // wake-up. While the writer waits on something else (a slow client's socket)
        // it registers that waker; beside `recv_batch`, which registered it already,
        // the flag suffices.
        let closed = |register: bool| {
            poll_fn(move |cx| {
                if register {
                    session.outbox().register_consumer(cx.waker());
                }
                if session.is_closing() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        };
        loop {
            if session.is_closing() {
                break;
            }
            let taken = tokio::select! {
                biased;
                // Cancel-safe: `recv_batch` loses nothing when dropped.
                t = session.recv_batch(&mut batch, BATCH) => t,
                // Cancel-safe: holds no state.
                () = closed(false) => break,
            };
            // A lone item skips the batch buffer, which then is never allocated for an
            // idle connection.
            let lone = match taken {
                Taken::One(item) => Some(item),
                Taken::Many(_) => None,
            };
            observe_latency(
                session,
                lone.as_ref().map_or(batch.as_slice(), std::slice::from_ref),
            );
            sink.reserve(usize::from(lone.is_some()) + batch.len());
            let write = async {
                if let Some(item) = lone {
                    sink.feed(encode(session, item)).await?;
                }
                for item in batch.drain(..) {
                    sink.feed(encode(session, item)).await?;
                }
                sink.flush().await
            };
            tokio::select! {
                biased;
                r = write => if r.is_err() {
                    session.close(Disconnect::WRITE_ERROR);
                    break;
                },
                // A client that stopped reading blocks the write; closing must not wait
                // for it.
                () = closed(true) => break,
            }
            // A burst's batch goes back after its write: a lone item needs none, idle
            // connections are the common case, and under fan-out every connection's
            // writer would otherwise keep one, and the process's peak memory with it.
            // An allocation per burst is what that costs.
            batch = Vec::new();
        }
        let reason = session.disconnect_reason();
        // What was queued before the close (an error reply, say) still goes out, unless the
        // client is closed for being slow: then it would not read it anyway.
        let flush_rest = async move {
            if reason != Disconnect::SLOW && reason != Disconnect::WRITE_ERROR {
                batch.clear();
                let rest = async {
                    while let Some(item) = session.try_recv() {
                        sink.feed(encode(session, item)).await?;
                    }
                    for frame in (wire.farewell)(session, reason) {
                        sink.feed(frame).await?;
                    }
                    sink.flush().await
                };
                if rest.await.is_err() {
                    return;
                }
            }
            sink.close((wire.close)(reason)).await;
        };
        // Boxed: only closing connections pay for this state. Bounded like the lingering
        // close that follows: a client that does not read never gets the close frame.
        let linger = session.node().config.network.close_linger;
        let _ = Box::pin(tokio::time::timeout(linger, flush_rest)).await;
    }
}

/// Records publish-to-write latency once per batch, for its oldest channel event: one
/// sample per write instead of three shared atomic updates per delivery.
pub(crate) fn observe_latency(session: &Session, batch: &[Outgoing]) {
    let oldest = batch.iter().find_map(|item| match item {
        Outgoing::Event(e) => Some(e.published),
        _ => None,
    });
    if let Some(published) = oldest {
        let waited = std::time::Instant::now().saturating_duration_since(published);
        session.node().metrics.delivery_latency.observe(waited);
    }
}
