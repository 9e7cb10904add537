//! The Centrifugo client protocol v2 over WebSocket at `/connection/websocket`, in
//! either encoding: JSON (text frames) or Protobuf (binary frames), chosen at the
//! upgrade as the official SDKs ask for it. HTTP-streaming and SSE
//! ([`super::streaming`]) run the same connection over other links.
//!
//! One task per connection runs a reader (commands, timers) and the writer driver
//! ([`super::writer`]) side by side. The reader and the command path are the same for
//! every encoding and link: an [`Encoding`] only turns frames into commands and replies
//! and pushes into frames, a [`Link`] says what differs between links.
//!
//! - [`json`]: newline-delimited JSON in text frames.
//! - [`protobuf`]: length-delimited Protobuf in binary frames.

pub(crate) mod json;
pub(crate) mod protobuf;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use switchboard_protocol::command::{Command, ConnectRequest, DecodeError, Request};
use switchboard_protocol::reply::{ErrorReply, PushBody, ReplyBody};
use switchboard_protocol::{Disconnect, ErrorCode};
use tokio::time::sleep_until;
use tracing::Instrument;

use super::command::{self, Executed};
use super::heartbeat::Heartbeat;
use super::websocket::{self, Deflate, Message, WebSocket, WsSink, WsUpgrade};
use super::writer::{self, FrameSink, Wire};
use crate::event::{ChannelEvent, Codec, Control, EventKind, Frame, Outgoing};
use crate::front_door::Peer;
use crate::metrics::connections::Transport;
use crate::node::Node;
use crate::session::{Session, SessionError};

/// One encoding of the Centrifugo protocol, at the edge: frames into commands, replies
/// and pushes into frames. Everything between (the session, limits, metrics) is shared.
pub(crate) trait Encoding: 'static {
    /// What separates text frames joined into one WebSocket message (binary frames
    /// delimit themselves).
    const JOIN: &'static str;
    /// How channel events are encoded: once per encoding, shared by its sessions.
    fn codec() -> &'static Codec;
    /// The server's ping.
    fn ping() -> Frame;
    /// The commands in one received message.
    ///
    /// # Errors
    /// The disconnect for a message that is not of this encoding at all.
    fn decode(message: Frame) -> Result<Vec<Result<Command, DecodeError>>, Disconnect>;
    /// A reply to command `id`.
    fn reply(id: u32, body: &ReplyBody) -> Frame;
    /// A push about `channel` (empty for connection-level pushes).
    fn push(channel: &str, body: &PushBody<'_>) -> Frame;
}

/// The subprotocol centrifuge-js asks for over WebSocket with its Protobuf build.
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
/// The JSON subprotocol, selected when a client offers it.
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

/// Whether the query asks for Protobuf: `cf_protocol=protobuf` (the SDKs) or
/// `format=protobuf` (older clients), as Centrifugo reads them.
fn wants_protobuf(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "cf_protocol=protobuf" | "format=protobuf"))
    })
}

