//! HTTP long-polling, the transport `socket.io-client` starts with: the handshake, the
//! long-poll (`GET`) that carries the server's packets, the `POST` that carries the
//! client's.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde::Deserialize;
use switchboard_protocol::socketio::{split_payload, CLOSE, NOOP};
use switchboard_protocol::Disconnect;
use tokio::sync::oneshot;

use super::driver::{self, Posts};
use super::sink::EngineSink;
use super::{packets, with_cors, Conn, EngineError, SocketIo};
use super::{POLLING, UPGRADING, WEBSOCKET};
use crate::front_door::Peer;
use crate::metrics::connections::Transport;
use crate::transport::upgrade::{UpgradeRejection, WsUpgrade};
use crate::transport::{read_body, BodyError};

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
        .insert(conn.sid, conn.clone());
    let open = conn.handshake(&["websocket"]);
    let sink = EngineSink::polling(conn.clone());
    // Counted before the handshake is answered, so the client sees itself counted.
    crate::transport::opened(&conn.session, Transport::SocketIoPolling);
    let tracker = sio.node.tracker.clone();
    let sio = sio.clone();
    // No reader: the client's packets come in `POST`s.
    let connection = driver::serve(conn, sink, Posts).map(move |conn| sio.remove(conn.sid));
    tracker.spawn(connection);
    Ok(text(open))
}

/// Clears the pending-poll flag however the request ends (the client may go away).
struct PollGuard<'a>(&'a AtomicBool);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A long-poll: waits for packets, then answers with all that are queued.
async fn poll(conn: &Conn) -> Result<Response, EngineError> {
    // Only a connection that started on long-polling is found by its sid.
    let Some(polling) = &conn.polling else {
        return Err(EngineError::BadRequest);
    };
    match conn.transport() {
        POLLING => {}
        // A poll the client sent just before it saw `3probe`: it waits for this one to
        // end before it completes the upgrade.
        UPGRADING => return Ok(text(NOOP.to_owned())),
        _ => return Err(EngineError::BadRequest),
    }
    let session = &conn.session;
    if polling.pending_poll.swap(true, Ordering::AcqRel) {
        // Engine.IO closes a session that polls twice at once.
        session.close(Disconnect::BAD_REQUEST);
        return Err(EngineError::BadRequest);
    }
    let _guard = PollGuard(&polling.pending_poll);
    let (reply, mut body) = oneshot::channel();
    polling.polls.offer(reply);
    tokio::select! {
        biased;
        // Cancel-safe: the receiver is polled by reference.
        r = &mut body => {
            // No reply: the writer ended, and the connection with it.
            return Ok(text(r.unwrap_or_else(|_| CLOSE.to_owned())));
        }
        // Cancel-safe: a notification that arrives while nobody waits is kept.
        () = polling.release_poll.notified() => {}
    }
    // Released while the client upgrades; packets the writer handed over meanwhile
    // still go out.
    body.close();
    Ok(text(body.try_recv().unwrap_or_else(|_| NOOP.to_owned())))
}

/// `POST /socket.io/`: the client's packets.
pub(super) async fn post(
    State(sio): State<SocketIo>,
    Query(q): Query<EngineQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match receive(&sio, &q, &headers, body).await {
        Ok(()) => text("ok".to_owned()),
        Err(e) => e.into_response(),
    };
    with_cors(&sio.node.config, &headers, response)
}

async fn receive(
    sio: &SocketIo,
    q: &EngineQuery,
    headers: &HeaderMap,
    body: Body,
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
    let body = match read_body(body, sio.node.config.limits.max_message_size).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            session.close(Disconnect::MESSAGE_TOO_LARGE);
            return Err(EngineError::BadRequest);
        }
        Err(BodyError::Unread) => return Err(EngineError::BadRequest),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
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
