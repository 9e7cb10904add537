//! Engine.IO v4 and Socket.IO v5 packets, text (JSON) encoding only.
//!
//! An Engine.IO packet is one type digit and a payload; its `message` packet carries
//! one Socket.IO packet, so a Socket.IO event reads `42["name",arg]` on the wire. Over
//! HTTP long-polling several Engine.IO packets travel in one body, separated by the
//! record separator `\x1e`. Binary attachments are not supported: switchboard carries
//! JSON.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::reply::ReplyBody;

/// Separates Engine.IO packets in an HTTP long-polling body.
pub const RECORD_SEPARATOR: char = '\x1e';

/// The Engine.IO ping the server sends; the client answers [`EioPacket::Pong`].
pub const PING: &str = "2";
/// Engine.IO `close`.
pub const CLOSE: &str = "1";
/// Engine.IO `noop`: releases a pending long-poll while the transport upgrades.
pub const NOOP: &str = "6";
/// Answer to the upgrade probe `2probe`.
pub const PROBE_PONG: &str = "3probe";
/// Socket.IO `DISCONNECT` of the main namespace (inside an Engine.IO message).
pub const DISCONNECT: &str = "41";

/// Why a packet could not be decoded. The text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketError(pub &'static str);

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for PacketError {}

/// One Engine.IO packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EioPacket<'a> {
    /// `1`: the client closes the session.
    Close,
    /// `2` and its payload (`2probe` during an upgrade).
    Ping(&'a str),
    /// `3`: answer to the server's ping.
    Pong,
    /// `4` and the Socket.IO packet it carries.
    Message(&'a str),
    /// `5`: the client finished upgrading to WebSocket.
    Upgrade,
    /// `6`.
    Noop,
}

impl<'a> EioPacket<'a> {
    /// Decodes one Engine.IO text packet.
    ///
    /// # Errors
    /// An empty packet, an unknown type or a base64 binary packet (`b…`).
    pub fn decode(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let rest = chars.as_str().get(1..).unwrap_or("");
        match chars.next() {
            Some('1') => Ok(Self::Close),
            Some('2') => Ok(Self::Ping(rest)),
            Some('3') => Ok(Self::Pong),
            Some('4') => Ok(Self::Message(rest)),
            Some('5') => Ok(Self::Upgrade),
            Some('6') => Ok(Self::Noop),
            Some('b') => Err(PacketError("binary packets are not supported")),
            Some(_) => Err(PacketError("unknown engine.io packet type")),
            None => Err(PacketError("empty packet")),
        }
    }
}

/// Splits an HTTP long-polling body into its Engine.IO packets.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(RECORD_SEPARATOR)
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioKind {
    /// `0`: join a namespace (with the `auth` object).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event.
    Event,
    /// `3`: an acknowledgement of the server's event.
    Ack,
}

/// One Socket.IO packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SioPacket<'a> {
    /// Packet type.
    pub kind: SioKind,
    /// Namespace, `/` when the packet names none.
    pub namespace: &'a str,
    /// Acknowledgement id the reply must carry.
    pub ack: Option<u64>,
    /// The JSON payload, as sent.
    pub data: &'a str,
}

