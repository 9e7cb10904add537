//! A streaming HTTP response as the writer driver's sink: frames laid out as the
//! transport frames them (lines, length-delimited messages, server-sent events),
//! gathered into one chunk per batch, and handed to the response body.
//!
//! The body is bounded (a couple of chunks): a client that stops reading stops the
//! writer, its outbox fills, and it is closed as slow (3008) like a WebSocket client.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use switchboard_protocol::Disconnect;
use tokio::sync::mpsc;

use crate::event::Frame;
use crate::session::Session;
use crate::transport::writer::{FrameSink, SinkClosed};

/// Chunks written ahead of the client: enough to keep the socket busy while the next
/// batch is encoded.
const CHUNKS_AHEAD: usize = 2;
/// Bytes gathered before a chunk goes out mid-batch: one write carries many pushes.
const CHUNK_SIZE: usize = 4096;

/// How frames are laid out on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Each frame and a newline (JSON).
    Lines,
    /// Frames as they are: length-delimited Protobuf delimits itself.
    Delimited,
    /// Each frame as a server-sent event, `data: <frame>\n\n`. JSON frames hold no
    /// newline, so one `data:` line carries the whole frame.
    Events,
}

/// The write side: what the writer driver feeds.
pub(crate) struct StreamSink {
    chunks: mpsc::Sender<Bytes>,
    buf: BytesMut,
    framing: Framing,
}

/// The read side: the response body hyper writes to the socket.
pub(crate) struct ResponseBody {
    chunks: mpsc::Receiver<Bytes>,
    /// Closed when the body is dropped: hyper drops it when the client goes away.
    session: Arc<Session>,
}

/// A streaming response's sink and body for `session`. `preamble` goes out first (an
/// empty line makes intermediaries pass an SSE stream's headers on at once).
pub(crate) fn stream(
    session: Arc<Session>,
    framing: Framing,
    preamble: Option<&'static [u8]>,
) -> (StreamSink, ResponseBody) {
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    if let Some(p) = preamble {
        // The channel is new and empty: this can not fail.
        let _ = tx.try_send(Bytes::from_static(p));
    }
    let sink = StreamSink {
        chunks: tx,
        buf: BytesMut::new(),
        framing,
    };
    (
        sink,
        ResponseBody {
            chunks: rx,
            session,
        },
    )
}

impl StreamSink {
    async fn send(&mut self) -> Result<(), SinkClosed> {
        // `split` hands the bytes over and leaves no allocation behind: an idle
        // connection's buffer holds no memory.
        let chunk = self.buf.split().freeze();
        self.chunks.send(chunk).await.map_err(|_| SinkClosed)
    }
}

impl FrameSink for StreamSink {
    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        let bytes = frame.as_bytes();
        match self.framing {
            Framing::Lines => {
                self.buf.reserve(bytes.len() + 1);
                self.buf.extend_from_slice(bytes);
                self.buf.extend_from_slice(b"\n");
            }
            Framing::Delimited => self.buf.extend_from_slice(bytes),
            Framing::Events => {
                self.buf.reserve(bytes.len() + 8);
                self.buf.extend_from_slice(b"data: ");
                self.buf.extend_from_slice(bytes);
                self.buf.extend_from_slice(b"\n\n");
            }
        }
        if self.buf.len() >= CHUNK_SIZE {
            self.send().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkClosed> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send().await
    }

    /// The stream ends: the disconnect went out as a push (the farewell) before.
    async fn close(self, _reason: Disconnect) {}
}

impl Stream for ResponseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The client went away (or the stream ended after a close: then this is no-op,
        // the first reason stays).
        self.session.close(Disconnect::CONNECTION_CLOSED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_laid_out_as_the_transport_frames_them() {
        for (framing, want) in [
            (Framing::Lines, &b"{\"a\":1}\n{}\n"[..]),
            (Framing::Events, &b"data: {\"a\":1}\n\ndata: {}\n\n"[..]),
            (Framing::Delimited, &b"{\"a\":1}{}"[..]),
        ] {
            let (tx, mut rx) = mpsc::channel(CHUNKS_AHEAD);
            let mut sink = StreamSink {
                chunks: tx,
                buf: BytesMut::new(),
                framing,
            };
            sink.feed(Frame::from_static("{\"a\":1}")).await.unwrap();
            sink.feed(Frame::from_static("{}")).await.unwrap();
            sink.flush().await.unwrap();
            // One batch, one chunk.
            assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(want));
            sink.close(Disconnect::SHUTDOWN).await;
            assert!(rx.recv().await.is_none(), "the stream ends at the close");
        }
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        drop(rx);
        let mut sink = StreamSink {
            chunks: tx,
            buf: BytesMut::new(),
            framing: Framing::Lines,
        };
        sink.feed(Frame::from_static("x")).await.unwrap();
        assert!(sink.flush().await.is_err(), "a gone client fails the write");
    }
}
