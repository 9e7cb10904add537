//! What the server sends by itself, as Socket.IO events: channel events (encoded once per
//! event for every Socket.IO recipient), session pushes, and the farewell before a close;
//! under the app's own names where `[socketio.pushes]` or the `event` tag give them.

use serde::Serialize;
use switchboard_protocol::socketio::{encode_event, encode_event2, DISCONNECT};
use switchboard_protocol::{ClientInfo, Disconnect, Publication, SharedJson, SubscribeResult};

use super::{recovery, EVENT_TAG, RESERVED_EVENTS};
use crate::event::{ChannelEvent, Codec, Control, EventKind, Frame, Outgoing};
use crate::session::Session;

/// How this transport encodes channel events.
pub(super) static CODEC: std::sync::LazyLock<Codec> = std::sync::LazyLock::new(|| {
    Codec::register("socketio", |ev, config| {
        Frame::from(encode_channel_event(ev, config))
    })
});

/// What a `publication` event carries; a tagged publication's second argument, without
/// `data`.
#[derive(Serialize)]
struct PublicationPush<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a SharedJson>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a std::collections::BTreeMap<String, String>>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize)]
struct PresencePush<'a> {
    channel: &'a str,
    info: &'a ClientInfo,
}

#[derive(Serialize)]
struct SubscribePush<'a> {
    channel: &'a str,
    #[serde(flatten)]
    result: &'a SubscribeResult,
}

#[derive(Serialize)]
struct UnsubscribePush<'a> {
    channel: &'a str,
    code: u32,
    reason: &'a str,
}

#[derive(Serialize)]
struct RefreshPush {
    expires: bool,
    ttl: u32,
}

#[derive(Serialize)]
struct DisconnectPush {
    code: u16,
    reason: &'static str,
    reconnect: bool,
}

/// A join or leave under an app's own event name (`[socketio.pushes]`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamedPresencePush<'a> {
    user_id: &'a str,
    client_id: &'a str,
    channel: &'a str,
}

/// A user status change under an app's own event name (`[socketio.pushes] status`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NamedStatusPush<'a> {
    user_id: &'a str,
    status: &'static str,
    last_seen: u64,
}

/// What a status publication carries (see `crate::status::UserStatus`).
#[derive(serde::Deserialize)]
struct StatusData {
    user: String,
    online: bool,
    #[serde(default)]
    last_seen: u64,
}

/// A status publication (in `<user_status.namespace>:<user>`, or the `user_status.feed`)
/// as the app's named event, if the configuration names one.
fn named_status(ev: &ChannelEvent, data: &str, config: &crate::Config) -> Option<String> {
    let pushes = &config.socketio.pushes;
    if pushes.status.is_empty() && pushes.online.is_empty() && pushes.offline.is_empty() {
        return None;
    }
    let in_status_ns = ev
        .channel
        .strip_prefix(config.user_status.namespace.as_str())
        .is_some_and(|rest| rest.starts_with(':'));
    let in_feed = !config.user_status.feed.is_empty() && *ev.channel == *config.user_status.feed;
    if !in_status_ns && !in_feed {
        return None;
    }
    let s: StatusData = serde_json::from_str(data).ok()?;
    let specific = if s.online {
        &pushes.online
    } else {
        &pushes.offline
    };
    let name = if specific.is_empty() {
        &pushes.status
    } else {
        specific
    };
    if name.is_empty() {
        return None;
    }
    let push = NamedStatusPush {
        user_id: &s.user,
        status: if s.online { "online" } else { "offline" },
        last_seen: s.last_seen,
    };
    Some(encode_event(name, &push))
}

/// The server's own "stopped typing" (see `crate::typing`) as the app's named event, if
/// the configuration names one.
fn named_typing_stop(ev: &ChannelEvent, p: &Publication, config: &crate::Config) -> Option<String> {
    let name = &config.socketio.pushes.typing_stop;
    let info = p.info.as_ref()?;
    if name.is_empty() || p.tags.is_some() || !crate::typing::is_stop(&p.data) {
        return None;
    }
    let push = NamedPresencePush {
        user_id: &info.user,
        client_id: &info.client,
        channel: &ev.channel,
    };
    Some(encode_event(name, &push))
}

fn encode_presence(ev: &ChannelEvent, default: &str, named: &str, info: &ClientInfo) -> String {
    if named.is_empty() {
        let push = PresencePush {
            channel: &ev.channel,
            info,
        };
        return encode_event(default, &push);
    }
    let push = NamedPresencePush {
        user_id: &info.user,
        client_id: &info.client,
        channel: &ev.channel,
    };
    encode_event(named, &push)
}

fn encode_channel_event(ev: &ChannelEvent, config: &crate::Config) -> String {
    match &ev.kind {
        EventKind::Publication(p) => {
            if let Some(frame) = named_typing_stop(ev, p, config) {
                return frame;
            }
            if let Some(mut frame) = named_status(ev, p.data.get(), config) {
                if !config.socketio.recovery_window.is_zero() && p.offset > 0 {
                    recovery::push_offset(&mut frame, &ev.channel, p.offset);
                }
                return frame;
            }
            let tags = p.tags.as_deref();
            let event = tags
                .and_then(|t| t.get(EVENT_TAG))
                .filter(|e| !e.is_empty() && !RESERVED_EVENTS.contains(&e.as_str()));
            let recovery = !config.socketio.recovery_window.is_zero() && p.offset > 0;
            let mut push = PublicationPush {
                channel: &ev.channel,
                data: Some(&p.data),
                offset: p.offset,
                info: p.info.as_ref(),
                tags,
            };
            let mut frame = match event {
                // The app's own event name, data first: `socket.on("message:new", m => …)`.
                Some(name) => {
                    push.data = None;
                    encode_event2(name, &p.data, &push)
                }
                None => encode_event("publication", &push),
            };
            if recovery {
                // As `socket.io` does with recovery on: the offset is the last argument.
                recovery::push_offset(&mut frame, &ev.channel, p.offset);
            }
            frame
        }
        EventKind::Join(info) => encode_presence(ev, "join", &config.socketio.pushes.join, info),
        EventKind::Leave(info) => encode_presence(ev, "leave", &config.socketio.pushes.leave, info),
    }
}

