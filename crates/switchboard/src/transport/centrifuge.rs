//! The Centrifugo client protocol v2 (JSON) over WebSocket at `/connection/websocket`.
//!
//! One task per connection runs a reader (commands, timers) and a writer (drains the
//! outbox, flushes once per batch) side by side.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::command::{decode_frame, Command, DecodeError, Request};
use switchboard_protocol::reply::{
    encode_push, encode_reply, Empty, ErrorReply, PushBody, ReplyBody, RpcResult,
};
use switchboard_protocol::{Disconnect, ErrorCode, SharedJson, PING};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use crate::auth::now_secs;
use crate::event::{ChannelEvent, Codec, Control, EventKind, Outgoing, Protocol, TextFrame};
use crate::node::Node;
use crate::session::{Session, SessionError};

/// Read buffer per connection. Clients send small commands, and the buffer is held for
/// the connection's whole life, so it is small; a larger frame is read in several steps.
const READ_BUFFER_SIZE: usize = 1024;
/// Bytes of frames gathered before a write: one syscall carries many small pushes.
const WRITE_BUFFER_SIZE: usize = 4096;
/// Batch capacity a writer keeps between bursts.
const KEEP_BATCH: usize = 32;
/// Most outbox items written before one flush.
const BATCH: usize = 256;

/// Upgrades `GET /connection/websocket`.
pub async fn handler(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !super::origin_allowed(&node.config, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let max = node.config.limits.max_message_size;
    ws.read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(WRITE_BUFFER_SIZE)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tracker = node.tracker.clone();
            tracker.track_future(serve(node, socket))
        })
}

async fn serve(node: Arc<Node>, socket: WebSocket) {
    node.metrics.connections.inc();
    let session = Session::new(node.clone(), CODEC);
    let (sink, stream) = socket.split();
    // Presence and subscriptions are released as soon as the session is closed, not
    // after the close frame got through to a client that may have stopped reading.
    let cleanup = async {
        session.closed().cancelled().await;
        Box::pin(session.cleanup()).await;
    };
    // The writer is a task of its own, so a delivery wakes only the writer, not the
    // reader's timers and cancellation futures as well.
    let writer = tokio::spawn(write_loop(sink, session.clone()));
    tokio::join!(read_loop(stream, &session), cleanup);
    let _ = writer.await;
    node.metrics.connections.dec();
    let reason = session.disconnect_reason();
    tracing::debug!(
        client = %session.id,
        user = %session.user(),
        code = reason.code,
        reason = reason.reason,
        "connection closed"
    );
}

/// How this transport encodes channel events.
const CODEC: Codec = Codec {
    protocol: Protocol::CentrifugeJson,
    encode_event,
};

fn encode_event(ev: &ChannelEvent) -> String {
    let body = match &ev.kind {
        EventKind::Publication(p) => PushBody::Pub(p),
        EventKind::Join(info) => PushBody::Join { info },
        EventKind::Leave(info) => PushBody::Leave { info },
    };
    encode_push(&ev.channel, &body)
}

