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

use super::Conn;
use crate::event::{Frame, Outgoing};
use crate::session::{Session, SessionError};
use crate::transport::command::{self, Executed};

/// Handles one Engine.IO packet. Returns the disconnect to apply.
pub(super) async fn handle(conn: &Conn, text: &str) -> Option<Disconnect> {
    match EioPacket::decode(text) {
        Err(e) => {
            tracing::debug!(client = %conn.session.id, error = %e, "bad engine.io packet");
            Some(Disconnect::BAD_REQUEST)
        }
        Ok(EioPacket::Pong) => {
            conn.pong.notify_one();
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
            session.enqueue(Outgoing::Frame(Frame::from(frame)));
        }
        return None;
    }
    match packet.kind {
        SioKind::Connect => {
            let d = connect(conn, packet.data).await;
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
    let pid = auth.as_ref().ok().and_then(|(a, _)| a.pid.clone());
    let req = auth.map(|(auth, raw)| ConnectRequest {
        // `auth.token` first: `auth` can be a function the client calls on every
        // reconnect, so it is the fresher one.
        token: match (auth.token.is_empty(), &conn.handshake_token) {
            (true, Some(t)) => t.to_string(),
            _ => auth.token,
        },
        data: raw,
        ..ConnectRequest::default()
    });
    match command::connect(session, req).await {
        Ok(c) => {
            let rejoin = !session.node().config.socketio.rejoin_window.is_zero();
            let connected = Frame::from(if rejoin {
                encode_connect_with_pid(&session.id, &conn.pid)
            } else {
                encode_connect(&session.id)
            });
            session.enqueue(Outgoing::Frame(connected));
            // What Centrifugo's connect reply says (server-side subscriptions and their
            // recovery state, expiry), right after the namespace is joined.
            let result = encode_event("connected", &c.result);
            c.activation
                .complete(Some(Outgoing::Frame(Frame::from(result))));
            if let Some(pid) = pid.filter(|_| rejoin) {
                rejoin_channels(conn, &pid).await;
            }
            None
        }
        // `socket.io-client` emits `connect_error` with `err.message` and `err.data`;
        // the client may retry on the same connection (with a fresh token, say).
        Err(SessionError::Reply(code)) => {
            let frame = encode_connect_error(code.message(), &ErrorReply::from(code));
            session.enqueue(Outgoing::Frame(Frame::from(frame)));
            None
        }
        Err(SessionError::Rejected(e)) => {
            let frame = encode_connect_error(&e.message, &*e);
            session.enqueue(Outgoing::Frame(Frame::from(frame)));
            None
        }
        Err(SessionError::Disconnect(d)) => {
            let data = serde_json::json!({ "code": d.code, "message": d.reason });
            let frame = encode_connect_error(d.reason, &data);
            session.enqueue(Outgoing::Frame(Frame::from(frame)));
            Some(d)
        }
    }
}

/// Subscribes a reconnected connection again to what its predecessor `pid` joined
/// through routes, with the checks of any subscribe (a channel now refused stays left).
/// The client is not told: its rooms are simply there, as they were.
async fn rejoin_channels(conn: &Conn, pid: &str) {
    let session = &conn.session;
    for channel in conn.rejoin.take(pid, &session.user()) {
        let req = SubscribeRequest {
            channel: channel.to_string(),
            ..SubscribeRequest::default()
        };
        match session.subscribe(req).await {
            Ok(s) => {
                s.activation.complete(None);
                conn.route_joined(&channel, true);
            }
            Err(e) => tracing::debug!(%channel, error = ?e, "not re-joined"),
        }
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
                Outgoing::Frame(Frame::from(frame))
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

fn acknowledge(session: &Session, id: u64, body: &ReplyBody) {
    let frame = encode_ack(id, &AckReply(body));
    session.enqueue(Outgoing::Frame(Frame::from(frame)));
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
            session.enqueue(Outgoing::Frame(Frame::from(frame)));
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
