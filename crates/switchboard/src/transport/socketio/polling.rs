//! HTTP long-polling, the transport `socket.io-client` starts with: the handshake, the
//! long-poll (`GET`) that carries the server's packets, the `POST` that carries the
//! client's, and the driver task that runs each connection's timers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchboard_protocol::socketio::{split_payload, CLOSE, NOOP, PING, RECORD_SEPARATOR};
use switchboard_protocol::Disconnect;
use tokio::time::sleep_until;

use super::{farewell, packets, with_cors, Conn, EngineError, SocketIo};
use super::{POLLING, UPGRADING, WEBSOCKET};
use crate::event::Frame;
use crate::front_door::Peer;
use crate::transport::heartbeat::Heartbeat;
use crate::transport::upgrade::{UpgradeRejection, WsUpgrade};
use crate::transport::writer::{observe_latency, BATCH};

/// How long a closed polling connection waits for the poll that collects its close
/// packet (it also bounds how long shutdown waits for it).
const FINAL_POLL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The query every Engine.IO request carries (others, such as the cache buster `t`,
/// are ignored).
#[derive(Debug, Deserialize)]
pub(super) struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    /// A connection token for apps that pass it in the URL (`io(url, {query: {token}})`).
    token: Option<String>,
}

impl EngineQuery {
    fn check(&self, sio: &SocketIo, headers: &HeaderMap) -> Result<(), EngineError> {
        if !crate::transport::origin_allowed(&sio.node.config, headers) {
            return Err(EngineError::Forbidden);
        }
        if self.eio.as_deref() != Some("4") {
            return Err(EngineError::UnsupportedVersion);
        }
        Ok(())
    }
}

fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        )],
        body,
    )
        .into_response()
}

/// `GET /socket.io/`: a handshake, a long-poll, or a WebSocket (new or upgrading).
pub(super) async fn get(
    State(sio): State<SocketIo>,
    Query(q): Query<EngineQuery>,
    headers: HeaderMap,
    peer: Peer,
    ws: Result<WsUpgrade, UpgradeRejection>,
) -> Response {
    let response = match route_get(&sio, &q, &headers, &peer, ws).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    with_cors(&sio.node.config, &headers, response)
}

async fn route_get(
    sio: &SocketIo,
    q: &EngineQuery,
    headers: &HeaderMap,
    peer: &Peer,
    ws: Result<WsUpgrade, UpgradeRejection>,
) -> Result<Response, EngineError> {
    q.check(sio, headers)?;
    match (q.transport.as_deref(), q.sid.as_deref()) {
        (Some("polling"), None) => handshake(
            sio,
            peer,
            headers,
            super::handshake_token(headers, q.token.as_deref()),
        ),
        (Some("polling"), Some(sid)) => {
            let conn = sio.find(sid).ok_or(EngineError::UnknownSid)?;
            poll(&conn).await
        }
        (Some("websocket"), sid) => {
            let ws = ws.map_err(|_| EngineError::BadRequest)?;
            let conn = match sid {
                Some(sid) => Some(sio.find(sid).ok_or(EngineError::UnknownSid)?),
                None => None,
            };
            let token = super::handshake_token(headers, q.token.as_deref());
            super::websocket::upgrade(sio, ws, conn, peer, headers, token)
        }
        _ => Err(EngineError::UnknownTransport),
    }
}

/// The answer to a new connection while the node shuts down.
pub(super) fn refuse_when_closing(sio: &SocketIo) -> Option<Response> {
    sio.node
        .shutdown
        .is_cancelled()
        .then(|| (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response())
}

fn handshake(
    sio: &SocketIo,
    peer: &Peer,
    headers: &HeaderMap,
    token: Option<Box<str>>,
) -> Result<Response, EngineError> {
    if let Some(r) = sio.refusal(peer) {
        return Ok(r);
    }
    let conn = Conn::new(sio, POLLING, headers, token);
    sio.conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(conn.sid.clone(), conn.clone());
    let open = conn.handshake(&["websocket"]);
    let tracker = sio.node.tracker.clone();
    tracker.spawn(drive(sio.clone(), conn));
    Ok(text(open))
}

/// Clears the pending-poll flag however the request ends (the client may go away).
struct PollGuard<'a>(&'a AtomicBool);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Appends a queued frame: Socket.IO's are all text (its codec makes no binary ones).
fn push_frame(body: &mut String, frame: &Frame) {
    if let Frame::Text(packet) = frame {
        push_packet(body, packet);
    }
}

fn push_packet(body: &mut String, packet: &str) {
    if !body.is_empty() {
        body.push(RECORD_SEPARATOR);
    }
    body.push_str(packet);
}