/// Upgrades `GET /connection/websocket`: Protobuf when the query or the subprotocol asks
/// for it, JSON otherwise.
pub async fn handler(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    peer: Peer,
    RawQuery(query): RawQuery,
    ws: WsUpgrade,
) -> Response {
    if !super::origin_allowed(&node.config, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if let Err(busy) = peer.admit_handshake() {
        return busy.into_response();
    }
    let origin = node.proxies.origin("websocket", &headers);
    let ws = ws
        .configure(&node.config)
        .protocols([JSON_SUBPROTOCOL, PROTOBUF_SUBPROTOCOL]);
    let deflate = ws.deflate();
    let protobuf = wants_protobuf(query.as_deref())
        || ws
            .selected_protocol()
            .is_some_and(|p| p == PROTOBUF_SUBPROTOCOL);
    ws.on_upgrade(move |socket| {
        let tracker = node.tracker.clone();
        let connection = if protobuf {
            let transport = Transport::WebSocketProtobuf;
            Either::Left(serve::<protobuf::Protobuf>(
                node, socket, deflate, origin, transport,
            ))
        } else {
            let transport = Transport::WebSocketJson;
            Either::Right(serve::<json::Json>(
                node, socket, deflate, origin, transport,
            ))
        };
        tracker.track_future(connection)
    })
}

/// Splits the socket and starts the connection. Not an `async fn`: the socket would
/// then stay in every idle connection's task beside its two halves.
fn serve<E: Encoding>(
    node: Arc<Node>,
    socket: WebSocket,
    deflate: Option<Deflate>,
    origin: crate::proxy::ClientOrigin,
    transport: Transport,
) -> impl Future<Output = ()> + Send {
    let session = Session::new(node, websocket::codec(E::codec(), deflate));
    session.set_origin(origin);
    let (sink, stream) = websocket::split(socket);
    // A WebSocket link is the same for every connection of a transport: shared, so
    // an idle connection's task keeps a reference to it, not a copy.
    static LINKS: [Link; 2] = [
        Link::websocket(Transport::WebSocketJson),
        Link::websocket(Transport::WebSocketProtobuf),
    ];
    let link = if transport == Transport::WebSocketProtobuf {
        &LINKS[1]
    } else {
        &LINKS[0]
    };
    run::<E>(
        session,
        WsSink::new(sink, Some(E::JOIN), deflate),
        stream.map(ws_inbound),
        link,
    )
}

/// What a reader gets from its connection.
pub(crate) enum Inbound {
    /// A message with commands.
    Frame(Frame),
    /// A frame that carries no command (a WebSocket ping or pong): metered only.
    Control,
    /// The connection ended, or broke the rules of its link.
    Closed(Disconnect),
}

/// A WebSocket message as what a reader gets.
pub(crate) fn ws_inbound(msg: Result<Message, Disconnect>) -> Inbound {
    match msg {
        Ok(Message::Text(text)) => Inbound::Frame(Frame::Text(text)),
        Ok(Message::Binary(bytes)) => Inbound::Frame(Frame::Binary(bytes)),
        Ok(Message::Close(_)) => Inbound::Closed(Disconnect::CONNECTION_CLOSED),
        // The reader returns no raw frames; a ping or pong carries no command.
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Inbound::Control,
        Err(d) => Inbound::Closed(d),
    }
}

/// What differs between the links a Centrifugo connection runs over.
pub(crate) struct Link {
    /// The transport, for metrics and logs.
    pub(crate) transport: Transport,
    /// The session id an emulated connection (HTTP-streaming, SSE) is told in its
    /// connect reply, with the node's name, to send its commands to `/emulation`.
    pub(crate) emulation: Option<Arc<str>>,
    /// Frames written before the connection ends.
    pub(crate) farewell: fn(&Session, Disconnect) -> Vec<Frame>,
}

impl Link {
    /// A WebSocket link: the close frame carries the code and reason.
    const fn websocket(transport: Transport) -> Self {
        Self {
            transport,
            emulation: None,
            farewell: |_, _| Vec::new(),
        }
    }
}

/// A `disconnect` push: how a link without close frames tells the code and reason.
pub(crate) fn disconnect_push<E: Encoding>(_: &Session, reason: Disconnect) -> Vec<Frame> {
    if reason == Disconnect::CONNECTION_CLOSED {
        // The client went away (or closed): there is no one to tell.
        return Vec::new();
    }
    let body = PushBody::Disconnect {
        code: u32::from(reason.code),
        reason: reason.reason,
    };
    vec![E::push("", &body)]
}

/// Runs one connection: the reader on `inbound` here, the writer driver on `sink` in a
/// task of its own (started at once), until the session closes; then releases the
/// session. Not an `async fn`, so the sink handed to the writer is not also kept here.
pub(crate) fn run<E: Encoding>(
    session: Arc<Session>,
    sink: impl FrameSink + 'static,
    inbound: impl Stream<Item = Inbound> + Send + Unpin,
    link: impl std::ops::Deref<Target = Link> + Send + 'static,
) -> impl Future<Output = ()> + Send {
    super::opened(&session, link.transport);
    // The writer is a task of its own, so a delivery wakes only the writer, not the
    // reader's timers and cancellation futures as well.
    let wire = Wire {
        encode: encode::<E>,
        farewell: link.farewell,
        close: writer::same_close,
    };
    let writer = tokio::spawn(writer::write_loop(sink, session.clone(), wire));
    async move {
        // The reader returns as soon as the session closes, so presence and
        // subscriptions are released then, not after the close frame got through to a
        // client that may have stopped reading.
        read_loop::<E>(inbound, &session, &link).await;
        Box::pin(session.cleanup()).await;
        let _ = writer.await;
        super::closed(&session, link.transport);
    }
}

/// A channel event as a push: what every encoding's codec sends.
pub(crate) fn event_push<E: Encoding>(ev: &ChannelEvent) -> Frame {
    let body = match &ev.kind {
        EventKind::Publication(p) => PushBody::Pub(p),
        EventKind::Join(info) => PushBody::Join { info },
        EventKind::Leave(info) => PushBody::Leave { info },
    };
    E::push(&ev.channel, &body)
}

/// A publication for a subscriber that negotiated deltas, with `payload` as its data
/// (a delta when `delta`); `None` for joins and leaves, which never come here.
pub(crate) fn delta_push<E: Encoding>(
    ev: &ChannelEvent,
    payload: &[u8],
    delta: bool,
) -> Option<Frame> {
    let EventKind::Publication(publication) = &ev.kind else {
        return None;
    };
    let body = PushBody::DeltaPub(switchboard_protocol::reply::DeltaPub {
        publication,
        payload,
        delta,
    });
    Some(E::push(&ev.channel, &body))
}

pub(crate) fn encode<E: Encoding>(_: &Session, item: Outgoing) -> Frame {
    match item.into_frame() {
        Ok(frame) => frame,
        Err(c) => match *c {
            Control::Subscribed { channel, result } => {
                E::push(&channel, &PushBody::Subscribe(&result))
            }
            Control::Refresh { expires, ttl } => E::push("", &PushBody::Refresh { expires, ttl }),
            Control::InboxRead { channel, marks } => {
                match crate::node::read_push_data(&channel, &marks) {
                    Some(data) => E::push("", &PushBody::Message { data: &data }),
                    None => E::push(
                        "",
                        &PushBody::Message {
                            data: serde_json::value::RawValue::NULL,
                        },
                    ),
                }
            }
            Control::Unsubscribed {
                channel,
                code,
                reason,
            } => E::push(&channel, &PushBody::Unsubscribe { code, reason }),
        },
    }
}

async fn read_loop<E: Encoding>(
    mut inbound: impl Stream<Item = Inbound> + Unpin,
    session: &Arc<Session>,
    link: &Link,
) {
    let mut heartbeat = Heartbeat::new(session, E::ping);
    // Waited on across the loop: registered with the node's shutdown once, not on
    // every message.
    let shutdown = session.node().shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        // The frame is handled after the `select!`, not in its arm: an arm's await would
        // keep the waiting futures' room beside the handling's in every connection's
        // task, where after it the two share it.
        let msg = tokio::select! {
            biased;
            // Cancel-safe: polled by reference.
            () = &mut shutdown => return,
            // Cancel-safe (see `woken`): the session closed, or a deadline moved.
            closing = session.woken() => {
                if closing {
                    return;
                }
                continue;
            }
            // Cancel-safe: a timer.
            () = sleep_until(heartbeat.deadline(session)) => {
                if let Some(d) = heartbeat.fire(session) {
                    session.close(d);
                    return;
                }
                continue;
            }
            // Cancel-safe: `next()` holds no state of its own.
            msg = inbound.next() => msg,
        };
        let message = match msg {
            Some(Inbound::Frame(frame)) => frame,
            Some(Inbound::Control) => {
                if let Some(d) = command::meter_control(session) {
                    session.close(d);
                    return;
                }
                continue;
            }
            Some(Inbound::Closed(d)) => {
                session.close(d);
                return;
            }
            None => {
                session.close(Disconnect::CONNECTION_CLOSED);
                return;
            }
        };
        match E::decode(message) {
            Ok(commands) => {
                heartbeat.pong();
                // Boxed: command handling is deep and rare next to idling, so it must not
                // inflate every idle connection's task.
                // Log lines about commands carry the client id and user. The span lives
                // only while a frame is handled: a span per idle connection would cost
                // memory, and entering it on every writer wake-up time.
                let span =
                    tracing::info_span!("connection", client = %session.id, user = %session.user());
                let handled = handle_frame::<E>(session, commands, link).instrument(span);
                if let Some(d) = Box::pin(handled).await {
                    session.close(d);
                    return;
                }
                if session.is_connected() {
                    heartbeat.start_pings(session);
                }
            }
            Err(d) => {
                session.close(d);
                return;
            }
        }
    }
}

