//! What every WebSocket transport shares: buffer sizes, the one writer that drains a
//! session's outbox and flushes once per batch (text or binary frames), and how read
//! errors become disconnects.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use switchboard_protocol::Disconnect;

use crate::config::Config;
use crate::event::{Frame, Outgoing};
use crate::session::Session;

/// Bytes read per read call, and the read buffer a connection starts with. Clients send
/// small commands and the buffer is held for the connection's whole life (it grows to
/// the largest frame received), so it starts small; a larger frame takes several reads.
const READ_BUFFER_SIZE: usize = 256;
/// Bytes of frames gathered before a write: one syscall carries many small pushes.
const WRITE_BUFFER_SIZE: usize = 4096;
/// Batch capacity a writer keeps between bursts.
const KEEP_BATCH: usize = 32;
/// Most outbox items taken for one write: enough to fill the write buffer several times
/// over, few enough that the batch stays small under fan-out.
pub(crate) const BATCH: usize = 64;

/// Applies switchboard's buffer sizes and the configured message size limit.
pub(crate) fn configure(ws: WebSocketUpgrade, config: &Config) -> WebSocketUpgrade {
    let max = config.limits.max_message_size;
    ws.read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max)
        .max_frame_size(max)
}

/// Largest WebSocket message made of several joined frames: the write buffer's size,
/// so joining adds no memory beyond it under fan-out (tungstenite keeps its write
/// buffer's capacity, sized by the largest message written).
const MAX_JOINED: usize = WRITE_BUFFER_SIZE;

/// How a transport turns outbox items into frames, and what it says before closing.
#[derive(Clone, Copy)]
pub(crate) struct Wire {
    /// Encodes one outbox item.
    pub(crate) encode: fn(Outgoing) -> Frame,
    /// When the protocol allows several frames in one WebSocket message, what separates
    /// text frames (a newline for Centrifugo's JSON protocol). Binary frames are joined
    /// as they are: the protocols that allow it delimit their messages themselves.
    pub(crate) join: Option<&'static str>,
    /// Frames sent before the close frame (the protocol's own disconnect message).
    pub(crate) farewell: fn(&Session, Disconnect) -> Vec<Frame>,
    /// The close code and reason the client is sent for a disconnect: the protocol's
    /// own numbers where its clients act on them (Pusher's 4000-4299), the
    /// disconnect as it is otherwise ([`same_close`]).
    pub(crate) close: fn(Disconnect) -> Disconnect,
}

/// Closes with switchboard's own code and reason.
pub(crate) fn same_close(reason: Disconnect) -> Disconnect {
    reason
}

/// A frame as a WebSocket message of its kind.
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
    }
}

/// Frames gathered into one WebSocket message; frames of one kind only.
enum Joined {
    Empty,
    Text(String),
    Binary(Vec<u8>),
}

impl Joined {
    /// Adds `frame`. Returns the message gathered so far when `frame` does not join
    /// it (it is of the other kind, or the message would grow past [`MAX_JOINED`]):
    /// send that first.
    fn push(&mut self, frame: Frame, sep: &str) -> Option<Message> {
        let fits = match (&*self, &frame) {
            (Self::Empty, _) => true,
            (Self::Text(t), Frame::Text(f)) => t.len() + sep.len() + f.len() < MAX_JOINED,
            (Self::Binary(b), Frame::Binary(f)) => b.len() + f.len() < MAX_JOINED,
            _ => false,
        };
        let full = if fits { None } else { self.take() };
        match (&mut *self, frame) {
            (Self::Text(t), Frame::Text(f)) => {
                t.push_str(sep);
                t.push_str(&f);
            }
            (Self::Binary(b), Frame::Binary(f)) => b.extend_from_slice(&f),
            (joined, Frame::Text(f)) => {
                let mut t = String::with_capacity(MAX_JOINED.min(f.len() * 8));
                t.push_str(&f);
                *joined = Self::Text(t);
            }
            (joined, Frame::Binary(f)) => {
                let mut b = Vec::with_capacity(MAX_JOINED.min(f.len() * 8));
                b.extend_from_slice(&f);
                *joined = Self::Binary(b);
            }
        }
        full
    }

    /// The message gathered, if any; leaves this empty.
    fn take(&mut self) -> Option<Message> {
        match std::mem::replace(self, Self::Empty) {
            Self::Empty => None,
            Self::Text(t) => Some(Message::Text(t.into())),
            Self::Binary(b) => Some(Message::Binary(b.into())),
        }
    }
}

/// Writes the session's outbox to the socket until the session closes, then what was
/// still queued, the farewell and a close frame with the disconnect code.
pub(crate) async fn write_loop(sink: SplitSink<WebSocket, Message>, session: &Session, wire: Wire) {
    write_loop_with(sink, session, wire, wire.encode).await;
}