impl<'a> SioPacket<'a> {
    /// Decodes a Socket.IO packet (the payload of an Engine.IO message).
    ///
    /// # Errors
    /// Unknown or binary packet types, a namespace without its comma, an ack id out of
    /// range.
    pub fn decode(text: &'a str) -> Result<Self, PacketError> {
        let kind = match text.as_bytes().first() {
            Some(b'0') => SioKind::Connect,
            Some(b'1') => SioKind::Disconnect,
            Some(b'2') => SioKind::Event,
            Some(b'3') => SioKind::Ack,
            Some(b'5' | b'6') => return Err(PacketError("binary attachments are not supported")),
            Some(b'4') => return Err(PacketError("clients may not send CONNECT_ERROR")),
            Some(_) => return Err(PacketError("unknown socket.io packet type")),
            None => return Err(PacketError("empty socket.io packet")),
        };
        let mut rest = &text[1..];
        let mut namespace = "/";
        if rest.starts_with('/') {
            let end = rest
                .find(',')
                .ok_or(PacketError("namespace without a comma"))?;
            namespace = &rest[..end];
            rest = &rest[end + 1..];
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack = if digits == 0 {
            None
        } else {
            let id = rest[..digits]
                .parse::<u64>()
                .map_err(|_| PacketError("acknowledgement id out of range"))?;
            rest = &rest[digits..];
            Some(id)
        };
        Ok(Self {
            kind,
            namespace,
            ack,
            data: rest,
        })
    }

    /// The event name and arguments of an `EVENT` packet: `["name", arg, ...]`.
    ///
    /// # Errors
    /// The payload is not a JSON array starting with a string.
    pub fn event(&self) -> Result<(String, Vec<Box<RawValue>>), PacketError> {
        let mut items: Vec<Box<RawValue>> = serde_json::from_str(self.data)
            .map_err(|_| PacketError("an event must be a JSON array"))?;
        if items.is_empty() {
            return Err(PacketError("an event needs a name"));
        }
        let name: String = serde_json::from_str(items.remove(0).get())
            .map_err(|_| PacketError("an event name must be a string"))?;
        Ok((name, items))
    }
}

/// The Engine.IO `open` packet that starts a session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    /// Engine.IO session id.
    pub sid: &'a str,
    /// Transports the client may upgrade to.
    pub upgrades: &'a [&'a str],
    /// Milliseconds between the server's pings.
    pub ping_interval: u64,
    /// Milliseconds the client has to answer a ping.
    pub ping_timeout: u64,
    /// Largest packet or polling body accepted, in bytes.
    pub max_payload: usize,
}

impl Handshake<'_> {
    /// `0{...}`.
    pub fn encode(&self) -> String {
        let mut out = String::from("0");
        // Serializing plain strings and numbers into a String cannot fail.
        out.push_str(&serde_json::to_string(self).unwrap_or_default());
        out
    }
}

/// `40{"sid":...}`: the client joined the main namespace.
pub fn encode_connect(sid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid }))
}

/// `40{"sid":...,"pid":...}`: joined, with the private id `socket.io-client` (≥ 4.6) sends
/// back in its next `CONNECT` after a reconnect.
pub fn encode_connect_with_pid(sid: &str, pid: &str) -> String {
    let mut out = String::from("40{\"sid\":");
    push_json(&mut out, sid);
    out.push_str(",\"pid\":");
    push_json(&mut out, pid);
    out.push('}');
    out
}

/// `44{"message":...,"data":...}`: the client may not join; `socket.io-client` emits
/// `connect_error` with this message and data.
pub fn encode_connect_error(message: &str, data: &impl Serialize) -> String {
    let body = serde_json::json!({ "message": message, "data": data });
    format!("44{body}")
}

/// `42["name",arg]`: an event with one argument.
pub fn encode_event(name: &str, arg: &impl Serialize) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("42[");
    push_json(&mut out, name);
    out.push(',');
    push_json(&mut out, arg);
    out.push(']');
    out
}

/// `42["name",first,second]`: an event with two arguments.
pub fn encode_event2(name: &str, first: &impl Serialize, second: &impl Serialize) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("42[");
    push_json(&mut out, name);
    out.push(',');
    push_json(&mut out, first);
    out.push(',');
    push_json(&mut out, second);
    out.push(']');
    out
}

/// `43<id>[arg]`: the acknowledgement of the client's event `id`.
pub fn encode_ack(id: u64, arg: &impl Serialize) -> String {
    let mut out = format!("43{id}[");
    push_json(&mut out, arg);
    out.push(']');
    out
}

/// A command's reply as the argument of a Socket.IO acknowledgement:
/// `{"result": ...}` on success, `{"error": {"code": ..., "message": ...}}` on failure.
#[derive(Debug)]
pub struct AckReply<'a>(pub &'a ReplyBody);

