//! What every WebSocket transport shares: the [`FrameSink`] the one writer driver
//! ([`super::writer`]) feeds (text or binary frames, joined into one message where the
//! protocol allows it, or compressed where permessage-deflate was negotiated), and the
//! frames a server writes. The handshake is [`super::upgrade`]'s.
//!
//! Frames are written by switchboard: a batch goes out in one write system call of frame
//! headers and payloads ([`super::socket`]: small ones joined in the worker thread's
//! buffer, large ones straight from their shared buffers), so no connection holds a
//! write buffer. What the client sends is read by [`FrameReader`].

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};

use switchboard_protocol::Disconnect;
use tokio::io::{AsyncRead, AsyncWrite};
pub(crate) use tungstenite::Message;

use super::deflate;
pub(crate) use super::frame_reader::FrameReader;
use super::socket::{self, FrameWriter};
use super::upgrade::Socket;
pub(crate) use super::upgrade::{Deflate, WebSocket, WsUpgrade};
use super::writer::{FrameSink, SinkClosed};
use crate::config::Config;
use crate::event::{Codec, Frame};

/// Largest WebSocket message made of several joined frames.
const MAX_JOINED: usize = 64 * 1024;
/// Most slices in one vectored write (a header, a payload and a separator per frame):
/// room for a whole writer batch (`writer::BATCH`) in one system call. A write is most
/// of a delivery's cost on loopback and on the wire; with 64 slices a burst went out in
/// twice as many writes (docs/benchmarks.md). The slices live on the stack, not in a
/// connection.
const SLICES: usize = 2 * super::writer::BATCH;
/// Bytes of messages one joined write holds at most (a message started below it is
/// finished): within what the worker thread's buffer keeps.
const JOINED_WRITE: usize = 128 * 1024;
/// Frames a sink keeps room for between batches: a lone one, what a quiet connection
/// writes most (its pings, a reply, a delivery). A burst's room goes back after its
/// write, as the writer's batch does.
const KEEP_FRAMES: usize = 1;
/// Opcodes (RFC 6455 §5.2).
pub(super) const CONTINUATION: u8 = 0x0;
pub(super) const TEXT: u8 = 0x1;
pub(super) const BINARY: u8 = 0x2;
pub(super) const CLOSE: u8 = 0x8;
pub(super) const PING: u8 = 0x9;
pub(super) const PONG: u8 = 0xA;
/// The longest control frame payload (RFC 6455 §5.5).
pub(super) const MAX_CONTROL: usize = 125;

/// What writes to a connection: the frame writer of its shared socket.
pub(crate) struct WriteHalf<S = Socket> {
    writer: FrameWriter<S>,
}

/// Splits an upgraded connection into what writes to it and what reads it.
pub(crate) fn split<S>(socket: WebSocket<S>) -> (WriteHalf<S>, FrameReader<S>) {
    let writer = socket.socket.writer();
    let reader = FrameReader::new(socket.socket, socket.deflate, socket.max);
    (WriteHalf { writer }, reader)
}

/// `frame` compressed for connections that negotiated permessage-deflate, when it is
/// at least `min_size` long; else as it is.
pub(crate) fn deflated(frame: Frame, deflate: Deflate) -> Frame {
    if frame.len() < deflate.min_size {
        return frame;
    }
    let binary = match &frame {
        Frame::Text(_) => false,
        Frame::Binary(_) => true,
        Frame::Deflated { .. } => return frame,
    };
    match deflate::compress(frame.as_bytes(), deflate.level) {
        Some(payload) => Frame::Deflated { payload, binary },
        None => frame,
    }
}

/// `frame` compressed as the node's configuration says: how a compressed codec
/// ([`Codec::compressed`]) compresses an event once for all its recipients.
fn deflated_event(frame: &Frame, config: &Config) -> Frame {
    deflated(frame.clone(), Deflate::of(config))
}

