//! An upgraded WebSocket connection's socket, shared by its two users: the frame reader
//! ([`super::frame_reader`]), which reads the client's frames (and answers its pings and
//! closes), and the connection's frame writer ([`FrameWriter`]), which writes a batch of
//! frames in one system call. Small frames (most events) are first copied into one
//! buffer of the worker thread, since the kernel's cost per slice of a vectored write
//! outweighs the copy (docs/benchmarks.md); large ones go out vectored, straight from
//! their shared buffers. No connection holds a write buffer of its own.
//!
//! Two writers on one byte stream must never interleave inside a frame. Both write whole
//! frames, and what the socket does not take of a write is kept aside and written before
//! anything else: the only copy a connection holds, made only when the client reads
//! slower than it is sent to.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::websocket::CLOSE;

/// Most bytes kept aside for the reader's writes (its pongs and close replies) while the
/// socket takes nothing: a client that sends pings but does not read is not given more.
const MAX_PENDING_REPLIES: usize = 64 * 1024;

/// Slices averaging under this many bytes are copied into one buffer and written with
/// one plain write: the kernel's cost per slice of a vectored write outweighs the copy
/// (a fanned-out event of a few hundred bytes, with its header and separator, is three
/// slices; docs/benchmarks.md).
const JOIN_BELOW: usize = 1024;
/// Largest write joined into the worker thread's buffer, and the most it keeps.
const MAX_SCRATCH: usize = 256 * 1024;

thread_local! {
    /// Where a write of small slices is joined: one per worker thread, none per
    /// connection. Filled and written within one poll, never across an await.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether a write of `slices` slices and `total` bytes is better joined into one buffer
/// (see [`FrameWriter::poll_put_joined`]) than written vectored.
pub(crate) fn joins(slices: usize, total: usize) -> bool {
    total <= MAX_SCRATCH && total < slices * JOIN_BELOW
}

/// Runs `f` on the worker thread's buffer, emptied; keeps its room unless it grew past
/// [`MAX_SCRATCH`].
fn with_scratch<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        let out = f(buf);
        if buf.capacity() > MAX_SCRATCH {
            *buf = Vec::new();
        }
        out
    })
}

/// What both users share.
struct Shared<S> {
    state: Mutex<State<S>>,
    /// The tasks waiting for the socket to take more (see [`Wakers`]).
    wakers: Arc<Wakers>,
    /// `wakers` as the waker every write to the socket registers.
    waker: Waker,
}

/// Under the lock: the socket and what is still to be written to it.
struct State<S> {
    io: S,
    /// The unwritten rest of a write the socket took only in part.
    pending: Vec<u8>,
    /// How much of `pending` is written.
    written: usize,
    /// A close frame went out: whatever is written after it is dropped (RFC 6455 §5.5.1).
    closed: bool,
}

