//! The Pusher protocol's messages: `{"event", "channel", "data"}` JSON objects, one per
//! WebSocket message. What the server sends carries `data` as a JSON-encoded string
//! (except `pusher:error`, an object), as Pusher's own servers do.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::{ClientInfo, Disconnect, Publication, SharedJson};

use super::names::to_pusher;
use crate::config::PusherConfig;
use crate::event::{ChannelEvent, Codec, Control, EventKind, Frame, Outgoing};
use crate::session::Session;
use crate::transport::socketio::EVENT_TAG;

/// How this transport encodes channel events: once per event for all Pusher clients.
/// A client is not told of its own join (Pusher sends `member_added` to the others).
pub(super) static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    Codec::register("pusher", |ev, config| {
        Frame::from(encode_event(ev, &config.pusher))
    })
    .without_own_presence()
});

/// The event name of a publication without an `event` tag (a Centrifugo client's
/// publish, a server API publish without tags): the name Socket.IO clients get too.
pub(super) const DEFAULT_EVENT: &str = "publication";

/// Whether `name` is one of the protocol's own events, which no publication may fake.
pub(super) fn is_reserved(name: &str) -> bool {
    name.starts_with("pusher:") || name.starts_with("pusher_internal:")
}

/// A message from the client.
#[derive(Debug, Deserialize)]
pub(super) struct Incoming {
    /// `pusher:subscribe`, `client-typing`, ...
    pub(super) event: String,
    /// The channel of a client event.
    #[serde(default)]
    pub(super) channel: Option<String>,
    /// An object (or a JSON-encoded string of one) for `pusher:` events; anything for
    /// client events.
    #[serde(default)]
    pub(super) data: Option<Box<RawValue>>,
}

/// `pusher:subscribe` and `pusher:unsubscribe`.
#[derive(Debug, Deserialize)]
pub(super) struct SubscribeData {
    pub(super) channel: String,
    #[serde(default)]
    pub(super) auth: Option<String>,
    /// A presence channel's member, as the auth endpoint signed it (a JSON text).
    #[serde(default)]
    pub(super) channel_data: Option<String>,
}

/// A presence member as the auth endpoint describes it in `channel_data`.
#[derive(Debug, Deserialize)]
pub(super) struct ChannelData {
    /// A string, or a number (Laravel sends its integer ids).
    pub(super) user_id: UserId,
    #[serde(default)]
    pub(super) user_info: Option<Box<RawValue>>,
}

/// `pusher:signin`.
#[derive(Debug, Deserialize)]
pub(super) struct SigninData {
    pub(super) auth: String,
    /// The user as the app signed it in (a JSON text with at least `id`).
    pub(super) user_data: String,
}

/// The user a sign-in names.
#[derive(Debug, Deserialize)]
pub(super) struct UserData {
    pub(super) id: UserId,
    #[serde(default)]
    pub(super) user_info: Option<Box<RawValue>>,
}

/// A user id as Pusher apps send it: a string or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum UserId {
    /// `"42"`.
    Text(String),
    /// `42`.
    Number(serde_json::Number),
}

impl UserId {
    /// As text: the number `42` is the user `"42"`.
    pub(super) fn into_string(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Number(n) => n.to_string(),
        }
    }
}

/// `data` as `T`: an object, or a string holding one (both occur in the wild).
pub(super) fn data_as<T: DeserializeOwned>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?.get();
    serde_json::from_str(raw).ok().or_else(|| {
        let text: String = serde_json::from_str(raw).ok()?;
        serde_json::from_str(&text).ok()
    })
}

#[derive(Serialize)]
struct Message<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    /// A JSON text, sent as a string.
    data: &'a str,
    /// Who sent a client event into a presence channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

/// A message whose `data` is the string `data`.
pub(super) fn message(event: &str, channel: Option<&str>, data: &str) -> String {
    encode(&Message {
        event,
        channel,
        data,
        user_id: None,
    })
}

fn encode(m: &impl Serialize) -> String {
    // Serializing strings and raw JSON can not fail.
    serde_json::to_string(m).unwrap_or_default()
}