/// A long-poll: waits for packets, then answers with all that are queued.
async fn poll(conn: &Conn) -> Result<Response, EngineError> {
    match conn.transport() {
        POLLING => {}
        // A poll the client sent just before it saw `3probe`: it waits for this one to
        // end before it completes the upgrade.
        UPGRADING => return Ok(text(NOOP.to_owned())),
        _ => return Err(EngineError::BadRequest),
    }
    let session = &conn.session;
    if conn.polling.swap(true, Ordering::AcqRel) {
        // Engine.IO closes a session that polls twice at once.
        session.close(Disconnect::BAD_REQUEST);
        return Err(EngineError::BadRequest);
    }
    let _guard = PollGuard(&conn.polling);
    let mut batch = Vec::new();
    if !session.closed().is_cancelled() {
        tokio::select! {
            biased;
            // Cancel-safe: holds no state.
            () = session.closed().cancelled() => {}
            // Cancel-safe: `recv_many` loses nothing when dropped.
            _ = session.outbox().recv_many(&mut batch, BATCH) => {}
            // Cancel-safe: a notification that arrives while nobody waits is kept.
            () = conn.release_poll.notified() => return Ok(text(NOOP.to_owned())),
        }
    }
    observe_latency(session, &batch);
    let mut body = String::new();
    for item in batch {
        push_frame(&mut body, &conn.encode(item));
    }
    if session.closed().is_cancelled() && !conn.farewell_sent.swap(true, Ordering::AcqRel) {
        let reason = session.disconnect_reason();
        if reason != Disconnect::SLOW {
            while let Some(item) = session.outbox().try_recv() {
                push_frame(&mut body, &conn.encode(item));
            }
            for frame in farewell(session, reason) {
                push_frame(&mut body, &frame);
            }
        }
        if !body.is_empty() {
            // The close packet goes in the next poll: `engine.io-client` acts on it at
            // once, before `socket.io-client` has handled the packets before it (a
            // `connect_error`, `server_disconnect`, `41`).
            return Ok(text(body));
        }
    }
    if session.closed().is_cancelled() {
        push_packet(&mut body, CLOSE);
        conn.flushed.notify_one();
    }
    Ok(text(body))
}

/// `POST /socket.io/`: the client's packets.
pub(super) async fn post(
    State(sio): State<SocketIo>,
    Query(q): Query<EngineQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = match receive(&sio, &q, &headers, &body).await {
        Ok(()) => text("ok".to_owned()),
        Err(e) => e.into_response(),
    };
    with_cors(&sio.node.config, &headers, response)
}

async fn receive(
    sio: &SocketIo,
    q: &EngineQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), EngineError> {
    q.check(sio, headers)?;
    if q.transport.as_deref() != Some("polling") {
        return Err(EngineError::BadHandshakeMethod);
    }
    let sid = q.sid.as_deref().ok_or(EngineError::BadHandshakeMethod)?;
    let conn = sio.find(sid).ok_or(EngineError::UnknownSid)?;
    if conn.transport() == WEBSOCKET {
        return Err(EngineError::BadRequest);
    }
    let session = &conn.session;
    if body.len() > sio.node.config.limits.max_message_size {
        session.close(Disconnect::MESSAGE_TOO_LARGE);
        return Err(EngineError::BadRequest);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        session.close(Disconnect::BAD_REQUEST);
        return Err(EngineError::BadRequest);
    };
    for packet in split_payload(text) {
        if let Some(d) = packets::handle(&conn, packet).await {
            session.close(d);
            break;
        }
    }
    Ok(())
}

/// `OPTIONS /socket.io/`: the CORS preflight of a cross-origin browser.
pub(super) async fn preflight(State(sio): State<SocketIo>, headers: HeaderMap) -> Response {
    crate::transport::preflight(&sio.node.config, &headers, "GET, POST, OPTIONS")
}

/// Runs a connection's timers (pings, connect deadline, token expiry) until its
/// session closes, then releases the session and forgets the connection.
pub(super) async fn drive(sio: SocketIo, conn: Arc<Conn>) {
    let session = &conn.session;
    let node = session.node().clone();
    node.metrics.connections.inc();
    let mut heartbeat = Heartbeat::new(session, PING);
    // Engine.IO pings from the start, before the client joins a namespace.
    heartbeat.start_pings(session);
    loop {
        let deadline = heartbeat.deadline(session);
        tokio::select! {
            biased;
            // Cancel-safe: holds no state.
            () = session.closed().cancelled() => break,
            // Cancel-safe (see `timers_changed`): loop to recompute the deadline.
            () = session.timers_changed() => {}
            // Cancel-safe: a kept notification.
            () = conn.pong.notified() => heartbeat.pong(),
            // Cancel-safe: a timer.
            () = sleep_until(deadline) => {
                if let Some(d) = heartbeat.fire(session) {
                    session.close(d);
                    break;
                }
            }
        }
    }
    conn.not_pending();
    conn.keep_state().await;
    Box::pin(session.cleanup()).await;
    if matches!(conn.transport(), POLLING | UPGRADING) {
        // A polling client has a poll pending nearly all the time, so the close packet
        // goes out at once; if it closed between two polls, the next one collects it.
        let _ = tokio::time::timeout(FINAL_POLL_WAIT, conn.flushed.notified()).await;
    }
    sio.remove(&conn.sid);
    node.metrics.connections.dec();
    crate::transport::log_closed(session, "socket.io");
}
