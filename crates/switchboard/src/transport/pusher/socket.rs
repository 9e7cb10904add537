//! One Pusher WebSocket connection at `/app/<key>`: the handshake's checks, then a
//! reader (client messages, the heartbeat's timers) beside the shared writer.
//!
//! A connection belongs to the app its key names. It is anonymous: it is connected as
//! soon as it opens, subscribes the app's public channels as the namespaces' rules (or
//! the subscribe proxy) allow, private and presence channels with the app's signature,
//! and becomes a user's by `pusher:signin`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use switchboard_protocol::command::SubscribeRequest;
use switchboard_protocol::{Disconnect, ErrorCode};
use tokio::time::sleep_until;
use tracing::Instrument;

use super::counts::Counts;
use super::names::{self, Kind};
use super::signature;
use super::wire::{self, Incoming, CODEC};
use crate::auth::{Grant, Identity};
use crate::config::PusherApp;
use crate::event::{Frame, Outgoing};
use crate::front_door::Peer;
use crate::history::HistoryQuery;
use crate::metrics::connections::Transport;
use crate::node::{Node, NodeError};
use crate::session::{Session, SessionError, SessionResult, EXCLUDE_CLIENT_TAG};
use crate::transport::command;
use crate::transport::heartbeat::Heartbeat;
use crate::transport::socketio::EVENT_TAG;
use crate::transport::websocket::{
    self, Deflate, FrameReader, Message, WebSocket, WsSink, WsUpgrade,
};
use crate::transport::writer::{self, FrameSink, Wire};

/// One Pusher message per WebSocket message: the protocol has no separator. Channels
/// are named in the app whose channels they are.
const WIRE: Wire = Wire {
    encode: wire::encode_outgoing,
    farewell: wire::farewell,
    close: wire::close,
};

/// Protocol versions spoken: pusher-js 8 asks for 7; 5 and 6 differ from it only in
/// what this server does not use.
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Longest event name (Pusher: 200 characters).
pub(super) const MAX_EVENT_NAME: usize = 200;