/// [`write_loop`] with an encoder of the transport's own, which may note what it
/// writes (Socket.IO's recovery remembers the order of publications).
pub(crate) async fn write_loop_with(
    mut sink: SplitSink<WebSocket, Message>,
    session: &Session,
    wire: Wire,
    encode: impl Fn(Outgoing) -> Frame + Send,
) {
    let mut batch = Vec::new();
    // Registered once: a fresh `cancelled()` per batch would lock the token's waiter list
    // on every wake-up. Polled last: while there is work, a cheap flag check suffices.
    let cancelled = session.closed().cancelled();
    tokio::pin!(cancelled);
    loop {
        if session.closed().is_cancelled() {
            break;
        }
        tokio::select! {
            biased;
            // Cancel-safe: `recv_many` loses nothing when dropped.
            _ = session.outbox().recv_many(&mut batch, BATCH) => {}
            // Cancel-safe: polling by reference keeps the registration.
            () = &mut cancelled => break,
        }
        observe_latency(session, &batch);
        let write = async {
            match wire.join {
                // Several queued frames in one message: one frame header, and one message
                // for the client to take apart, instead of one per push. Only what is
                // already queued is joined; nothing waits for company.
                Some(sep) if batch.len() > 1 => {
                    let mut joined = Joined::Empty;
                    for item in batch.drain(..) {
                        if let Some(full) = joined.push(encode(item), sep) {
                            sink.feed(full).await?;
                        }
                    }
                    if let Some(last) = joined.take() {
                        sink.feed(last).await?;
                    }
                }
                _ => {
                    for item in batch.drain(..) {
                        sink.feed(message(encode(item))).await?;
                    }
                }
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            r = write => if r.is_err() {
                session.close(Disconnect::WRITE_ERROR);
                break;
            },
            // A client that stopped reading blocks the write; closing must not wait for it.
            () = &mut cancelled => break,
        }
        // Give a burst's memory back: idle connections are the common case.
        if batch.capacity() > KEEP_BATCH {
            batch = Vec::new();
        }
    }
    let reason = session.disconnect_reason();
    // What was queued before the close (an error reply, say) still goes out, unless the
    // client is closed for being slow: then it would not read it anyway.
    let flush_rest = async {
        if reason != Disconnect::SLOW && reason != Disconnect::WRITE_ERROR {
            batch.clear();
            while let Some(item) = session.outbox().try_recv() {
                if sink.feed(message(encode(item))).await.is_err() {
                    return;
                }
            }
            for frame in (wire.farewell)(session, reason) {
                if sink.feed(message(frame)).await.is_err() {
                    return;
                }
            }
        }
        let close = (wire.close)(reason);
        let frame = CloseFrame {
            code: close.code,
            reason: close.reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    };
    // Boxed: only closing connections pay for this state. Bounded like the lingering
    // close that follows: a client that does not read never gets the close frame.
    let linger = session.node().config.network.close_linger;
    let _ = Box::pin(tokio::time::timeout(linger, flush_rest)).await;
}

/// Records publish-to-write latency once per batch, for its oldest channel event: one
/// sample per write instead of three shared atomic updates per delivery.
pub(crate) fn observe_latency(session: &Session, batch: &[Outgoing]) {
    let oldest = batch.iter().find_map(|item| match item {
        Outgoing::Event { published, .. } => Some(*published),
        _ => None,
    });
    if let Some(published) = oldest {
        let waited = std::time::Instant::now().saturating_duration_since(published);
        session.node().metrics.delivery_latency.observe(waited);
    }
}

/// The disconnect a failed read stands for.
pub(crate) fn read_error(e: axum::Error) -> Disconnect {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Disconnect::MESSAGE_TOO_LARGE,
        Some(tungstenite::Error::Utf8(_)) => Disconnect::INVALID_PAYLOAD,
        // The client went away without a close frame: there is no one to tell.
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => Disconnect::CONNECTION_CLOSED,
        Some(tungstenite::Error::Protocol(_)) => Disconnect::PROTOCOL_ERROR,
        _ => Disconnect::CONNECTION_CLOSED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(m: Message) -> (bool, Vec<u8>) {
        match m {
            Message::Text(t) => (true, t.as_bytes().to_vec()),
            Message::Binary(b) => (false, b.to_vec()),
            _ => panic!("not a data message"),
        }
    }

    #[test]
    fn joins_frames_of_one_kind_into_one_message() {
        let mut joined = Joined::Empty;
        assert!(joined.push(Frame::from_static("a"), "\n").is_none());
        assert!(joined.push(Frame::from_static("b"), "\n").is_none());
        // A binary frame does not join text: the text goes first.
        let text = joined.push(Frame::from(vec![1, 2]), "\n").unwrap();
        assert_eq!(bytes(text), (true, b"a\nb".to_vec()));
        // Binary frames are joined as they are (they delimit themselves).
        assert!(joined.push(Frame::from(vec![3]), "\n").is_none());
        assert_eq!(bytes(joined.take().unwrap()), (false, vec![1, 2, 3]));
        assert!(joined.take().is_none());
        // Past MAX_JOINED a new message starts.
        let big = Frame::from("x".repeat(MAX_JOINED - 1));
        assert!(joined.push(big, "\n").is_none());
        let full = joined.push(Frame::from_static("y"), "\n").unwrap();
        assert_eq!(bytes(full).1.len(), MAX_JOINED - 1);
        assert_eq!(bytes(joined.take().unwrap()), (true, b"y".to_vec()));
    }
}