pub(super) fn encode(_: &Session, item: Outgoing) -> Frame {
    match item.into_frame() {
        Ok(frame) => frame,
        Err(c) => Frame::from(match *c {
            Control::Subscribed { channel, result } => encode_event(
                "subscribe",
                &SubscribePush {
                    channel: &channel,
                    result: &result,
                },
            ),
            Control::Refresh { expires, ttl } => {
                encode_event("refresh", &RefreshPush { expires, ttl })
            }
            Control::InboxRead { channel, marks } => encode_event(
                "inbox:read",
                &crate::node::InboxUpdate {
                    user: None,
                    channel: channel.to_string(),
                    epoch: marks.epoch,
                    delivered: marks.delivered,
                    read: marks.read,
                },
            ),
            Control::Unsubscribed {
                channel,
                code,
                reason,
            } => encode_event(
                "unsubscribe",
                &UnsubscribePush {
                    channel: &channel,
                    code,
                    reason,
                },
            ),
        }),
    }
}

/// Before the transport closes: a `server_disconnect` event with the code, then, when
/// the client should not reconnect, the namespace `DISCONNECT` (which stops
/// `socket.io-client` from reconnecting). A reconnectable close is a plain transport
/// close, after which the client reconnects by itself.
pub(super) fn farewell(session: &Session, reason: Disconnect) -> Vec<Frame> {
    // Nothing to say to a client that never joined, or that left by itself.
    if !session.is_connected() || reason == Disconnect::CONNECTION_CLOSED {
        return Vec::new();
    }
    let push = DisconnectPush {
        code: reason.code,
        reason: reason.reason,
        reconnect: reason.reconnect(),
    };
    let mut frames = vec![Frame::from(encode_event("server_disconnect", &push))];
    if !reason.reconnect() {
        frames.push(Frame::from_static(DISCONNECT));
    }
    frames
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::value::RawValue;

    use super::*;

    fn publication(channel: &str, data: &str, info: Option<&str>, offset: u64) -> ChannelEvent {
        let p = Publication {
            data: Arc::from(RawValue::from_string(data.to_owned()).expect("json")),
            info: info.map(|user| ClientInfo {
                user: user.into(),
                client: "c1".into(),
                conn_info: None,
                chan_info: None,
            }),
            offset,
            tags: None,
            exclude_client: None,
        };
        Arc::into_inner(ChannelEvent::new(channel.into(), EventKind::Publication(p)))
            .expect("one owner")
    }

    #[test]
    fn status_changes_in_the_feed_take_the_name_of_their_state() {
        let mut config = crate::Config::default();
        config.user_status.feed = "lobby:all".into();
        config.socketio.pushes.status = "status".into();
        config.socketio.pushes.offline = "user_offline".into();
        let online = publication(
            "lobby:all",
            r#"{"user":"ann","online":true,"last_seen":5}"#,
            None,
            0,
        );
        let offline = publication(
            "lobby:all",
            r#"{"user":"ann","online":false,"last_seen":7}"#,
            None,
            0,
        );
        assert_eq!(
            encode_channel_event(&online, &config),
            r#"42["status",{"userId":"ann","status":"online","lastSeen":5}]"#
        );
        assert_eq!(
            encode_channel_event(&offline, &config),
            r#"42["user_offline",{"userId":"ann","status":"offline","lastSeen":7}]"#
        );
        // Another channel's publication of the same shape is just a publication.
        let elsewhere = publication("chat:1", r#"{"user":"ann","online":true}"#, None, 0);
        assert!(encode_channel_event(&elsewhere, &config).starts_with(r#"42["publication""#));
    }

    #[test]
    fn the_servers_typing_stop_takes_its_name_and_recovery_appends_offsets() {
        let mut config = crate::Config::default();
        config.socketio.pushes.typing_stop = "user_typing_stop".into();
        let stop = publication("rooms:9", r#"{"typing":false}"#, Some("ann"), 0);
        assert_eq!(
            encode_channel_event(&stop, &config),
            r#"42["user_typing_stop",{"userId":"ann","clientId":"c1","channel":"rooms:9"}]"#
        );
        config.socketio.recovery_window = std::time::Duration::from_secs(60);
        let kept = publication("rooms:9", r#"{"n":1}"#, None, 4);
        let frame = encode_channel_event(&kept, &config);
        assert!(
            frame.starts_with(
                r#"42["publication",{"channel":"rooms:9","data":{"n":1},"offset":4},"4:"#
            ),
            "{frame}"
        );
        // Without history (offset 0) nothing can be recovered: no offset argument.
        let volatile = publication("rooms:9", r#"{"n":2}"#, None, 0);
        assert!(encode_channel_event(&volatile, &config).ends_with("}]"));
    }
}