fn encode(item: Outgoing) -> TextFrame {
    match item {
        Outgoing::Event { frame, .. } => frame,
        Outgoing::Frame(f) => f,
        Outgoing::Control(c) => TextFrame::from(match *c {
            Control::Subscribed { channel, result } => {
                encode_push(&channel, &PushBody::Subscribe(&result))
            }
            Control::Refresh { expires, ttl } => {
                encode_push("", &PushBody::Refresh { expires, ttl })
            }
            Control::Unsubscribed {
                channel,
                code,
                reason,
            } => encode_push(&channel, &PushBody::Unsubscribe { code, reason }),
        }),
    }
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, session: Arc<Session>) {
    let session = &*session;
    let mut batch = Vec::new();
    // Registered once: a fresh `cancelled()` per batch would lock the token's waiter list
    // on every wake-up. Polled last: while there is work, a cheap flag check suffices.
    let cancelled = session.closed().cancelled();
    tokio::pin!(cancelled);
    loop {
        if session.closed().is_cancelled() {
            break;
        }
        tokio::select! {
            biased;
            // Cancel-safe: `recv_many` loses nothing when dropped.
            _ = session.outbox().recv_many(&mut batch, BATCH) => {}
            // Cancel-safe: polling by reference keeps the registration.
            () = &mut cancelled => break,
        }
        observe_latency(session, &batch);
        let write = async {
            for item in batch.drain(..) {
                sink.feed(Message::Text(encode(item))).await?;
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            r = write => if r.is_err() {
                session.close(Disconnect::WRITE_ERROR);
                break;
            },
            // A client that stopped reading blocks the write; closing must not wait for it.
            () = &mut cancelled => break,
        }
        // Give a burst's memory back: idle connections are the common case.
        if batch.capacity() > KEEP_BATCH {
            batch = Vec::new();
        }
    }
    let reason = session.disconnect_reason();
    // What was queued before the close (an error reply, say) still goes out, unless the
    // client is closed for being slow: then it would not read it anyway.
    let flush_rest = async {
        if reason != Disconnect::SLOW && reason != Disconnect::WRITE_ERROR {
            batch.clear();
            while let Some(item) = session.outbox().try_recv() {
                if sink.feed(Message::Text(encode(item))).await.is_err() {
                    return;
                }
            }
        }
        let frame = CloseFrame {
            code: reason.code,
            reason: reason.reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    };
    // Boxed: only closing connections pay for this state.
    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(2), flush_rest)).await;
}

struct Timers {
    connect_deadline: Instant,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
}

fn unix_to_instant(unix: u64) -> Instant {
    Instant::now() + Duration::from_secs(unix.saturating_sub(now_secs()))
}

async fn read_loop(mut stream: SplitStream<WebSocket>, session: &Arc<Session>) {
    let client = &session.node().config.client;
    let far = Duration::from_secs(86_400 * 365);
    let mut timers = Timers {
        connect_deadline: Instant::now() + client.connect_timeout,
        next_ping: None,
        pong_deadline: None,
    };
    loop {
        let connected = session.is_connected();
        let mut deadline = if connected {
            Instant::now() + far
        } else {
            timers.connect_deadline
        };
        for t in [timers.next_ping, timers.pong_deadline]
            .into_iter()
            .flatten()
        {
            deadline = deadline.min(t);
        }
        let expiry = [session.expires_at(), session.next_sub_expiry()];
        for exp in expiry.into_iter().flatten() {
            deadline = deadline.min(unix_to_instant(exp) + client.expired_close_delay);
        }
        tokio::select! {
            biased;
            // Cancel-safe: holds no state.
            () = session.closed().cancelled() => return,
            // Cancel-safe (see `timers_changed`): loop to recompute the deadline.
            () = session.timers_changed() => {}
            // Cancel-safe: a timer.
            () = sleep_until(deadline) => {
                if let Some(d) = check_timers(session, &mut timers, connected) {
                    session.close(d);
                    return;
                }
            }
            // Cancel-safe: `next()` holds no state of its own.
            msg = stream.next() => {
                let Some(msg) = msg else {
                    session.close(Disconnect::CONNECTION_CLOSED);
                    return;
                };
                match msg {
                    Ok(Message::Text(text)) => {
                        timers.pong_deadline = None;
                        // Boxed: command handling is deep and rare next to idling, so it must not
                        // inflate every idle connection's task.
                        // Log lines about commands carry the client id and user. The span
                        // lives only while a frame is handled: a span per idle connection
                        // would cost memory, and entering it on every writer wake-up time.
                        let span = tracing::info_span!("connection", client = %session.id, user = %session.user());
                        let handled = handle_frame(session, text.as_str()).instrument(span);
                        if let Some(d) = Box::pin(handled).await {
                            session.close(d);
                            return;
                        }
                        if timers.next_ping.is_none() && session.is_connected() {
                            timers.next_ping = Some(Instant::now() + client.ping_interval);
                        }
                    }
                    Ok(Message::Binary(_)) => {
                        session.close(Disconnect::BAD_REQUEST);
                        return;
                    }
                    Ok(Message::Close(_)) => {
                        session.close(Disconnect::CONNECTION_CLOSED);
                        return;
                    }
                    Ok(Message::Ping(_) | Message::Pong(_)) => {}
                    Err(e) => {
                        session.close(read_error(e));
                        return;
                    }
                }
            }
        }
    }
}