impl Serialize for AckReply<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self.0 {
            ReplyBody::Error(e) => map.serialize_entry("error", e)?,
            ReplyBody::Connect(r) => map.serialize_entry("result", r)?,
            ReplyBody::Subscribe(r) => map.serialize_entry("result", r)?,
            ReplyBody::Unsubscribe(r) | ReplyBody::Publish(r) | ReplyBody::Ping(r) => {
                map.serialize_entry("result", r)?;
            }
            ReplyBody::Presence(r) => map.serialize_entry("result", r)?,
            ReplyBody::PresenceStats(r) => map.serialize_entry("result", r)?,
            ReplyBody::History(r) => map.serialize_entry("result", r)?,
            ReplyBody::Rpc(r) => map.serialize_entry("result", r)?,
            ReplyBody::Refresh(r) => map.serialize_entry("result", r)?,
            ReplyBody::SubRefresh(r) => map.serialize_entry("result", r)?,
        }
        map.end()
    }
}

fn push_json(out: &mut String, value: &(impl Serialize + ?Sized)) {
    // Serialization of switchboard's own types into a String does not fail; a failure
    // would be a bug, and `null` keeps the frame valid JSON.
    match serde_json::to_string(value) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        assert_eq!(EioPacket::decode("2probe"), Ok(EioPacket::Ping("probe")));
        assert_eq!(EioPacket::decode("3"), Ok(EioPacket::Pong));
        assert_eq!(EioPacket::decode("5"), Ok(EioPacket::Upgrade));
        assert_eq!(
            EioPacket::decode("42[\"a\"]"),
            Ok(EioPacket::Message("2[\"a\"]"))
        );
        assert!(EioPacket::decode("").is_err());
        assert!(EioPacket::decode("bAQID").is_err());
        assert!(EioPacket::decode("9").is_err());
        assert!(EioPacket::decode("é").is_err());
        let parts: Vec<_> = split_payload("2\u{1e}42[\"x\"]").collect();
        assert_eq!(parts, vec!["2", "42[\"x\"]"]);
    }

    #[test]
    fn socketio_packets() {
        let p = SioPacket::decode("0{\"token\":\"t\"}").unwrap();
        assert_eq!(p.kind, SioKind::Connect);
        assert_eq!(p.namespace, "/");
        assert_eq!(p.data, "{\"token\":\"t\"}");

        let p = SioPacket::decode("2/admin,12[\"subscribe\",\"a:b\"]").unwrap();
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.ack, Some(12));
        let (name, args) = p.event().unwrap();
        assert_eq!(name, "subscribe");
        assert_eq!(args[0].get(), "\"a:b\"");

        let p = SioPacket::decode("2[\"publish\",{\"channel\":\"c\"}]").unwrap();
        assert_eq!(p.ack, None);
        assert!(SioPacket::decode("51-[\"x\",{\"_placeholder\":true,\"num\":0}]").is_err());
        assert!(SioPacket::decode("2/admin[\"x\"]").is_err());
        assert!(SioPacket::decode("299999999999999999999999[\"x\"]").is_err());
        assert!(SioPacket::decode("2{}").unwrap().event().is_err());
        assert!(SioPacket::decode("2[]").unwrap().event().is_err());
        assert!(SioPacket::decode("2[1]").unwrap().event().is_err());
    }

    #[test]
    fn encodes() {
        assert_eq!(encode_event("pub", &1), "42[\"pub\",1]");
        assert_eq!(encode_event2("e", &"a", &2), "42[\"e\",\"a\",2]");
        assert_eq!(encode_ack(7, &true), "437[true]");
        let ok = ReplyBody::Publish(crate::reply::Empty {});
        assert_eq!(encode_ack(1, &AckReply(&ok)), "431[{\"result\":{}}]");
        let err = ReplyBody::Error(crate::ErrorCode::PermissionDenied.into());
        assert_eq!(
            encode_ack(2, &AckReply(&err)),
            "432[{\"error\":{\"code\":103,\"message\":\"permission denied\"}}]"
        );
        assert_eq!(encode_connect("s"), "40{\"sid\":\"s\"}");
        let open = Handshake {
            sid: "x",
            upgrades: &["websocket"],
            ping_interval: 25000,
            ping_timeout: 8000,
            max_payload: 65536,
        }
        .encode();
        assert_eq!(
            open,
            "0{\"sid\":\"x\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":8000,\"maxPayload\":65536}"
        );
    }
}