/// The codec a connection's session uses: `codec`, or its compressed form when the
/// connection negotiated permessage-deflate (each event is then compressed once, and
/// the compressed message shared by every such connection).
pub(crate) fn codec(codec: &'static Codec, deflate: Option<Deflate>) -> &'static Codec {
    if deflate.is_none() {
        return codec;
    }
    // One compressed form per codec for the process's life (a session keeps a
    // reference to its codec): made on first use, found by the plain codec's address.
    static COMPRESSED: Mutex<Vec<(usize, &'static Codec)>> = Mutex::new(Vec::new());
    let key = std::ptr::from_ref(codec) as usize;
    let mut made = COMPRESSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = made.iter().find(|(k, _)| *k == key) {
        return c;
    }
    let compressed: &'static Codec = Box::leak(Box::new(codec.compressed(deflated_event)));
    made.push((key, compressed));
    compressed
}

/// A frame's opcode and RSV1 bit (set on compressed messages).
fn kind(frame: &Frame) -> (u8, bool) {
    match frame {
        Frame::Text(_) => (TEXT, false),
        Frame::Binary(_) => (BINARY, false),
        Frame::Deflated { binary, .. } => (if *binary { BINARY } else { TEXT }, true),
    }
}

/// Writes a final, unmasked frame header for a payload of `len` bytes into `out`;
/// returns its length.
fn header(opcode: u8, rsv1: bool, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | if rsv1 { 0x40 } else { 0 } | opcode;
    if len < 126 {
        out[1] = len as u8;
        return 2;
    }
    if let Ok(medium) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&medium.to_be_bytes());
        return 4;
    }
    out[1] = 127;
    out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
    10
}

/// A server's (unmasked) control frame with `payload` (cut to 125 bytes).
pub(super) fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_CONTROL)];
    let mut head = [0u8; 10];
    let head_len = header(opcode, false, payload.len(), &mut head);
    [&head[..head_len], payload].concat()
}

/// A close frame carrying `code` and `reason` (cut to fit, at a character boundary).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    control_frame(CLOSE, &payload[..2 + end])
}

/// A message of a write: the frames up to `end` (from the previous message's end),
/// `len` bytes joined with `sep`, taking `slices` slices of a vectored write with its
/// header of `header` bytes.
#[derive(Clone, Copy, Default)]
struct Planned {
    end: usize,
    len: usize,
    sep: &'static str,
    slices: usize,
    header: usize,
}