fn read_error(e: axum::Error) -> Disconnect {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Disconnect::MESSAGE_TOO_LARGE,
        Some(tungstenite::Error::Utf8(_) | tungstenite::Error::Protocol(_)) => {
            Disconnect::BAD_REQUEST
        }
        _ => Disconnect::CONNECTION_CLOSED,
    }
}

fn check_timers(session: &Session, timers: &mut Timers, connected: bool) -> Option<Disconnect> {
    let now = Instant::now();
    if !connected && now >= timers.connect_deadline {
        return Some(Disconnect::STALE);
    }
    if timers.pong_deadline.is_some_and(|d| now >= d) {
        return Some(Disconnect::NO_PONG);
    }
    if timers.next_ping.is_some_and(|p| now >= p) {
        let client = &session.node().config.client;
        session.enqueue(Outgoing::Frame(TextFrame::from_static(PING)));
        timers.pong_deadline = Some(now + client.pong_timeout);
        timers.next_ping = Some(now + client.ping_interval);
    }
    let unix = now_secs();
    let grace = session.node().config.client.expired_close_delay.as_secs();
    if session.expires_at().is_some_and(|e| e + grace <= unix) {
        return Some(Disconnect::EXPIRED);
    }
    if session.next_sub_expiry().is_some_and(|e| e + grace <= unix) {
        return Some(Disconnect::SUB_EXPIRED);
    }
    None
}

fn reply(session: &Session, id: u32, body: &ReplyBody) {
    if id != 0 {
        session.enqueue(Outgoing::Frame(TextFrame::from(encode_reply(id, body))));
    }
}

fn reply_error(session: &Session, id: u32, code: ErrorCode, message: Option<String>) {
    let mut e = ErrorReply::from(code);
    if let Some(m) = message {
        e.message = m;
    }
    session.node().metrics.command_errors.inc();
    reply(session, id, &ReplyBody::Error(e));
}