fn reply<E: Encoding>(session: &Session, id: u32, body: &ReplyBody) {
    if id != 0 {
        session.enqueue(Outgoing::frame(E::reply(id, body)));
    }
}

fn reply_error<E: Encoding>(session: &Session, id: u32, code: ErrorCode, message: Option<String>) {
    let mut e = ErrorReply::from(code);
    if let Some(m) = message {
        e.message = m;
    }
    reply::<E>(session, id, &ReplyBody::Error(e));
}

/// Handles the commands of one frame. Returns a disconnect to apply.
async fn handle_frame<E: Encoding>(
    session: &Arc<Session>,
    commands: Vec<Result<Command, DecodeError>>,
    link: &Link,
) -> Option<Disconnect> {
    for cmd in commands {
        let cmd = match cmd {
            Ok(cmd) => cmd,
            Err(DecodeError::Malformed { id, detail }) => {
                if !session.is_connected() {
                    return Some(Disconnect::BAD_REQUEST);
                }
                session.node().metrics.command_errors.inc();
                reply_error::<E>(
                    session,
                    id,
                    ErrorCode::BadRequest,
                    Some(format!("bad request: {detail}")),
                );
                if let Some(d) = session.protocol_error() {
                    return Some(d);
                }
                continue;
            }
            Err(DecodeError::UnknownMethod { id }) => {
                if !session.is_connected() {
                    return Some(Disconnect::BAD_REQUEST);
                }
                session.node().metrics.command_errors.inc();
                reply_error::<E>(session, id, ErrorCode::MethodNotFound, None);
                if let Some(d) = session.protocol_error() {
                    return Some(d);
                }
                continue;
            }
        };
        if let Some(d) = handle_command::<E>(session, cmd, link).await {
            return Some(d);
        }
    }
    None
}