/// `pusher:connection_established`.
pub(super) fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = encode(&serde_json::json!({
        "socket_id": socket_id,
        "activity_timeout": activity_timeout,
    }));
    message("pusher:connection_established", None, &data)
}

/// The server's ping.
pub(super) const PING: &str = r#"{"event":"pusher:ping","data":"{}"}"#;
/// The answer to the client's `pusher:ping`.
pub(super) const PONG: &str = r#"{"event":"pusher:pong","data":"{}"}"#;

/// `pusher:error`: `code` is Pusher's close code range (4000-4399) or, for what
/// Pusher has no code for, switchboard's error code.
pub(super) fn error(code: Option<u32>, message: &str) -> String {
    encode(&serde_json::json!({
        "event": "pusher:error",
        "data": {"code": code, "message": message},
    }))
}

/// `pusher_internal:subscription_succeeded` with `data` (a JSON text).
pub(super) fn subscription_succeeded(channel: &str, data: &str) -> String {
    message(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        data,
    )
}

/// `pusher:subscription_error`: pusher-js hands it to the channel's
/// `pusher:subscription_error` listeners (Echo's `.error()`).
pub(super) fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    let data = encode(&serde_json::json!({"type": kind, "error": error, "status": status}));
    message("pusher:subscription_error", Some(channel), &data)
}

/// `pusher:signin_success`.
pub(super) fn signin_success(user_data: &str) -> String {
    let data = encode(&serde_json::json!({ "user_data": user_data }));
    message("pusher:signin_success", None, &data)
}

/// Presence data of `pusher_internal:subscription_succeeded`: the members, one per user.
pub(super) fn presence_data<'a>(members: impl Iterator<Item = &'a ClientInfo>) -> String {
    let mut hash: BTreeMap<&str, Option<&RawValue>> = BTreeMap::new();
    for info in members {
        hash.insert(&*info.user, user_info(info));
    }
    let ids: Vec<&str> = hash.keys().copied().collect();
    let count = ids.len();
    encode(&serde_json::json!({
        "presence": {"ids": ids, "hash": hash, "count": count}
    }))
}

/// What a presence member shows: its channel info (a Pusher member's `user_info`), or
/// its connection's info.
fn user_info(info: &ClientInfo) -> Option<&RawValue> {
    info.chan_info.as_deref().or(info.conn_info.as_deref())
}

/// A payload as Pusher's `data` string: a JSON string is sent as its text (Pusher's
/// servers relay strings), anything else as its JSON text.
pub(super) fn data_text(data: &RawValue) -> std::borrow::Cow<'_, str> {
    let raw = data.get();
    if raw.starts_with('"') {
        if let Ok(text) = serde_json::from_str::<String>(raw) {
            return text.into();
        }
    }
    raw.into()
}

/// Pusher's `data` string as a payload: JSON text is kept as the JSON it is (so
/// Centrifugo clients see objects), any other text becomes a JSON string.
pub(super) fn payload_of(text: &str) -> Option<SharedJson> {
    match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(raw) => Some(crate::api::methods::payload(raw)),
        Err(_) => {
            let quoted = serde_json::to_string(text).ok()?;
            RawValue::from_string(quoted).ok().map(Arc::from)
        }
    }
}

/// A channel event as a Pusher message, named in the app whose channel it is.
fn encode_event(ev: &ChannelEvent, pusher: &PusherConfig) -> String {
    let channel = to_pusher(pusher, &ev.channel);
    match &ev.kind {
        EventKind::Publication(p) => {
            let event = p
                .tags
                .as_deref()
                .and_then(|t| t.get(EVENT_TAG))
                .map(String::as_str)
                .filter(|e| !e.is_empty() && !is_reserved(e))
                .unwrap_or(DEFAULT_EVENT);
            // Pusher names the sender of a client event in a presence channel.
            let user_id = p
                .info
                .as_ref()
                .filter(|_| event.starts_with("client-") && channel.starts_with("presence-"))
                .map(|i| &*i.user);
            encode(&Message {
                event,
                channel: Some(channel.as_ref()),
                data: &data_text(&p.data),
                user_id,
            })
        }
        EventKind::Join(info) => {
            let data = encode(&serde_json::json!({
                "user_id": &*info.user,
                "user_info": user_info(info),
            }));
            message(
                "pusher_internal:member_added",
                Some(channel.as_ref()),
                &data,
            )
        }
        EventKind::Leave(info) => {
            let data = encode(&serde_json::json!({ "user_id": &*info.user }));
            message(
                "pusher_internal:member_removed",
                Some(channel.as_ref()),
                &data,
            )
        }
    }
}

