//! The few messages of the Centrifugo client protocol's Protobuf encoding that a load
//! client needs (connect, subscribe, pong; replies and publication pushes), written and
//! read by hand: the clients only look at field numbers, as they look at JSON prefixes
//! for the text protocols, so that measuring costs the server, not the clients.
//!
//! A binary WebSocket message holds varint length-delimited `Command`s (client) or
//! `Reply`s (server); an empty `Reply` is a ping, an empty `Command` its pong
//! (crates/protocol/proto/client.proto has the schema).

/// `Command.id`, `Command.connect`, `Command.subscribe`.
const COMMAND_ID: u32 = 1;
const COMMAND_CONNECT: u32 = 4;
const COMMAND_SUBSCRIBE: u32 = 5;
/// `ConnectRequest.token`, `SubscribeRequest.channel`.
const CONNECT_TOKEN: u32 = 1;
const SUBSCRIBE_CHANNEL: u32 = 1;
/// `Reply.id`, `.error`, `.push`, `.connect`, `.subscribe`.
const REPLY_ID: u32 = 1;
const REPLY_ERROR: u32 = 2;
const REPLY_PUSH: u32 = 4;
const REPLY_CONNECT: u32 = 5;
const REPLY_SUBSCRIBE: u32 = 6;
/// `Push.pub`.
const PUSH_PUB: u32 = 4;

const VARINT: u8 = 0;
const LEN: u8 = 2;

/// What one `Reply` is, as far as a load client cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    /// An empty reply: the server's ping.
    Ping,
    /// A push carrying a publication; the bytes are the `Publication` message.
    Publication(&'a [u8]),
    /// The answer to command `id`: its result field (5 connect, 6 subscribe, …), or
    /// `None` for an error.
    Answer { id: u32, result: Option<u32> },
    /// Any other push.
    Other,
}

impl Reply<'_> {
    /// The field number of a connect result.
    pub(crate) const CONNECT: u32 = REPLY_CONNECT;
    /// The field number of a subscribe result.
    pub(crate) const SUBSCRIBE: u32 = REPLY_SUBSCRIBE;
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `command` with its varint length in front.
fn delimited(command: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(command.len() + 2);
    put_varint(&mut out, command.len() as u64);
    out.extend_from_slice(command);
    out
}

/// A command `id` with one message field.
fn command(id: u32, field: u32, body: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(body.len() + 8);
    put_key(&mut c, COMMAND_ID, VARINT);
    put_varint(&mut c, u64::from(id));
    put_bytes(&mut c, field, body);
    c
}

/// The connect command (id 1) with `token`, length-delimited.
pub(crate) fn connect(token: &str) -> Vec<u8> {
    let mut req = Vec::new();
    if !token.is_empty() {
        put_bytes(&mut req, CONNECT_TOKEN, token.as_bytes());
    }
    delimited(&command(1, COMMAND_CONNECT, &req))
}

/// Subscribe commands for `channels` (ids from 2, after the connect's), in one frame.
pub(crate) fn subscribe(channels: &[String]) -> Vec<u8> {
    let mut frame = Vec::new();
    for (i, c) in channels.iter().enumerate() {
        let mut req = Vec::new();
        put_bytes(&mut req, SUBSCRIBE_CHANNEL, c.as_bytes());
        frame.extend(delimited(&command(i as u32 + 2, COMMAND_SUBSCRIBE, &req)));
    }
    frame
}

/// The pong: an empty command.
pub(crate) const PONG: &[u8] = &[0];

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A field's value: a varint, or the bytes of a length-delimited field.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Calls `f` with every field of message `b`; `None` when it is malformed.
fn fields<'a>(b: &'a [u8], mut f: impl FnMut(u32, Value<'a>)) -> Option<()> {
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let field = u32::try_from(key >> 3).ok()?;
        match (key & 7) as u8 {
            VARINT => f(field, Value::Varint(varint(b, &mut pos)?)),
            LEN => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let bytes = b.get(pos..pos.checked_add(len)?)?;
                pos += len;
                f(field, Value::Bytes(bytes));
            }
            // Fixed 64 and 32 bits: none in Reply or Push, skipped all the same.
            1 => pos += 8,
            5 => pos += 4,
            _ => return None,
        }
    }
    Some(())
}

fn reply(b: &[u8]) -> Reply<'_> {
    if b.is_empty() {
        return Reply::Ping;
    }
    let (mut id, mut result, mut push) = (0u32, None, None);
    let parsed = fields(b, |field, v| match (field, v) {
        (REPLY_ID, Value::Varint(v)) => id = v as u32,
        (REPLY_PUSH, Value::Bytes(p)) => push = Some(p),
        (REPLY_ERROR, _) => result = None,
        (n, Value::Bytes(_)) if n > REPLY_PUSH => result = Some(n),
        _ => {}
    });
    if parsed.is_none() {
        return Reply::Other;
    }
    if let Some(p) = push {
        let mut publication = None;
        let _ = fields(p, |field, v| {
            if let (PUSH_PUB, Value::Bytes(b)) = (field, v) {
                publication = Some(b);
            }
        });
        return publication.map_or(Reply::Other, Reply::Publication);
    }
    if id > 0 {
        Reply::Answer { id, result }
    } else {
        Reply::Other
    }
}

/// Calls `f` with each `Reply` of a binary frame (stops at the first malformed one).
pub(crate) fn replies<'a>(frame: &'a [u8], mut f: impl FnMut(Reply<'a>)) {
    let mut pos = 0;
    while pos < frame.len() {
        let Some(len) = varint(frame, &mut pos).and_then(|l| usize::try_from(l).ok()) else {
            return;
        };
        let Some(body) = pos.checked_add(len).and_then(|end| frame.get(pos..end)) else {
            return;
        };
        pos += len;
        f(reply(body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply `id` with a message in `field`, length-delimited.
    fn answer(id: u32, field: u32) -> Vec<u8> {
        let mut r = Vec::new();
        put_key(&mut r, REPLY_ID, VARINT);
        put_varint(&mut r, u64::from(id));
        put_bytes(&mut r, field, &[]);
        delimited(&r)
    }

    #[test]
    fn reads_pings_answers_and_publications_of_one_frame() {
        let mut publication = Vec::new();
        put_bytes(&mut publication, 4, br#"{"t":5}"#);
        let mut push = Vec::new();
        put_bytes(&mut push, 2, b"bench:all");
        put_bytes(&mut push, PUSH_PUB, &publication);
        let mut r = Vec::new();
        put_bytes(&mut r, REPLY_PUSH, &push);
        let mut frame = vec![0];
        frame.extend(delimited(&r));
        frame.extend(answer(2, REPLY_SUBSCRIBE));
        frame.extend(answer(3, REPLY_ERROR));
        let mut seen = Vec::new();
        replies(&frame, |r| seen.push(r));
        assert_eq!(
            seen,
            vec![
                Reply::Ping,
                Reply::Publication(&publication),
                Reply::Answer {
                    id: 2,
                    result: Some(REPLY_SUBSCRIBE)
                },
                Reply::Answer {
                    id: 3,
                    result: None
                },
            ]
        );
    }

    #[test]
    fn commands_are_length_delimited() {
        let c = connect("abc");
        // length, id 1, connect { token "abc" }
        assert_eq!(c, vec![9, 0x08, 1, 0x22, 5, 0x0a, 3, b'a', b'b', b'c']);
        let s = subscribe(&["a".into(), "b".into()]);
        assert_eq!(s.len(), 2 * 8);
        assert_eq!(&s[..8], &[7, 0x08, 2, 0x2a, 3, 0x0a, 1, b'a']);
    }
}
