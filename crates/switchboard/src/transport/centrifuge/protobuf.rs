//! The Protobuf encoding: length-delimited `Command`s and `Reply`s in binary frames.

use std::sync::LazyLock;

use bytes::Bytes;
use switchboard_protocol::command::{Command, DecodeError};
use switchboard_protocol::protobuf::{decode_stream, encode_push, encode_reply, PING};
use switchboard_protocol::reply::{PushBody, ReplyBody};
use switchboard_protocol::Disconnect;

use super::{delta_push, event_push, Encoding};
use crate::event::{Codec, Frame};

/// Centrifugo's Protobuf encoding.
pub(crate) struct Protobuf;

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    Codec::register("centrifuge-protobuf", |ev, _| event_push::<Protobuf>(ev))
        .with_deltas(delta_push::<Protobuf>)
});

impl Encoding for Protobuf {
    // Replies are length-delimited: joined as they are.
    const JOIN: &'static str = "";

    fn codec() -> &'static Codec {
        &CODEC
    }

    fn ping() -> Frame {
        Frame::Binary(Bytes::from_static(PING))
    }

    /// A text frame, or a binary one that is not a stream of length-delimited
    /// `Command`s, is refused with 3501 "bad request".
    fn decode(message: Frame) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        match message {
            Frame::Binary(bytes) => decode_stream(bytes).map_err(|e| {
                tracing::debug!(error = %e, "undecodable protobuf frame");
                Disconnect::BAD_REQUEST
            }),
            Frame::Text(_) | Frame::Deflated { .. } => Err(Disconnect::BAD_REQUEST),
        }
    }

    fn reply(id: u32, body: &ReplyBody) -> Frame {
        Frame::from(encode_reply(id, body))
    }

    fn push(channel: &str, body: &PushBody<'_>) -> Frame {
        Frame::from(encode_push(channel, body))
    }
}