/// A cache channel's last publication, as a new subscriber gets it: as it was
/// delivered.
pub(super) fn cached(pusher: &PusherConfig, channel: &str, publication: Publication) -> String {
    let event = ChannelEvent::new(channel.into(), EventKind::Publication(publication));
    encode_event(&event, pusher)
}

/// `pusher_internal:subscription_count`: how many connections are subscribed to the
/// channel (pusher-js hands it to `pusher:subscription_count` listeners).
pub(super) fn subscription_count(channel: &str, count: u32) -> String {
    let data = encode(&serde_json::json!({ "subscription_count": count }));
    message("pusher_internal:subscription_count", Some(channel), &data)
}

/// What a cache channel's new subscriber gets when the channel has no event yet.
pub(super) fn cache_miss(channel: &str) -> String {
    message("pusher:cache_miss", Some(channel), "{}")
}

/// An outbox item as a frame. Pushes Pusher has no message for are sent as
/// `pusher_internal:` events, which pusher-js ignores.
pub(super) fn encode_outgoing(session: &Session, item: Outgoing) -> Frame {
    let pusher = &session.node().config.pusher;
    match item.into_frame() {
        Ok(frame) => frame,
        Err(c) => Frame::from(match *c {
            // The server API subscribed the connection.
            Control::Subscribed { channel, .. } => {
                subscription_succeeded(&to_pusher(pusher, &channel), "{}")
            }
            Control::Unsubscribed {
                channel,
                code,
                reason,
            } => {
                let data = encode(&serde_json::json!({"code": code, "reason": reason}));
                message(
                    "pusher_internal:unsubscribed",
                    Some(to_pusher(pusher, &channel).as_ref()),
                    &data,
                )
            }
            Control::Refresh { expires, ttl } => {
                let data = encode(&serde_json::json!({"expires": expires, "ttl": ttl}));
                message("pusher_internal:refresh", None, &data)
            }
            // Pusher has no inbox: a read on another device is told like the other
            // protocols tell it, under a name pusher-js ignores.
            Control::InboxRead { channel, marks } => {
                let data = encode(&serde_json::json!({
                    "channel": to_pusher(pusher, &channel),
                    "epoch": marks.epoch,
                    "delivered": marks.delivered,
                    "read": marks.read,
                }));
                message("pusher_internal:inbox_read", None, &data)
            }
        }),
    }
}

/// The close code and reason a Pusher client gets for a disconnect: pusher-js acts on
/// the range (4000-4099 stay closed, 4100-4199 reconnect after a pause, 4200-4299
/// reconnect at once). Codes the server API chose (4000-4999) and WebSocket's own
/// (below 3000) are kept; the reason stays switchboard's.
pub(super) fn close(reason: Disconnect) -> Disconnect {
    let pusher = match reason.code {
        0..=2999 | 4000..=4999 => return reason,
        _ if reason == Disconnect::NO_PONG => Disconnect::PUSHER_NO_PONG,
        _ if matches!(
            reason,
            Disconnect::SLOW | Disconnect::TOO_MANY_REQUESTS | Disconnect::SERVER_ERROR
        ) =>
        {
            Disconnect::PUSHER_BACKOFF
        }
        _ if reason.reconnect() => Disconnect::PUSHER_RECONNECT,
        _ => Disconnect::PUSHER_REFUSED,
    };
    Disconnect {
        code: pusher.code,
        reason: reason.reason,
    }
}