/// Handles one frame of newline-delimited commands. Returns a disconnect to apply.
async fn handle_frame(session: &Arc<Session>, text: &str) -> Option<Disconnect> {
    for cmd in decode_frame(text) {
        let cmd = match cmd {
            Ok(cmd) => cmd,
            Err(DecodeError::Malformed { id, detail }) => {
                if !session.is_connected() {
                    return Some(Disconnect::BAD_REQUEST);
                }
                reply_error(
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
                reply_error(session, id, ErrorCode::MethodNotFound, None);
                if let Some(d) = session.protocol_error() {
                    return Some(d);
                }
                continue;
            }
        };
        if let Some(d) = handle_command(session, cmd).await {
            return Some(d);
        }
    }
    None
}

async fn handle_command(session: &Arc<Session>, cmd: Command) -> Option<Disconnect> {
    let id = cmd.id;
    if matches!(cmd.request, Request::Pong) {
        return None;
    }
    session.node().metrics.commands.inc();
    let kind = command_kind(&cmd.request);
    let connected = session.is_connected();
    if !connected && !matches!(cmd.request, Request::Connect(_)) {
        session.node().metrics.command_kinds.record(kind, false);
        return Some(Disconnect::BAD_REQUEST);
    }
    if let Err(e) = session.admit_command() {
        session.node().metrics.command_kinds.record(kind, false);
        return fail(session, id, e);
    }
    let result: Result<(), SessionError> = match cmd.request {
        Request::Pong => Ok(()),
        Request::Connect(req) => session.connect(req).await.map(|c| {
            tracing::debug!(user = %session.user(), subs = c.result.subs.len(), "connected");
            let frame = TextFrame::from(encode_reply(id, &ReplyBody::Connect(c.result)));
            c.activation.complete(Some(Outgoing::Frame(frame)));
        }),
        Request::Subscribe(req) => session.subscribe(req).await.map(|s| {
            let frame = TextFrame::from(encode_reply(id, &ReplyBody::Subscribe(s.result)));
            s.activation.complete(Some(Outgoing::Frame(frame)));
        }),
        Request::Unsubscribe(req) => session
            .unsubscribe(&req.channel)
            .await
            .map(|()| reply(session, id, &ReplyBody::Unsubscribe(Empty {}))),
        Request::Publish(req) => session
            .publish(&req.channel, req.data.map(SharedJson::from))
            .await
            .map(|()| reply(session, id, &ReplyBody::Publish(Empty {}))),
        Request::Presence(req) => session
            .presence(&req.channel)
            .await
            .map(|r| reply(session, id, &ReplyBody::Presence(r))),
        Request::PresenceStats(req) => session
            .presence_stats(&req.channel)
            .await
            .map(|r| reply(session, id, &ReplyBody::PresenceStats(r))),
        Request::History(req) => session
            .history(req)
            .await
            .map(|r| reply(session, id, &ReplyBody::History(r))),
        Request::Ping => {
            reply(session, id, &ReplyBody::Ping(Empty {}));
            Ok(())
        }
        Request::Send(_) => Ok(()),
        Request::Rpc(req) => session
            .rpc(&req.method, req.data.map(SharedJson::from))
            .await
            .map(|data| reply(session, id, &ReplyBody::Rpc(RpcResult { data }))),
        Request::Refresh(req) => session
            .refresh(&req.token)
            .await
            .map(|r| reply(session, id, &ReplyBody::Refresh(r))),
        Request::SubRefresh(req) => session
            .sub_refresh(&req.channel, &req.token)
            .await
            .map(|r| reply(session, id, &ReplyBody::SubRefresh(r))),
    };
    session
        .node()
        .metrics
        .command_kinds
        .record(kind, result.is_ok());
    match result {
        Ok(()) => None,
        Err(e) => fail(session, id, e),
    }
}

/// The command's name in metrics (see [`crate::metrics::COMMAND_KINDS`]).
fn command_kind(request: &Request) -> &'static str {
    match request {
        Request::Connect(_) => "connect",
        Request::Subscribe(_) => "subscribe",
        Request::Unsubscribe(_) => "unsubscribe",
        Request::Publish(_) => "publish",
        Request::Presence(_) => "presence",
        Request::PresenceStats(_) => "presence_stats",
        Request::History(_) => "history",
        Request::Ping | Request::Pong => "ping",
        Request::Send(_) => "send",
        Request::Rpc(_) => "rpc",
        Request::Refresh(_) => "refresh",
        Request::SubRefresh(_) => "sub_refresh",
    }
}

/// Records publish-to-write latency once per batch, for its oldest channel event: one
/// sample per write instead of three shared atomic updates per delivery.
fn observe_latency(session: &Session, batch: &[Outgoing]) {
    let oldest = batch.iter().find_map(|item| match item {
        Outgoing::Event { published, .. } => Some(*published),
        _ => None,
    });
    if let Some(published) = oldest {
        let waited = std::time::Instant::now().saturating_duration_since(published);
        session.node().metrics.delivery_latency.observe(waited);
    }
}

fn fail(session: &Session, id: u32, e: SessionError) -> Option<Disconnect> {
    match e {
        SessionError::Reply(code) => {
            reply_error(session, id, code, None);
            None
        }
        SessionError::Disconnect(d) => Some(d),
    }
}
