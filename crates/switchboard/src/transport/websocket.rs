//! What every WebSocket transport shares: the [`FrameSink`] the one writer driver
//! ([`super::writer`]) feeds (text or binary frames, joined into one message where the
//! protocol allows it, or compressed where permessage-deflate was negotiated), and how
//! read errors become disconnects. The handshake is [`super::upgrade`]'s.

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use switchboard_protocol::Disconnect;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame as WireFrame, FrameHeader};
use tungstenite::protocol::CloseFrame;
pub(crate) use tungstenite::Message;

use super::deflate::{self, InflateError};
use super::upgrade::WRITE_BUFFER_SIZE;
pub(crate) use super::upgrade::{Deflate, WebSocket, WsUpgrade};
use super::writer::{FrameSink, SinkClosed};
use crate::config::Config;
use crate::event::{Codec, Frame};

/// Largest WebSocket message made of several joined frames: the write buffer's size,
/// so joining adds no memory beyond it under fan-out (tungstenite keeps its write
/// buffer's capacity, sized by the largest message written).
const MAX_JOINED: usize = WRITE_BUFFER_SIZE;

/// A frame as a WebSocket message of its kind.
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
        Frame::Deflated { payload, binary } => {
            let header = FrameHeader {
                rsv1: true,
                opcode: OpCode::Data(if binary { Data::Binary } else { Data::Text }),
                ..FrameHeader::default()
            };
            Message::Frame(WireFrame::from_payload(header, payload))
        }
    }
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

/// `frame` as the message a connection sends outside its writer (Socket.IO's open
/// packet): compressed as the writer would.
pub(crate) fn message_for(frame: Frame, deflate: Option<Deflate>) -> Message {
    match deflate {
        Some(d) => message(deflated(frame, d)),
        None => message(frame),
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
pub(crate) fn codec(codec: Codec, deflate: Option<Deflate>) -> Codec {
    match deflate {
        Some(_) => codec.compressed(deflated_event),
        None => codec,
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
    /// How frames are compressed, when permessage-deflate was negotiated.
    deflate: Option<Deflate>,
}

impl WsSink {
    /// A sink writing one message per frame, or joining the frames of one batch with
    /// `join` (see the `join` field); with `deflate`, frames are not joined but
    /// compressed (a shared compressed event as it is, others one by one).
    pub(crate) fn new(
        sink: SplitSink<WebSocket, Message>,
        join: Option<&'static str>,
        deflate: Option<Deflate>,
    ) -> Self {
        Self {
            sink,
            join: if deflate.is_some() { None } else { join },
            joined: Joined::Empty,
            deflate,
        }
    }
}

impl FrameSink for WsSink {
    async fn feed(&mut self, frame: Frame) -> Result<(), SinkClosed> {
        // Several queued frames in one message: one frame header, and one message for
        // the client to take apart, instead of one per push. Only what one batch holds
        // is joined; nothing waits for company. A compressed connection does not join:
        // a joined message would be compressed per connection, while an event's
        // compressed message is shared.
        let ready = match (self.join, self.deflate) {
            (Some(sep), _) => self.joined.push(frame, sep),
            (None, Some(d)) => Some(message(deflated(frame, d))),
            (None, None) => Some(message(frame)),
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
            code: CloseCode::from(reason.code),
            reason: reason.reason.into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

/// The disconnect a failed read stands for.
pub(crate) fn read_error(e: &tungstenite::Error) -> Disconnect {
    match e {
        tungstenite::Error::Capacity(_) => Disconnect::MESSAGE_TOO_LARGE,
        tungstenite::Error::Utf8(_) => Disconnect::INVALID_PAYLOAD,
        // The client went away without a close frame: there is no one to tell.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => Disconnect::CONNECTION_CLOSED,
        tungstenite::Error::Protocol(_) => Disconnect::PROTOCOL_ERROR,
        // A compressed message that inflates past the limit, or does not inflate.
        tungstenite::Error::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref()) {
            Some(InflateError::TooLarge) => Disconnect::MESSAGE_TOO_LARGE,
            Some(InflateError::Invalid) => Disconnect::PROTOCOL_ERROR,
            None => Disconnect::CONNECTION_CLOSED,
        },
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
