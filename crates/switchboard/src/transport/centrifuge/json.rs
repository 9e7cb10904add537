//! The JSON encoding: newline-delimited commands and replies in text frames.

use std::sync::LazyLock;

use switchboard_protocol::command::{decode_frame, Command, DecodeError};
use switchboard_protocol::reply::{encode_push, encode_reply, PushBody, ReplyBody};
use switchboard_protocol::{Disconnect, PING};

use super::{delta_push, event_push, Encoding};
use crate::event::{Codec, Frame};

/// Centrifugo's JSON encoding.
pub(crate) struct Json;

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    Codec::register("centrifuge-json", |ev, _| event_push::<Json>(ev)).with_deltas(
        // JSON carries the payload as a string: a delta that splits a character is no
        // text, and the subscriber gets the full payload instead.
        |ev, payload, delta| {
            std::str::from_utf8(payload).ok()?;
            delta_push::<Json>(ev, payload, delta)
        },
    )
});

impl Encoding for Json {
    const JOIN: &'static str = "\n";

    fn codec() -> &'static Codec {
        &CODEC
    }

    fn ping() -> Frame {
        Frame::from_static(PING)
    }

    /// A binary frame is refused with 3501 "bad request".
    fn decode(message: Frame) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        match message {
            Frame::Text(text) => Ok(decode_frame(text.as_str()).collect()),
            Frame::Binary(_) | Frame::Deflated { .. } => Err(Disconnect::BAD_REQUEST),
        }
    }

    fn reply(id: u32, body: &ReplyBody) -> Frame {
        Frame::from(encode_reply(id, body))
    }

    fn push(channel: &str, body: &PushBody<'_>) -> Frame {
        Frame::from(encode_push(channel, body))
    }
}
