//! What every WebSocket transport shares: buffer sizes, the [`FrameSink`] the one
//! writer driver ([`super::writer`]) feeds (text or binary frames, joined into one
//! message where the protocol allows it), and how read errors become disconnects.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use switchboard_protocol::Disconnect;

use super::writer::{FrameSink, SinkClosed};
use crate::config::Config;
use crate::event::Frame;

/// Bytes read per read call, and the read buffer a connection starts with. Clients send
/// small commands and the buffer is held for the connection's whole life (it grows to
/// the largest frame received), so it starts small; a larger frame takes several reads.
const READ_BUFFER_SIZE: usize = 256;
/// Bytes of frames gathered before a write: one syscall carries many small pushes.
const WRITE_BUFFER_SIZE: usize = 4096;

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

/// A frame as a WebSocket message of its kind.
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
    }
}

/// Frames gathered into one WebSocket message; frames of one kind only. A lone frame
/// stays as it is (a shared event frame is not copied).
enum Joined {
    Empty,
    One(Frame),
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
            (Self::One(Frame::Text(t)), Frame::Text(f)) => {
                t.len() + sep.len() + f.len() < MAX_JOINED
            }
            (Self::Text(t), Frame::Text(f)) => t.len() + sep.len() + f.len() < MAX_JOINED,
            (Self::One(Frame::Binary(b)), Frame::Binary(f)) => b.len() + f.len() < MAX_JOINED,
            (Self::Binary(b), Frame::Binary(f)) => b.len() + f.len() < MAX_JOINED,
            _ => false,
        };
        let full = if fits { None } else { self.take() };
        *self = match (std::mem::replace(self, Self::Empty), frame) {
            (Self::One(Frame::Text(first)), Frame::Text(f)) => {
                let mut t = String::with_capacity(MAX_JOINED.min((first.len() + f.len()) * 4));
                t.push_str(&first);
                t.push_str(sep);
                t.push_str(&f);
                Self::Text(t)
            }
            (Self::Text(mut t), Frame::Text(f)) => {
                t.push_str(sep);
                t.push_str(&f);
                Self::Text(t)
            }
            (Self::One(Frame::Binary(first)), Frame::Binary(f)) => {
                let mut b = Vec::with_capacity(MAX_JOINED.min((first.len() + f.len()) * 4));
                b.extend_from_slice(&first);
                b.extend_from_slice(&f);
                Self::Binary(b)
            }
            (Self::Binary(mut b), Frame::Binary(f)) => {
                b.extend_from_slice(&f);
                Self::Binary(b)
            }
            // Empty (a message that did not fit was taken above).
            (_, f) => Self::One(f),
        };
        full
    }

    /// The message gathered, if any; leaves this empty.
    fn take(&mut self) -> Option<Message> {
        match std::mem::replace(self, Self::Empty) {
            Self::Empty => None,
            Self::One(f) => Some(message(f)),
            Self::Text(t) => Some(Message::Text(t.into())),
            Self::Binary(b) => Some(Message::Binary(b.into())),
        }
    }
}

/// The write half of a WebSocket as the writer driver's sink.
pub(crate) struct WsSink {
    sink: SplitSink<WebSocket, Message>,
    /// When the protocol allows several frames in one WebSocket message, what separates
    /// text frames (a newline for Centrifugo's JSON protocol). Binary frames are joined
    /// as they are: the protocols that allow it delimit their messages themselves.
    join: Option<&'static str>,
    joined: Joined,
}

impl WsSink {
    /// A sink writing one message per frame, or joining the frames of one batch with
    /// `join` (see the `join` field).
    pub(crate) fn new(sink: SplitSink<WebSocket, Message>, join: Option<&'static str>) -> Self {
        Self {
            sink,
            join,
            joined: Joined::Empty,
        }
    }
}

impl FrameSink for WsSink {
    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        // Several queued frames in one message: one frame header, and one message for
        // the client to take apart, instead of one per push. Only what one batch holds
        // is joined; nothing waits for company.
        let ready = match self.join {
            Some(sep) => self.joined.push(frame, sep),
            None => Some(message(frame)),
        };
        match ready {
            Some(m) => self.sink.feed(m).await.map_err(|_| SinkClosed),
            None => Ok(()),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkClosed> {
        if let Some(last) = self.joined.take() {
            self.sink.feed(last).await.map_err(|_| SinkClosed)?;
        }
        self.sink.flush().await.map_err(|_| SinkClosed)
    }

    async fn close(mut self, reason: Disconnect) {
        let frame = CloseFrame {
            code: reason.code,
            reason: reason.reason.into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
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