/// The reader and the writer may both wait for the socket to take more, and a socket
/// wakes only the last task that waited: so the socket is given a waker that wakes both.
#[derive(Default)]
struct Wakers {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake();
        self.writer.wake();
    }
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, State<S>> {
        // A panic while holding the lock leaves the state as consistent as a write cut
        // short: the connection goes on or fails on its next write.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    /// Runs `then` on the socket once nothing is pending, `own` (the caller's slot in
    /// [`Wakers`]) woken when the socket can take more.
    fn poll_drained<T>(
        &self,
        own: &AtomicWaker,
        cx: &mut Context<'_>,
        then: impl FnOnce(&mut State<S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        own.register(cx.waker());
        let mut cx = Context::from_waker(&self.waker);
        let mut state = self.lock();
        ready!(state.poll_drain(&mut cx))?;
        then(&mut state, &mut cx)
    }
}

impl<S: AsyncWrite + Unpin> State<S> {
    /// Writes what is pending; ready once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.written > 0 {
            // A full socket is rare: its memory goes back.
            self.pending = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Hands whole frames to the socket, nothing being pending: pending when the socket
    /// takes none of them (nothing is kept), else ready, with what it did not take kept
    /// aside.
    fn poll_put(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let n = match bufs {
            [one] => ready!(Pin::new(&mut self.io).poll_write(cx, one))?,
            _ if joins(bufs.len(), total) || !self.io.is_write_vectored() => {
                // A socket without vectored writes (TLS) would write the first buffer
                // only: it gets them all in one buffer too.
                let io = &mut self.io;
                ready!(with_scratch(|joined| {
                    joined.reserve(total);
                    for b in bufs {
                        joined.extend_from_slice(b);
                    }
                    Pin::new(io).poll_write(cx, joined)
                }))?
            }
            _ => ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?,
        };
        if n == 0 && total > 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        if n < total {
            let mut skip = n;
            self.pending.reserve_exact(total - n);
            for b in bufs {
                let from = skip.min(b.len());
                skip -= from;
                self.pending.extend_from_slice(&b[from..]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The socket as the frame reader uses it: reads as they are; writes (pongs, close
/// replies) as whole frames after anything pending.
pub(crate) struct SharedSocket<S>(Arc<Shared<S>>);

impl<S> SharedSocket<S> {
    /// `io`, to be shared with the [`FrameWriter`] made by [`SharedSocket::writer`].
    pub(crate) fn new(io: S) -> Self {
        let wakers = Arc::new(Wakers::default());
        let waker = Waker::from(wakers.clone());
        Self(Arc::new(Shared {
            state: Mutex::new(State {
                io,
                pending: Vec::new(),
                written: 0,
                closed: false,
            }),
            wakers,
            waker,
        }))
    }

    /// The connection's frame writer.
    pub(crate) fn writer(&self) -> FrameWriter<S> {
        FrameWriter(self.0.clone())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SharedSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedSocket<S> {
    /// Takes all of `buf` or nothing: the reader writes whole frames, so what it hands
    /// over begins and ends at frame boundaries.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &*self.0;
        shared.wakers.reader.register(cx.waker());
        let mut cx = Context::from_waker(&shared.waker);
        let mut state = shared.lock();
        if state.closed {
            return Poll::Ready(Ok(buf.len()));
        }
        if state.pending.len() - state.written > MAX_PENDING_REPLIES {
            ready!(state.poll_drain(&mut cx))?;
        } else if state.poll_drain(&mut cx)?.is_pending() {
            // Behind the writer's rest: kept aside too, in order.
            state.pending.extend_from_slice(buf);
            state.closed = closes(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(state.poll_put(&mut cx, &[IoSlice::new(buf)]))?;
        state.closed = closes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &*self.0;
        shared.poll_drained(&shared.wakers.reader, cx, |state, cx| {
            Pin::new(&mut state.io).poll_flush(cx)
        })
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &*self.0;
        shared.poll_drained(&shared.wakers.reader, cx, |state, cx| {
            Pin::new(&mut state.io).poll_shutdown(cx)
        })
    }
}

/// Whether `frames` (whole unmasked frames, as a server writes them) hold a close frame.
fn closes(mut frames: &[u8]) -> bool {
    while let [first, second, rest @ ..] = frames {
        if first & 0x0F == CLOSE {
            return true;
        }
        let (len, header) = match second & 0x7F {
            126 => (
                rest.get(..2)
                    .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
                4,
            ),
            127 => (
                rest.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                10,
            ),
            n => (Some(u64::from(n)), 2usize),
        };
        let Some(len) = len.and_then(|l| usize::try_from(l).ok()) else {
            return false;
        };
        frames = frames.get(header.saturating_add(len)..).unwrap_or_default();
    }
    false
}

/// The connection's frame writer: writes whole frames, given as slices, ahead of
/// nothing but what is already pending.
pub(crate) struct FrameWriter<S>(Arc<Shared<S>>);

impl<S: AsyncWrite + Unpin> FrameWriter<S> {
    /// Hands whole frames to the socket after what is pending: pending while the socket
    /// takes nothing (nothing of `bufs` is kept then), else ready, with what the socket
    /// did not take kept aside for [`FrameWriter::poll_flush`].
    pub(crate) fn poll_put(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<()>> {
        let shared = &*self.0;
        shared.poll_drained(&shared.wakers.writer, cx, |state, cx| {
            state.poll_put(cx, bufs)
        })
    }

    /// As [`FrameWriter::poll_put`], with the whole frames that `fill` writes into the
    /// worker thread's buffer (emptied first) instead of slices: small frames are
    /// joined there without a list of slices first (see [`joins`]). Ready with what
    /// `fill` returned once the socket took the frames (some may be kept aside).
    pub(crate) fn poll_put_joined<T>(
        &self,
        cx: &mut Context<'_>,
        fill: impl FnOnce(&mut Vec<u8>) -> T,
    ) -> Poll<io::Result<T>> {
        let shared = &*self.0;
        shared.poll_drained(&shared.wakers.writer, cx, |state, cx| {
            with_scratch(|buf| {
                let filled = fill(buf);
                // One slice: written as it is, without the scratch buffer (borrowed here).
                state.poll_put(cx, &[IoSlice::new(buf)]).map_ok(|()| filled)
            })
        })
    }

    /// Writes a close frame after what is pending, unless one went out already (the
    /// reader's answer to the client's close): nothing is written after it.
    pub(crate) fn poll_put_close(
        &self,
        cx: &mut Context<'_>,
        frame: &[u8],
    ) -> Poll<io::Result<()>> {
        let shared = &*self.0;
        shared.poll_drained(&shared.wakers.writer, cx, |state, cx| {
            ready!(state.poll_put(cx, &[IoSlice::new(frame)]))?;
            state.closed = true;
            Poll::Ready(Ok(()))
        })
    }

    /// Writes what is pending and flushes the socket.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &*self.0;
        shared.poll_drained(&shared.wakers.writer, cx, |state, cx| {
            Pin::new(&mut state.io).poll_flush(cx)
        })
    }

    /// Whether a close frame went out.
    #[cfg(test)]
    fn is_closed(&self) -> bool {
        self.0.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn finds_a_close_frame_among_frames() {
        let pong = [0x8A, 0x01, b'x'];
        let close = [0x88, 0x02, 0x03, 0xE8];
        let long_text: Vec<u8> = [0x81, 126, 0x01, 0x00]
            .into_iter()
            .chain(std::iter::repeat_n(b'a', 256))
            .collect();
        assert!(!closes(&pong));
        assert!(closes(&close));
        assert!(closes(&[&pong[..], &long_text, &close].concat()));
        assert!(!closes(&[&pong[..], &long_text].concat()));
        // Truncated input ends the walk without a panic.
        assert!(!closes(&[0x81, 127, 0xFF]));
        assert!(!closes(&[
            0x81, 127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF
        ]));
    }

    /// Frames from both users of a socket that takes 7 bytes at a time arrive whole and
    /// in order.
    #[tokio::test]
    async fn a_full_socket_never_splits_a_frame_between_users() {
        let (server, mut client) = tokio::io::duplex(7);
        let mut socket = SharedSocket::new(server);
        let writer = socket.writer();
        let read_all = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 3];
            while got.len() < 8 + 30 + 4 {
                let n = client.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let first = *b"12345678";
        let second = [*b"abcdefghij", *b"klmnopqrst", *b"uvwxyz0123"];
        // The writer's frames: the socket takes 7 of the first 8 bytes.
        poll_fn(|cx| writer.poll_put(cx, &[IoSlice::new(&first)]))
            .await
            .unwrap();
        // The reader's reply comes after all of them.
        socket.write_all(b"PONG").await.unwrap();
        let slices: Vec<IoSlice<'_>> = second.iter().map(|s| IoSlice::new(s)).collect();
        poll_fn(|cx| writer.poll_put(cx, &slices)).await.unwrap();
        poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), read_all)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"12345678PONGabcdefghijklmnopqrstuvwxyz0123");
    }

    /// Writes of small slices (joined into one buffer first) and of large ones (written
    /// vectored) reach a real socket whole and in order, also when the socket takes
    /// only part of one.
    #[tokio::test]
    async fn joined_and_vectored_writes_arrive_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (accepted, client) = tokio::join!(
            listener.accept(),
            tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        );
        let (socket, mut client) = (SharedSocket::new(accepted.unwrap().0), client.unwrap());
        let writer = socket.writer();
        let small: Vec<Vec<u8>> = (0..300).map(|i| format!("{i};").into_bytes()).collect();
        let large: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 200 * 1024]).collect();
        let sizes = |s: &[Vec<u8>]| (s.len(), s.iter().map(Vec::len).sum::<usize>());
        assert!(joins(sizes(&small).0, sizes(&small).1));
        assert!(!joins(sizes(&large).0, sizes(&large).1));
        assert!(!joins(2, 2 * 100 * 1024), "large slices are not copied");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut expected: Vec<u8> = Vec::new();
        for round in [&small, &large, &small] {
            let slices: Vec<IoSlice<'_>> = round.iter().map(|s| IoSlice::new(s)).collect();
            poll_fn(|cx| writer.poll_put(cx, &slices)).await.unwrap();
            expected.extend(round.iter().flatten());
        }
        poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
        drop((socket, writer));
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrive in the order written");
    }

    #[tokio::test]
    async fn nothing_goes_out_after_a_close_frame() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut socket = SharedSocket::new(server);
        let writer = socket.writer();
        socket.write_all(&[0x88, 0x00]).await.unwrap();
        assert!(writer.is_closed());
        poll_fn(|cx| writer.poll_put(cx, &[IoSlice::new(b"late")]))
            .await
            .unwrap();
        drop((socket, writer));
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0x88, 0x00]);
    }
}