async fn handle_command<E: Encoding>(
    session: &Arc<Session>,
    cmd: Command,
    link: &Link,
) -> Option<Disconnect> {
    let id = cmd.id;
    let executed = match cmd.request {
        // Boxed: a connect's state (token checks, the connect proxy) is the largest of
        // all, and would otherwise be every other command's size too.
        Request::Connect(req) => Box::pin(connect::<E>(session, id, req, link)).await,
        request => command::execute(session, request).await,
    };
    match executed {
        Ok(Executed::Reply(body)) => {
            reply::<E>(session, id, &body);
            None
        }
        Ok(Executed::Subscribed(s)) => {
            let frame = E::reply(id, &ReplyBody::Subscribe(s.result));
            s.activation.complete(Some(Outgoing::frame(frame)));
            None
        }
        Ok(Executed::Nothing) => None,
        Err(e) => fail::<E>(session, id, e),
    }
}

async fn connect<E: Encoding>(
    session: &Arc<Session>,
    id: u32,
    req: ConnectRequest,
    link: &Link,
) -> Result<Executed, SessionError> {
    let mut c = command::connect(session, Ok(req)).await?;
    if let Some(emulation) = &link.emulation {
        c.result.session = emulation.to_string();
    }
    let frame = E::reply(id, &ReplyBody::Connect(c.result));
    c.activation.complete(Some(Outgoing::frame(frame)));
    Ok(Executed::Nothing)
}

fn fail<E: Encoding>(session: &Session, id: u32, e: SessionError) -> Option<Disconnect> {
    match e {
        SessionError::Reply(code) => {
            reply_error::<E>(session, id, code, None);
            None
        }
        SessionError::Rejected(e) => {
            reply::<E>(session, id, &ReplyBody::Error(*e));
            None
        }
        SessionError::Disconnect(d) => Some(d),
    }
}
