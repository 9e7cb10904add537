//! Packets from a Socket.IO client, whatever carried them, turned into session calls:
//! `CONNECT` authenticates, events run commands, replies go out as acknowledgements.

use serde::Deserialize;
use switchboard_protocol::command::{ConnectRequest, DecodeError, Request, SubscribeRequest};
use switchboard_protocol::reply::{ErrorReply, ReplyBody};
use switchboard_protocol::socketio::{
    encode_ack, encode_connect, encode_connect_error, encode_connect_with_pid, encode_event,
    AckReply, EioPacket, SioKind, SioPacket,
};
use switchboard_protocol::{Disconnect, ErrorCode};
use tracing::Instrument;

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_protocol::{Publication, StreamPosition};

use super::recovery::{self, Kept};
use super::{format_id, parse_id, Conn};
use crate::event::{ChannelEvent, EventKind};
use crate::event::{Frame, Outgoing};
use crate::inbox::Mark;
use crate::session::Connected;
use crate::session::{Receipt, Session, SessionError};
use crate::transport::command::{self, Executed};

/// Handles one Engine.IO packet. Returns the disconnect to apply.
pub(super) async fn handle(conn: &Conn, text: &str) -> Option<Disconnect> {
    match EioPacket::decode(text) {
        Err(e) => {
            tracing::debug!(client = %conn.session.id, error = %e, "bad engine.io packet");
            Some(Disconnect::BAD_REQUEST)
        }
        Ok(EioPacket::Pong) => {
            conn.ponged();
            command::meter_control(&conn.session)
        }
        Ok(EioPacket::Close) => Some(Disconnect::CONNECTION_CLOSED),
        Ok(EioPacket::Ping(_) | EioPacket::Upgrade | EioPacket::Noop) => {
            command::meter_control(&conn.session)
        }
        Ok(EioPacket::Message(m)) => {
            let session = &conn.session;
            // The span lives only while a packet is handled (see the Centrifugo transport).
            let span =
                tracing::info_span!("connection", client = %session.id, user = %session.user());
            Box::pin(socketio_packet(conn, m).instrument(span)).await
        }
    }
}