/// Before the close frame: `pusher:error` with the close code, as Pusher's servers
/// send it; nothing when the client left by itself.
pub(super) fn farewell(_session: &Session, reason: Disconnect) -> Vec<Frame> {
    if reason == Disconnect::CONNECTION_CLOSED {
        return Vec::new();
    }
    let close = close(reason);
    vec![Frame::from(error(
        Some(u32::from(close.code)),
        close.reason,
    ))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(channel: &str, data: &str, event: Option<&str>, user: Option<&str>) -> String {
        let tags = event.map(|e| {
            let mut t = BTreeMap::new();
            t.insert(EVENT_TAG.to_owned(), e.to_owned());
            Arc::new(t)
        });
        let p = switchboard_protocol::Publication {
            data: Arc::from(RawValue::from_string(data.to_owned()).expect("json")),
            info: user.map(|u| ClientInfo {
                user: u.into(),
                client: "1.2".into(),
                conn_info: None,
                chan_info: None,
            }),
            offset: 0,
            tags,
            exclude_client: None,
        };
        encode_event(
            &ChannelEvent::new(channel.into(), EventKind::Publication(p)),
            &PusherConfig::default(),
        )
    }

    #[test]
    fn publications_are_events_with_string_data() {
        assert_eq!(
            publication("private:chat.1", r#"{"a":1}"#, Some("message"), None),
            r#"{"event":"message","channel":"private-chat.1","data":"{\"a\":1}"}"#
        );
        assert_eq!(
            publication("orders", r#""plain text""#, None, None),
            r#"{"event":"publication","channel":"orders","data":"plain text"}"#
        );
        // No publication passes for one of the protocol's own events.
        assert!(publication("orders", "1", Some("pusher:error"), None)
            .starts_with(r#"{"event":"publication""#));
        // A client event in a presence channel names its sender; elsewhere it does not.
        assert!(publication("presence:r", "{}", Some("client-x"), Some("7"))
            .ends_with(r#""user_id":"7"}"#));
        assert!(!publication("private:r", "{}", Some("client-x"), Some("7")).contains("user_id"));
    }

    #[test]
    fn payloads_round_trip_through_pusher_data_strings() {
        for text in [r#"{"a":[1,2]}"#, "hello", "42", r#""quoted""#] {
            let payload = payload_of(text).expect("payload");
            let back = data_text(&payload);
            if text == r#""quoted""# {
                // A JSON string is relayed as its text, as Pusher relays strings.
                assert_eq!(back, "quoted");
            } else {
                assert_eq!(back, text);
            }
        }
        assert_eq!(payload_of("hello").expect("payload").get(), r#""hello""#);
    }

    #[test]
    fn members_are_listed_once_per_user() {
        let info = |user: &str, client: &str, name: Option<&str>| ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: name.map(|n| {
                Arc::from(RawValue::from_string(format!(r#"{{"name":"{n}"}}"#)).expect("json"))
            }),
        };
        let members = [
            info("2", "a", Some("Bo")),
            info("1", "b", Some("Al")),
            info("2", "c", Some("Bo")),
        ];
        assert_eq!(
            presence_data(members.iter()),
            r#"{"presence":{"count":2,"hash":{"1":{"name":"Al"},"2":{"name":"Bo"}},"ids":["1","2"]}}"#
        );
    }

    #[test]
    fn close_codes_follow_pushers_ranges() {
        assert_eq!(close(Disconnect::NO_PONG).code, 4201);
        assert_eq!(close(Disconnect::SLOW).code, 4100);
        assert_eq!(close(Disconnect::SHUTDOWN).code, 4200);
        assert_eq!(close(Disconnect::FORCE_NO_RECONNECT).code, 4009);
        assert_eq!(close(Disconnect::CONNECTION_LIMIT).code, 4009);
        assert_eq!(close(Disconnect::PROTOCOL_ERROR).code, 1002);
        let custom = Disconnect {
            code: 4321,
            reason: "x",
        };
        assert_eq!(close(custom), custom);
    }
}