/// What separates `frame` from `before` when a protocol joins frames with `sep`: `sep`
/// between text frames, nothing between binary ones; `None` when they can not share a
/// message (different kinds, or compressed).
fn separator(before: &Frame, frame: &Frame, sep: &'static str) -> Option<&'static str> {
    match (before, frame) {
        (Frame::Text(_), Frame::Text(_)) => Some(sep),
        (Frame::Binary(_), Frame::Binary(_)) => Some(""),
        _ => None,
    }
}

/// The write half of a WebSocket as the writer driver's sink.
pub(crate) struct WsSink<S = Socket> {
    writer: FrameWriter<S>,
    /// When the protocol allows several frames in one WebSocket message, what separates
    /// text frames (a newline for Centrifugo's JSON protocol). Binary frames are joined
    /// as they are: the protocols that allow it delimit their messages themselves.
    join: Option<&'static str>,
    /// How frames are compressed, when permessage-deflate was negotiated.
    deflate: Option<Deflate>,
    /// Frames fed since the last flush: their buffers are shared, not copied.
    frames: Vec<Frame>,
    /// How many of `frames` the socket has taken.
    sent: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WsSink<S> {
    /// A sink writing one message per frame, or joining the frames of one batch with
    /// `join` (see the `join` field); with `deflate`, frames are not joined but
    /// compressed (a shared compressed event as it is, others one by one).
    pub(crate) fn new(
        half: WriteHalf<S>,
        join: Option<&'static str>,
        deflate: Option<Deflate>,
    ) -> Self {
        Self {
            writer: half.writer,
            join: if deflate.is_some() { None } else { join },
            deflate,
            frames: Vec::new(),
            sent: 0,
        }
    }

    /// Writes `frame` now (a message sent before the writer driver takes over).
    pub(crate) async fn send(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// The separator between `frame` and the frame before it in one message, or `None`
    /// when `frame` starts a message of its own.
    fn joins(&self, before: &Frame, frame: &Frame, len: usize) -> Option<&'static str> {
        let sep = separator(before, frame, self.join?)?;
        (len + sep.len() + frame.len() <= MAX_JOINED).then_some(sep)
    }

    /// The message that starts at frame `at`: as many frames as join it, within `room`
    /// slices of a vectored write (its first frame whatever the room).
    fn message_at(&self, at: usize, room: usize) -> Planned {
        let mut m = Planned {
            end: at + 1,
            len: self.frames[at].len(),
            sep: "",
            slices: 2,
            header: 0,
        };
        // Frames join only their own kind, so one message has one separator.
        while let Some(next) = self.frames.get(m.end) {
            let Some(sep) = self.joins(&self.frames[m.end - 1], next, m.len) else {
                break;
            };
            let more = if sep.is_empty() { 1 } else { 2 };
            if m.slices + more > room {
                break;
            }
            m.sep = sep;
            m.len += sep.len() + next.len();
            m.slices += more;
            m.end += 1;
        }
        m
    }

    /// Whether the next write joins its frames in the worker thread's buffer: frames
    /// of a few hundred bytes, as most events are, cost the kernel more as slices of a
    /// vectored write than the copy costs (two slices a frame: header or separator,
    /// and payload).
    fn joined_write(&self) -> bool {
        let next = &self.frames[self.sent..];
        let next = &next[..next.len().min(SLICES / 2)];
        socket::joins(2 * next.len(), next.iter().map(Frame::len).sum())
    }

    /// Writes the messages from the first frame not yet taken into `buf`, until it
    /// holds [`JOINED_WRITE`] bytes; returns where they end.
    fn fill(&self, buf: &mut Vec<u8>) -> usize {
        let mut at = self.sent;
        while at < self.frames.len() && buf.len() < JOINED_WRITE {
            let m = self.message_at(at, usize::MAX);
            let (opcode, rsv1) = kind(&self.frames[at]);
            let mut head = [0u8; 10];
            let head_len = header(opcode, rsv1, m.len, &mut head);
            buf.reserve(head_len + m.len);
            buf.extend_from_slice(&head[..head_len]);
            for i in at..m.end {
                if i > at {
                    buf.extend_from_slice(m.sep.as_bytes());
                }
                buf.extend_from_slice(self.frames[i].as_bytes());
            }
            at = m.end;
        }
        at
    }

    /// Writes the frames from the first not yet taken as one vectored write, straight
    /// from their buffers; ready with where the frames it took end.
    fn poll_write_vectored(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // The messages of this write and their headers, then the slices: the slices
        // borrow the headers.
        let mut headers = [[0u8; 10]; SLICES / 2];
        let mut messages = [Planned::default(); SLICES / 2];
        let (mut count, mut slices_needed) = (0, 0);
        let mut at = self.sent;
        while at < self.frames.len() && count < messages.len() {
            let mut m = self.message_at(at, SLICES - slices_needed);
            if count > 0 && slices_needed + m.slices > SLICES {
                break;
            }
            let (opcode, rsv1) = kind(&self.frames[at]);
            m.header = header(opcode, rsv1, m.len, &mut headers[count]);
            messages[count] = m;
            slices_needed += m.slices;
            count += 1;
            at = m.end;
        }
        let mut slices = [IoSlice::new(&[]); SLICES];
        let mut n = 0;
        let mut from = self.sent;
        for (m, h) in messages[..count].iter().zip(&headers) {
            slices[n] = IoSlice::new(&h[..m.header]);
            n += 1;
            for i in from..m.end {
                if i > from && !m.sep.is_empty() {
                    slices[n] = IoSlice::new(m.sep.as_bytes());
                    n += 1;
                }
                slices[n] = IoSlice::new(self.frames[i].as_bytes());
                n += 1;
            }
            from = m.end;
        }
        ready!(self.writer.poll_put(cx, &slices[..n]))?;
        Poll::Ready(Ok(from))
    }

    /// Writes the frames not yet taken, a write at a time.
    fn poll_write_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.frames.len() {
            self.sent = if self.joined_write() {
                ready!(self.writer.poll_put_joined(cx, |buf| self.fill(buf)))?
            } else {
                ready!(self.poll_write_vectored(cx))?
            };
        }
        self.frames.clear();
        self.sent = 0;
        if self.frames.capacity() > KEEP_FRAMES {
            self.frames = Vec::new();
        }
        self.writer.poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameSink for WsSink<S> {
    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        // Only what one batch holds is joined; nothing waits for company. A compressed
        // connection does not join: a joined message would be compressed per
        // connection, while an event's compressed message is shared.
        let frame = match self.deflate {
            Some(d) => deflated(frame, d),
            None => frame,
        };
        self.frames.push(frame);
        Ok(())
    }

    fn reserve(&mut self, frames: usize) {
        // Exactly: most batches of a quiet connection are a lone frame, and room for one
        // is kept between batches (a first push would make room for 4).
        self.frames.reserve_exact(frames);
    }

    async fn flush(&mut self) -> Result<(), SinkClosed> {
        poll_fn(|cx| self.poll_write_frames(cx))
            .await
            .map_err(|_| SinkClosed)
    }

    async fn close(mut self, reason: Disconnect) {
        if self.flush().await.is_err() {
            return;
        }
        // Not sent when the client closed first: the reader answered with the client's
        // own code (RFC 6455 §5.5.1), and nothing goes out after a close frame.
        let frame = close_frame(reason.code, reason.reason);
        let writer = &self.writer;
        let _ = poll_fn(|cx| writer.poll_put_close(cx, &frame)).await;
        let _ = poll_fn(|cx| writer.poll_flush(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_frame_fits_its_reason_at_a_character_boundary() {
        let frame = close_frame(4000, &"é".repeat(100));
        assert_eq!(frame[1], 2 + 122);
        assert_eq!(frame[2..4], 4000u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!(header(TEXT, false, 5, &mut h), 2);
        assert_eq!(h[..2], [0x81, 5]);
        assert_eq!(header(BINARY, true, 125, &mut h), 2);
        assert_eq!(h[..2], [0xC2, 125]);
        assert_eq!(header(TEXT, false, 126, &mut h), 4);
        assert_eq!(h[..4], [0x81, 126, 0, 126]);
        assert_eq!(header(TEXT, false, 65_535, &mut h), 4);
        assert_eq!(h[..4], [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(header(CLOSE, false, 65_536, &mut h), 10);
        assert_eq!(h[..10], [0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    /// What a WebSocket client reads over `client` until a close frame: text split into
    /// lines, binary payloads concatenated, and the close frame, each message no longer
    /// than a joined message may be.
    async fn client_reads(
        client: tokio::io::DuplexStream,
    ) -> (
        Vec<String>,
        Vec<u8>,
        Option<tungstenite::protocol::CloseFrame>,
    ) {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tungstenite::protocol::Role;

        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let (mut lines, mut binary) = (Vec::new(), Vec::new());
        while let Some(Ok(m)) = client.next().await {
            match m {
                Message::Text(t) => {
                    assert!(t.len() <= MAX_JOINED, "joined messages stay within bounds");
                    lines.extend(t.as_str().split('\n').map(str::to_owned));
                }
                Message::Binary(b) => binary.extend_from_slice(&b),
                Message::Close(c) => return (lines, binary, c),
                other => panic!("unexpected {other:?}"),
            }
        }
        (lines, binary, None)
    }

    /// What a WebSocket client reads of a batch written through a socket that takes
    /// 16 bytes at a time: text frames joined by lines, binary ones as they are, the
    /// kinds in order, then the close frame with its code and reason. Both kinds come
    /// in more than one vectored write holds.
    #[tokio::test]
    async fn a_client_reads_joined_messages_and_the_close_of_a_batch() {
        let (server, client) = tokio::io::duplex(16);
        let (half, _reader) = split(WebSocket::new(server, false, usize::MAX));
        let mut sink = WsSink::new(half, Some("\n"), None);
        let long = "x".repeat(300);
        let texts: Vec<String> = (0..SLICES + 100).map(|i| format!("{i}")).collect();
        let bytes: Vec<u8> = (0..SLICES).map(|i| i as u8).collect();
        let read = tokio::spawn(client_reads(client));
        for t in &texts[..SLICES] {
            sink.feed(Frame::from(t.clone())).await.unwrap();
        }
        sink.feed(Frame::from(long.clone())).await.unwrap();
        for b in &bytes {
            sink.feed(Frame::Binary(vec![*b].into())).await.unwrap();
        }
        sink.flush().await.unwrap();
        for t in &texts[SLICES..] {
            sink.feed(Frame::from(t.clone())).await.unwrap();
        }
        sink.close(Disconnect::SHUTDOWN).await;
        let (lines, binary, close) = tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        let mut want = texts[..SLICES].to_vec();
        want.push(long);
        want.extend_from_slice(&texts[SLICES..]);
        assert_eq!(lines, want);
        assert_eq!(binary, bytes);
        let close = close.expect("a close frame");
        assert_eq!(u16::from(close.code), Disconnect::SHUTDOWN.code);
        assert_eq!(close.reason.as_str(), Disconnect::SHUTDOWN.reason);
    }

    /// Frames of a few KiB go out vectored (not copied), in more than one write, and a
    /// client reads them whole and in order, joined text beside binary.
    #[tokio::test]
    async fn a_client_reads_large_frames_written_vectored() {
        let (server, client) = tokio::io::duplex(4096);
        let (half, _reader) = split(WebSocket::new(server, false, usize::MAX));
        let mut sink = WsSink::new(half, Some("\n"), None);
        let texts: Vec<String> = (0..SLICES).map(|i| format!("{i:04}").repeat(750)).collect();
        let blobs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 5000]).collect();
        let read = tokio::spawn(client_reads(client));
        for t in &texts {
            sink.feed(Frame::from(t.clone())).await.unwrap();
        }
        for b in &blobs {
            sink.feed(Frame::Binary(b.clone().into())).await.unwrap();
        }
        assert!(!sink.joined_write(), "frames of 3,000 bytes are not copied");
        sink.flush().await.unwrap();
        sink.close(Disconnect::SHUTDOWN).await;
        let (lines, binary, close) = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lines, texts);
        assert_eq!(binary, blobs.concat());
        assert!(close.is_some(), "the close frame comes last");
    }
}