async fn socketio_packet(conn: &Conn, text: &str) -> Option<Disconnect> {
    let session = &conn.session;
    let packet = match SioPacket::decode(text) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "bad socket.io packet");
            return Some(Disconnect::BAD_REQUEST);
        }
    };
    if packet.namespace != "/" {
        if packet.kind == SioKind::Connect {
            let body = serde_json::json!({ "message": "Invalid namespace" });
            let frame = format!("44{},{body}", packet.namespace);
            session.enqueue(Outgoing::frame(frame));
        }
        return None;
    }
    match packet.kind {
        SioKind::Connect => {
            // Boxed: a connect's state is the largest, and would otherwise be every
            // packet's size too (a burst of subscribes holds one per connection).
            let d = Box::pin(connect(conn, packet.data)).await;
            if session.is_connected() {
                conn.not_pending();
            }
            d
        }
        SioKind::Disconnect => Some(Disconnect::CONNECTION_CLOSED),
        // The server asks for no acknowledgements.
        SioKind::Ack => None,
        SioKind::Event => event(conn, &packet).await,
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Auth {
    token: String,
    /// The private id of the connection this one replaces (`socket.io-client` ≥ 4.6
    /// sends it back after a reconnect).
    pid: Option<String>,
    /// The offset of the last event the client received (sent with `pid`).
    offset: Option<String>,
}

async fn connect(conn: &Conn, data: &str) -> Option<Disconnect> {
    let session = &conn.session;
    if session.is_connected() {
        return Some(Disconnect::BAD_REQUEST);
    }
    // The whole `auth` object also goes to the connect proxy as `data`.
    let auth = if data.is_empty() {
        Ok((Auth::default(), None))
    } else {
        serde_json::from_str::<Box<serde_json::value::RawValue>>(data)
            .and_then(|raw| Ok((serde_json::from_str::<Auth>(raw.get())?, Some(raw))))
            .map_err(|_| ErrorCode::BadRequest.into())
    };
    let (pid, offset) = auth
        .as_ref()
        .map(|(a, _)| (a.pid.clone(), a.offset.clone()))
        .unwrap_or_default();
    let comeback = match pid {
        Some(pid) => Comeback::find(conn, pid, offset.as_deref()).await,
        None => None,
    };
    let req = auth.map(|(auth, raw)| ConnectRequest {
        // `auth.token` first: `auth` can be a function the client calls on every
        // reconnect, so it is the fresher one.
        token: match (auth.token.is_empty(), &conn.handshake_token) {
            (true, Some(t)) => t.to_string(),
            _ => auth.token,
        },
        data: raw,
        // Server-side subscriptions recover through the connect itself.
        subs: comeback
            .as_ref()
            .map(|c| c.recover(false))
            .unwrap_or_default(),
        ..ConnectRequest::default()
    });
    match command::connect(session, req).await {
        Ok(c) => {
            let comeback = match comeback {
                Some(back) if back.kept.user == *session.user() => {
                    if let Err(e) = session.node().forget_kept(&back.pid).await {
                        tracing::debug!(error = %e, "kept state not removed");
                    }
                    Some(back)
                }
                // Another user's id: nothing of it is used, and it stays for its owner.
                _ => None,
            };
            joined(conn, c, comeback).await;
            None
        }
        // `socket.io-client` emits `connect_error` with `err.message` and `err.data`;
        // the client may retry on the same connection (with a fresh token, say).
        Err(SessionError::Reply(code)) => {
            let frame = encode_connect_error(code.message(), &ErrorReply::from(code));
            session.enqueue(Outgoing::frame(frame));
            None
        }
        Err(SessionError::Rejected(e)) => {
            let frame = encode_connect_error(&e.message, &*e);
            session.enqueue(Outgoing::frame(frame));
            None
        }
        Err(SessionError::Disconnect(d)) => {
            let data = serde_json::json!({ "code": d.code, "message": d.reason });
            let frame = encode_connect_error(d.reason, &data);
            session.enqueue(Outgoing::frame(frame));
            Some(d)
        }
    }
}

/// A reconnect that found its predecessor's kept state.
struct Comeback {
    pid: String,
    kept: Kept,
    /// Where the client stopped per channel; `None` when it can not be recovered
    /// (past `recovery_window`, or more missed than the writer remembered).
    positions: Option<HashMap<String, StreamPosition>>,
}

impl Comeback {
    async fn find(conn: &Conn, pid: String, offset: Option<&str>) -> Option<Self> {
        let node = conn.session.node();
        let config = &node.config.socketio;
        if config.rejoin_window.is_zero() && config.recovery_window.is_zero() {
            return None;
        }
        let data = match node.kept(&pid).await {
            Ok(d) => d?,
            Err(e) => {
                tracing::debug!(error = %e, "kept state unreadable");
                return None;
            }
        };
        let kept: Kept = serde_json::from_str(data.get()).ok()?;
        let away = recovery::now_millis().saturating_sub(kept.closed_at);
        let within = |w: std::time::Duration| u128::from(away) <= w.as_millis();
        if !within(config.rejoin_window) && !within(config.recovery_window) {
            return None;
        }
        let positions = if config.recovery_window.is_zero() || !within(config.recovery_window) {
            None
        } else {
            kept.positions(offset).map(|p| {
                p.into_iter()
                    .map(|(ch, pos)| (ch.to_owned(), pos))
                    .collect()
            })
        };
        Some(Self {
            pid,
            kept,
            positions,
        })
    }

    /// The recovery requests of the channels joined through routes (`route`) or
    /// server-side.
    fn recover(&self, route: bool) -> HashMap<String, SubscribeRequest> {
        let Some(positions) = &self.positions else {
            return HashMap::new();
        };
        self.kept
            .joined
            .iter()
            .filter(|j| j.route == route)
            .filter_map(|j| {
                let pos = positions.get(&j.channel)?;
                let req = SubscribeRequest {
                    channel: j.channel.clone(),
                    recover: true,
                    offset: pos.offset,
                    epoch: pos.epoch.clone(),
                    ..SubscribeRequest::default()
                };
                Some((j.channel.clone(), req))
            })
            .collect()
    }
}

/// Answers a successful `CONNECT`. After a reconnect, the channels the predecessor
/// joined through routes are joined again (with the checks of any subscribe; a channel
/// now refused stays left), and, when every channel with history recovered what the
/// client missed, the answer carries the predecessor's `pid` (`socket.recovered`) and
/// the missed publications follow it, each channel's in order, before anything live.
async fn joined(conn: &Conn, mut c: Connected, comeback: Option<Comeback>) {
    let session = &conn.session;
    let config = &session.node().config.socketio;
    let mut recovered = comeback.as_ref().is_some_and(|b| b.positions.is_some());
    let mut replay: Vec<(Arc<str>, Vec<Publication>)> = Vec::new();
    // What the user had not received (the inbox): sent whatever the recovery of the
    // connection's own state found.
    let mut inbox: Vec<(Arc<str>, Vec<Publication>)> = Vec::new();
    for (channel, result) in &mut c.result.subs {
        conn.joined(channel, result, false);
        if c.inbox.contains(channel) {
            let publications = std::mem::take(&mut result.publications);
            inbox.push((Arc::from(channel.as_str()), publications));
        } else if result.was_recovering {
            recovered &= result.recovered;
            // They arrive as events, not inside `connected`.
            let publications = std::mem::take(&mut result.publications);
            replay.push((Arc::from(channel.as_str()), publications));
        }
    }
    let mut rejoined = Vec::new();
    if let Some(back) = &comeback {
        let mut recover = back.recover(true);
        for j in back.kept.joined.iter().filter(|j| j.route) {
            let req = recover
                .remove(&j.channel)
                .unwrap_or_else(|| SubscribeRequest {
                    channel: j.channel.clone(),
                    ..SubscribeRequest::default()
                });
            match session.subscribe(req).await {
                Ok(mut s) => {
                    conn.route_joined(&j.channel, Some(&s.result));
                    if s.result.was_recovering {
                        recovered &= s.result.recovered;
                        let publications = std::mem::take(&mut s.result.publications);
                        replay.push((Arc::from(j.channel.as_str()), publications));
                    }
                    rejoined.push(s.activation);
                }
                Err(e) => {
                    // A channel the client may no longer join: not all of its state
                    // came back.
                    recovered = false;
                    tracing::debug!(channel = %j.channel, error = ?e, "not re-joined");
                }
            }
        }
    }
    let count: usize = replay.iter().map(|(_, p)| p.len()).sum();
    recovered &= count <= config.recovery_max_publications;
    let old_client = comeback.as_ref().map(|b| b.kept.client.clone());
    // A kept state is found only under an id this server sent.
    let pid = match comeback
        .filter(|_| recovered)
        .and_then(|b| parse_id(&b.pid))
    {
        Some(pid) => {
            *conn.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid;
            pid
        }
        None => conn.pid(),
    };
    let window = !config.rejoin_window.is_zero() || !config.recovery_window.is_zero();
    let connected = Frame::from(if window {
        encode_connect_with_pid(&session.id, &format_id(pid))
    } else {
        encode_connect(&session.id)
    });
    session.enqueue(Outgoing::frame(connected));
    // What Centrifugo's connect reply says (server-side subscriptions and their
    // recovery state, expiry), right after the namespace is joined.
    let result = encode_event("connected", &c.result);
    session.enqueue(Outgoing::frame(result));
    let node_config = &session.node().config;
    for (channel, publications) in inbox {
        for p in publications {
            let ev = ChannelEvent::new(channel.clone(), EventKind::Publication(p));
            session.enqueue(Outgoing::Event(ev.encoded(&super::CODEC, node_config)));
        }
    }
    if recovered {
        for (channel, publications) in replay {
            for p in publications {
                let skipped = p
                    .exclude_client
                    .as_deref()
                    .is_some_and(|c| Some(c) == old_client.as_deref());
                if skipped {
                    continue;
                }
                let ev = ChannelEvent::new(channel.clone(), EventKind::Publication(p));
                session.enqueue(Outgoing::Event(ev.encoded(&super::CODEC, node_config)));
            }
        }
    }
    // Live events held back during the subscribes follow what was replayed.
    c.activation.complete(None);
    for activation in rejoined {
        activation.complete(None);
    }
}

async fn event(conn: &Conn, packet: &SioPacket<'_>) -> Option<Disconnect> {
    let session = &conn.session;
    if !session.is_connected() {
        return Some(Disconnect::BAD_REQUEST);
    }
    let ack = packet.ack;
    let (name, args) = match packet.event() {
        Ok(e) => e,
        Err(e) => return protocol_error(session, ack, "", ErrorCode::BadRequest, e.0),
    };
    if let Some(route) = super::routes::find(session, &name) {
        return super::routes::run(conn, route, ack, &args).await;
    }
    let mark = match &*name {
        "inbox:read" => Some(Mark::Read),
        "inbox:delivered" => Some(Mark::Delivered),
        _ => None,
    };
    if let Some(mark) = mark {
        return inbox_receipt(session, ack, &name, mark, args.first().map(|a| a.get())).await;
    }
    let body = args.first().map(|a| a.get());
    let request = match Request::decode_named(&name, body) {
        Ok(r) => r,
        Err(DecodeError::UnknownMethod { .. }) => {
            return protocol_error(
                session,
                ack,
                &name,
                ErrorCode::MethodNotFound,
                "unknown event",
            );
        }
        Err(DecodeError::Malformed { detail, .. }) => {
            let message = format!("bad request: {detail}");
            return protocol_error(session, ack, &name, ErrorCode::BadRequest, &message);
        }
    };
    match command::execute(session, request).await {
        Ok(Executed::Reply(body)) => {
            if let Some(id) = ack {
                acknowledge(session, id, &body);
            }
            None
        }
        Ok(Executed::Subscribed(s)) => {
            let first = ack.map(|id| {
                let frame = encode_ack(id, &AckReply(&ReplyBody::Subscribe(s.result)));
                Outgoing::frame(frame)
            });
            s.activation.complete(first);
            None
        }
        Ok(Executed::Nothing) => {
            if let Some(id) = ack {
                acknowledge(session, id, &ReplyBody::Ping(Default::default()));
            }
            None
        }
        Err(SessionError::Reply(code)) => {
            reply_error(session, ack, &name, code, code.message());
            None
        }
        Err(SessionError::Rejected(e)) => {
            send_error(session, ack, &name, *e);
            None
        }
        Err(SessionError::Disconnect(d)) => Some(d),
    }
}

/// `inbox:read` / `inbox:delivered` with `{channel, offset, epoch?}`: acknowledged with
/// `{"result": {"epoch", "delivered", "read"}}`.
async fn inbox_receipt(
    session: &Session,
    ack: Option<u64>,
    name: &str,
    mark: Mark,
    body: Option<&str>,
) -> Option<Disconnect> {
    if let Err(e) = session.admit_command() {
        return match e {
            SessionError::Disconnect(d) => Some(d),
            _ => {
                reply_error(
                    session,
                    ack,
                    name,
                    ErrorCode::TooManyRequests,
                    ErrorCode::TooManyRequests.message(),
                );
                None
            }
        };
    }
    let Some(receipt) = body.and_then(|b| serde_json::from_str::<Receipt>(b).ok()) else {
        return protocol_error(
            session,
            ack,
            name,
            ErrorCode::BadRequest,
            "bad request: expected {channel, offset}",
        );
    };
    match session.inbox_receipt(mark, receipt).await {
        Ok(marks) => {
            if let Some(id) = ack {
                let frame = encode_ack(id, &serde_json::json!({ "result": marks }));
                session.enqueue(Outgoing::frame(frame));
            }
            None
        }
        Err(SessionError::Reply(code)) => {
            reply_error(session, ack, name, code, code.message());
            None
        }
        Err(SessionError::Rejected(e)) => {
            send_error(session, ack, name, *e);
            None
        }
        Err(SessionError::Disconnect(d)) => Some(d),
    }
}

fn acknowledge(session: &Session, id: u64, body: &ReplyBody) {
    let frame = encode_ack(id, &AckReply(body));
    session.enqueue(Outgoing::frame(frame));
}

/// Answers a failed event: in its acknowledgement, or as an `error` event when the
/// client asked for none.
pub(super) fn reply_error(
    session: &Session,
    ack: Option<u64>,
    event: &str,
    code: ErrorCode,
    message: &str,
) {
    let mut e = ErrorReply::from(code);
    message.clone_into(&mut e.message);
    send_error(session, ack, event, e);
}

pub(super) fn send_error(session: &Session, ack: Option<u64>, event: &str, e: ErrorReply) {
    match ack {
        Some(id) => acknowledge(session, id, &ReplyBody::Error(e)),
        None => {
            #[derive(serde::Serialize)]
            struct ErrorPush<'a> {
                #[serde(flatten)]
                error: ErrorReply,
                event: &'a str,
            }
            let push = ErrorPush { error: e, event };
            let frame = encode_event("error", &push);
            session.enqueue(Outgoing::frame(frame));
        }
    }
}

/// A malformed or unknown event: an error reply, and a disconnect once the client
/// persists.
fn protocol_error(
    session: &Session,
    ack: Option<u64>,
    event: &str,
    code: ErrorCode,
    message: &str,
) -> Option<Disconnect> {
    session.node().metrics.command_errors.inc();
    reply_error(session, ack, event, code, message);
    session.protocol_error()
}