/// Upgrades `GET /app/<key>` for the app whose key it is. A key no app has or a
/// protocol version not spoken is refused after the upgrade, as Pusher does: pusher-js
/// reads the close code to decide what to do.
pub(super) async fn handler(
    State(node): State<Arc<Node>>,
    State(counts): State<Option<Arc<Counts>>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    peer: Peer,
    RawQuery(query): RawQuery,
    ws: WsUpgrade,
) -> Response {
    if !crate::transport::origin_allowed(&node.config, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if let Err(busy) = peer.admit_handshake() {
        return busy.into_response();
    }
    let app = admit(&node, &key, query.as_deref());
    let origin = node.proxies.origin("pusher", &headers);
    let ws = ws.configure(&node.config);
    let deflate = ws.deflate();
    ws.on_upgrade(move |socket| {
        let tracker = node.tracker.clone();
        tracker.track_future(async move {
            match app {
                Err(d) => refuse(&node, socket, d).await,
                Ok(app) => serve(node, socket, deflate, origin, Served { app, counts }).await,
            }
        })
    })
}

/// The app a connection is for (its place among the configured apps), or why it is
/// refused: a key no app has, or a protocol version missing, malformed or not spoken.
fn admit(node: &Node, key: &str, query: Option<&str>) -> Result<usize, Disconnect> {
    let app = node
        .config
        .pusher
        .apps()
        .position(|app| app.key == key)
        .ok_or(Disconnect::PUSHER_APP_UNKNOWN)?;
    let version = query.and_then(|q| q.split('&').find_map(|p| p.strip_prefix("protocol=")));
    match version.map(str::parse::<u32>) {
        None => Err(Disconnect::PUSHER_NO_PROTOCOL),
        Some(Err(_)) => Err(Disconnect::PUSHER_BAD_PROTOCOL),
        Some(Ok(v)) if !PROTOCOLS.contains(&v) => Err(Disconnect::PUSHER_UNSUPPORTED_PROTOCOL),
        Some(Ok(_)) => Ok(app),
    }
}

/// Says why, then closes with the code.
async fn refuse(node: &Node, socket: WebSocket, d: Disconnect) {
    node.metrics.connections_refused.inc();
    let (half, _reader) = websocket::split(socket);
    let mut sink = WsSink::new(half, None, None);
    let say = async {
        let error = wire::error(Some(u32::from(d.code)), d.reason);
        if sink.send(Frame::from(error)).await.is_ok() {
            sink.close(d).await;
        }
    };
    let _ = tokio::time::timeout(node.config.network.close_linger, say).await;
}

/// What a connection serves: the app at `app` among the configured ones (an index,
/// not the app itself: an idle connection's future stays small), and where its new
/// subscriptions are noted for their count.
struct Served {
    app: usize,
    counts: Option<Arc<Counts>>,
}

/// A fresh socket id: two numbers, as Pusher's server libraries check (`\d+\.\d+`).
fn socket_id() -> Arc<str> {
    format!("{}.{}", rand::random::<u32>(), rand::random::<u32>()).into()
}

async fn serve(
    node: Arc<Node>,
    socket: WebSocket,
    deflate: Option<Deflate>,
    origin: crate::proxy::ClientOrigin,
    served: Served,
) {
    let codec = websocket::codec(&CODEC, deflate);
    let session = Session::with_id(node, codec, socket_id());
    session.set_origin(origin);
    crate::transport::opened(&session, Transport::Pusher);
    let (sink, stream) = websocket::split(socket);
    // The writer is a task of its own, so a delivery wakes only the writer.
    let writer = {
        let session = session.clone();
        tokio::spawn(async move {
            writer::write_loop(WsSink::new(sink, None, deflate), &session, WIRE).await;
        })
    };
    // Boxed: the connect's state would otherwise take room in the connection's future
    // for its whole life.
    if Box::pin(establish(&session)).await {
        read_loop(stream, &session, &served).await;
    }
    Box::pin(session.cleanup()).await;
    let _ = writer.await;
    crate::transport::closed(&session, Transport::Pusher);
}

/// Connects the session anonymously and says `pusher:connection_established`.
/// Returns whether it is connected.
async fn establish(session: &Arc<Session>) -> bool {
    let metrics = &session.node().metrics;
    metrics.commands.inc();
    let result = match session.admit_command() {
        Ok(()) => session.connect_as(Identity::default()).await,
        Err(e) => Err(e),
    };
    metrics.command_kinds.record("connect", result.is_ok());
    match result {
        Ok(()) => {
            // pusher-js pings after this much silence; the server's own pings, every
            // ping_interval, keep it from having to.
            let activity = session.node().config.client.ping_interval.as_secs().max(1);
            let hello = wire::connection_established(&session.id, activity);
            session.enqueue(Outgoing::frame(hello));
            true
        }
        Err(e) => {
            session.close(match e {
                SessionError::Disconnect(d) => d,
                _ => Disconnect::SERVER_ERROR,
            });
            false
        }
    }
}

async fn read_loop(mut stream: FrameReader, session: &Arc<Session>, served: &Served) {
    let mut heartbeat = Heartbeat::new(session, || Frame::from_static(wire::PING));
    heartbeat.start_pings(session);
    // Waited on across the loop: registered with the node's shutdown once.
    let shutdown = session.node().shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        let deadline = heartbeat.deadline(session);
        tokio::select! {
            biased;
            // Cancel-safe: polled by reference.
            () = &mut shutdown => return,
            // Cancel-safe (see `woken`): the session closed, or a deadline moved.
            closing = session.woken() => {
                if closing {
                    return;
                }
            }
            // Cancel-safe: a timer.
            () = sleep_until(deadline) => {
                if let Some(d) = heartbeat.fire(session) {
                    session.close(d);
                    return;
                }
            }
            // Cancel-safe: `next()` holds no state of its own.
            msg = stream.next() => {
                let text = match msg {
                    None | Some(Ok(Message::Close(_))) => {
                        session.close(Disconnect::CONNECTION_CLOSED);
                        return;
                    }
                    Some(Ok(Message::Text(text))) => text,
                    // Pusher's protocol is JSON text only.
                    Some(Ok(Message::Binary(_))) => {
                        session.close(Disconnect::BAD_REQUEST);
                        return;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        if let Some(d) = command::meter_control(session) {
                            session.close(d);
                            return;
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        session.close(e);
                        return;
                    }
                };
                heartbeat.pong();
                // Boxed: message handling is deep and rare next to idling. The span
                // lives only while a message is handled.
                let span = tracing::info_span!("connection", client = %session.id, user = %session.user());
                if let Some(d) = Box::pin(handle(session, served, text.as_str()).instrument(span)).await {
                    session.close(d);
                    return;
                }
            }
        }
    }
}

/// A refused message: what the session said, and the channel of a refused
/// subscription (answered with `pusher:subscription_error` rather than `pusher:error`).
struct Refused {
    error: SessionError,
    channel: Option<String>,
}

impl From<SessionError> for Refused {
    fn from(error: SessionError) -> Self {
        Self {
            error,
            channel: None,
        }
    }
}

impl From<ErrorCode> for Refused {
    fn from(code: ErrorCode) -> Self {
        SessionError::from(code).into()
    }
}

/// Handles one client message. Returns a disconnect to apply.
async fn handle(session: &Arc<Session>, served: &Served, text: &str) -> Option<Disconnect> {
    // Configured apps do not change while the node runs: `admit` found this one.
    let Some(app) = session.node().config.pusher.apps().nth(served.app) else {
        return Some(Disconnect::SERVER_ERROR);
    };
    let Ok(msg) = serde_json::from_str::<Incoming>(text) else {
        return malformed(session, "malformed message");
    };
    let data = msg.data.as_deref();
    let (kind, result) = match msg.event.as_str() {
        // The answer to the server's ping: the read itself showed the client alive.
        "pusher:pong" => return command::meter_control(session),
        "pusher:ping" => ("ping", ping(session)),
        "pusher:subscribe" => {
            let counts = served.counts.as_deref();
            ("subscribe", subscribe(session, app, counts, data).await)
        }
        "pusher:unsubscribe" => ("unsubscribe", unsubscribe(session, app, data).await),
        "pusher:signin" => ("signin", signin(session, app, data).await),
        event if event.starts_with("client-") => {
            ("publish", client_event(session, app, &msg).await)
        }
        _ => return malformed(session, "unknown event"),
    };
    let metrics = &session.node().metrics;
    metrics.commands.inc();
    metrics.command_kinds.record(kind, result.is_ok());
    let Err(refused) = result else {
        return None;
    };
    let reply = match refused.error {
        SessionError::Disconnect(d) => return Some(d),
        e => e.reply()?,
    };
    metrics.command_errors.inc();
    let frame = match refused.channel {
        Some(channel) => {
            let (kind, status) = subscription_status(reply.code);
            wire::subscription_error(&channel, kind, &reply.message, status)
        }
        // Pusher's own code for a client event over the rate.
        None if kind == "publish" && reply.code == ErrorCode::TooManyRequests.code() => {
            wire::error(Some(CLIENT_EVENT_RATE), &reply.message)
        }
        None => wire::error(Some(reply.code), &reply.message),
    };
    session.enqueue(Outgoing::frame(frame));
    None
}

/// 4301: a client event refused for the rate limit (Pusher's code).
const CLIENT_EVENT_RATE: u32 = 4301;

/// The `type` and HTTP-like `status` of a `pusher:subscription_error` for an error
/// code (what pusher-js reports when the auth endpoint refuses).
fn subscription_status(code: u32) -> (&'static str, u16) {
    let is = |c: ErrorCode| code == c.code();
    if is(ErrorCode::PermissionDenied) {
        ("AuthError", 403)
    } else if is(ErrorCode::UnknownChannel) {
        ("SubscriptionError", 404)
    } else if is(ErrorCode::LimitExceeded) || is(ErrorCode::TooManyRequests) {
        ("SubscriptionError", 429)
    } else if is(ErrorCode::Internal) {
        ("SubscriptionError", 500)
    } else {
        ("SubscriptionError", 400)
    }
}

/// Counts a message that is not JSON or not an event this server knows.
fn malformed(session: &Session, why: &str) -> Option<Disconnect> {
    session.node().metrics.command_errors.inc();
    let error = wire::error(Some(ErrorCode::BadRequest.code()), why);
    session.enqueue(Outgoing::frame(error));
    session.protocol_error()
}

fn ping(session: &Session) -> Result<(), Refused> {
    session.admit_command()?;
    session.enqueue(Outgoing::frame(Frame::from_static(wire::PONG)));
    Ok(())
}

async fn subscribe(
    session: &Arc<Session>,
    app: PusherApp<'_>,
    counts: Option<&Counts>,
    data: Option<&RawValue>,
) -> Result<(), Refused> {
    let req: wire::SubscribeData = wire::data_as(data).ok_or(ErrorCode::BadRequest)?;
    let result = async {
        session.admit_command()?;
        let channel = subscribe_channel(session, app, &req).await?;
        // Confirmed: the next round of counts tells the newcomer.
        if let Some(counts) = counts {
            if super::counts::counted(&session.node().config.pusher, &channel) {
                counts.joined(&channel, session);
            }
        }
        Ok::<(), SessionError>(())
    }
    .await;
    result.map_err(|error| Refused {
        error,
        channel: Some(req.channel),
    })
}

/// Subscribes `app`'s channel; returns its switchboard name.
async fn subscribe_channel(
    session: &Arc<Session>,
    app: PusherApp<'_>,
    req: &wire::SubscribeData,
) -> SessionResult<String> {
    let node = session.node();
    let pusher = &node.config.pusher;
    let (channel, kind) =
        names::to_switchboard(pusher, app, &req.channel).ok_or(ErrorCode::UnknownChannel)?;
    let ns = node.rules.namespace(&channel)?.clone();
    let grant = if kind.needs_auth() {
        let channel_data =
            (kind == Kind::Presence).then(|| req.channel_data.as_deref().unwrap_or(""));
        let auth = req.auth.as_deref().unwrap_or("");
        if !signature::verify_channel(app, auth, &session.id, &req.channel, channel_data) {
            node.metrics.auth_failures.inc();
            tracing::info!(channel = %req.channel, "subscription refused: invalid auth signature");
            return Err(ErrorCode::PermissionDenied.into());
        }
        Some(match channel_data {
            Some(text) => member(text)?,
            None => Grant::default(),
        })
    } else if names::user_channel_id(&req.channel).is_some_and(|id| signed_in_as(session, app, id))
    {
        // The signed-in user's own channel, as Pusher has it: no rule needed.
        Some(Grant::default())
    } else {
        None
    };
    if kind == Kind::Presence && !ns.presence {
        return Err(ErrorCode::NotAvailable.into());
    }
    // A cache channel's last event is read from its history, so every node knows it.
    let cache = names::is_cache(&req.channel);
    if cache && node.history_options(&ns).is_none() {
        return Err(ErrorCode::NotAvailable.into());
    }
    let request = SubscribeRequest {
        channel: channel.clone(),
        ..SubscribeRequest::default()
    };
    let subscribed = session.subscribe_granted(request, grant).await?;
    let read = async {
        let members = match kind {
            Kind::Presence => Some(node.presence(&channel).await?),
            _ => None,
        };
        let last = if cache {
            let query = HistoryQuery {
                limit: Some(1),
                reverse: true,
                ..HistoryQuery::default()
            };
            Some(node.history(&channel, query).await?.publications.pop())
        } else {
            None
        };
        Ok::<_, NodeError>((members, last))
    };
    let (members, last) = match read.await {
        Ok(read) => read,
        Err(e) => {
            drop(subscribed.activation);
            session.unsubscribe(&channel).await?;
            return Err(e.into());
        }
    };
    let data = match members {
        Some(p) => wire::presence_data(p.presence.values()),
        None => "{}".to_owned(),
    };
    let succeeded = Outgoing::frame(wire::subscription_succeeded(&req.channel, &data));
    let activation = subscribed.activation;
    match last {
        None => activation.complete(Some(succeeded)),
        Some(None) => {
            let miss = Outgoing::frame(wire::cache_miss(&req.channel));
            activation.complete_with(succeeded, miss, 0);
        }
        Some(Some(p)) => {
            let seen = p.offset;
            let last = Outgoing::frame(wire::cached(pusher, &channel, p));
            activation.complete_with(succeeded, last, seen);
        }
    }
    Ok(channel)
}

/// The presence member the signed `channel_data` names.
fn member(channel_data: &str) -> SessionResult<Grant> {
    let data: wire::ChannelData =
        serde_json::from_str(channel_data).map_err(|_| ErrorCode::BadRequest)?;
    let user = data.user_id.into_string();
    if user.is_empty() {
        return Err(ErrorCode::BadRequest.into());
    }
    Ok(Grant {
        info: data.user_info.map(crate::api::methods::payload),
        user: Some(user.into()),
        ..Grant::default()
    })
}

/// Whether the connection signed in as `app`'s user `id`.
fn signed_in_as(session: &Session, app: PusherApp<'_>, id: &str) -> bool {
    names::local_user(app, &session.user()) == Some(id)
}

async fn unsubscribe(
    session: &Session,
    app: PusherApp<'_>,
    data: Option<&RawValue>,
) -> Result<(), Refused> {
    let req: wire::SubscribeData = wire::data_as(data).ok_or(ErrorCode::BadRequest)?;
    session.admit_command()?;
    let pusher = &session.node().config.pusher;
    if let Some((channel, _)) = names::to_switchboard(pusher, app, &req.channel) {
        session.unsubscribe(&channel).await?;
    }
    Ok(())
}

/// A `client-` event: a publication tagged with its name, skipping its sender, into a
/// private or presence channel whose namespace lets subscribers publish.
async fn client_event(
    session: &Session,
    app: PusherApp<'_>,
    msg: &Incoming,
) -> Result<(), Refused> {
    session.admit_command()?;
    let name = msg.channel.as_deref().unwrap_or("");
    let pusher = &session.node().config.pusher;
    let (channel, kind) =
        names::to_switchboard(pusher, app, name).ok_or(ErrorCode::UnknownChannel)?;
    if !kind.allows_client_events() || msg.event.len() > MAX_EVENT_NAME {
        return Err(ErrorCode::PermissionDenied.into());
    }
    let data = match &msg.data {
        Some(d) => crate::api::methods::payload(d.clone()),
        None => crate::api::methods::payload(RawValue::NULL.to_owned()),
    };
    let mut tags = BTreeMap::new();
    tags.insert(EVENT_TAG.to_owned(), msg.event.clone());
    tags.insert(EXCLUDE_CLIENT_TAG.to_owned(), session.id.to_string());
    session
        .publish_tagged(&channel, Some(data), Some(Arc::new(tags)))
        .await?;
    Ok(())
}

/// `pusher:signin`: the app's signature over `user_data` makes the connection that
/// user's (for `terminate_connections`, its `#server-to-user-<id>` channel, the
/// per-user limit and online status); a prefixed app's user `42` is the switchboard
/// user `<prefix>:42`.
async fn signin(
    session: &Arc<Session>,
    app: PusherApp<'_>,
    data: Option<&RawValue>,
) -> Result<(), Refused> {
    session.admit_command()?;
    let req: wire::SigninData = wire::data_as(data).ok_or(ErrorCode::BadRequest)?;
    if !signature::verify_signin(app, &req.auth, &session.id, &req.user_data) {
        session.node().metrics.auth_failures.inc();
        tracing::info!("sign-in refused: invalid auth signature");
        return Err(ErrorCode::PermissionDenied.into());
    }
    let user: wire::UserData =
        serde_json::from_str(&req.user_data).map_err(|_| ErrorCode::BadRequest)?;
    let id = user.id.into_string();
    if id.is_empty() {
        return Err(ErrorCode::BadRequest.into());
    }
    let pusher = &session.node().config.pusher;
    let Some(user_id) = names::user_of(pusher, app, &id) else {
        tracing::info!("sign-in refused: the user id names another app's user");
        return Err(ErrorCode::PermissionDenied.into());
    };
    let identity = Identity {
        user: user_id.into(),
        info: user.user_info.map(crate::api::methods::payload),
        ..Identity::default()
    };
    session.sign_in(identity).await?;
    let success = wire::signin_success(&req.user_data);
    session.enqueue(Outgoing::frame(success));
    Ok(())
}
