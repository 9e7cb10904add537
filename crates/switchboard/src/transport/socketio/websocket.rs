//! Socket.IO over WebSocket: a connection opened directly on WebSocket, or one that
//! upgrades from long-polling (`2probe`, `3probe`, then `5`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::future::Either;
use futures_util::{FutureExt, StreamExt};
use switchboard_protocol::socketio::PROBE_PONG;

use super::{driver, Conn, EngineError, SocketIo};
use super::{POLLING, UPGRADING, WEBSOCKET};
use crate::event::{Frame, Outgoing};
use crate::front_door::Peer;
use crate::metrics::connections::Transport;
use crate::transport::websocket::{
    self, Deflate, FrameReader, Message, WebSocket, WsSink, WsUpgrade,
};

/// Upgrades to WebSocket: a new connection (`conn` is `None`), or the upgrade of a
/// polling one. `token` is the handshake's token (see `handshake_token`), for a new
/// connection.
pub(super) fn upgrade(
    sio: &SocketIo,
    ws: WsUpgrade,
    conn: Option<Arc<Conn>>,
    peer: &Peer,
    headers: &HeaderMap,
    token: Option<Box<str>>,
) -> Result<Response, EngineError> {
    let ws = ws.configure(&sio.node.config);
    // Compressed per connection: Socket.IO's recovery keeps the plain frames it wrote,
    // so its sessions keep the plain codec.
    let deflate = ws.deflate();
    let tracker = sio.node.tracker.clone();
    let sio = sio.clone();
    match conn {
        Some(conn) => {
            if conn.transport() != POLLING {
                return Err(EngineError::BadRequest);
            }
            Ok(ws.on_upgrade(move |socket| {
                tracker.track_future(upgrade_polling(conn, socket, deflate))
            }))
        }
        None => {
            if let Some(r) = sio.refusal(peer) {
                return Ok(r);
            }
            let conn = Conn::new(&sio, WEBSOCKET, headers, token);
            Ok(ws.on_upgrade(move |socket| tracker.track_future(serve_new(conn, socket, deflate))))
        }
    }
}

/// Starts a connection opened on a WebSocket: its handshake is the first frame its
/// writer sends; its driver reads the socket. Not an `async fn`: the socket would stay
/// in the connection's task beside its two halves.
fn serve_new(
    conn: Arc<Conn>,
    socket: WebSocket,
    deflate: Option<Deflate>,
) -> impl Future<Output = ()> + Send {
    let (half, stream) = websocket::split(socket);
    conn.session.enqueue(Outgoing::frame(conn.handshake(&[])));
    crate::transport::opened(&conn.session, Transport::SocketIoWebSocket);
    // One Engine.IO packet per WebSocket message: the protocol has no separator. Never
    // in the map of polling connections: nothing to forget at the end.
    driver::serve(conn, WsSink::new(half, None, deflate), stream).map(drop)
}

/// Waits for the next text message, at most a pong timeout.
async fn next_text(conn: &Conn, stream: &mut FrameReader) -> Option<String> {
    let wait = conn.session.node().config.client.pong_timeout;
    match tokio::time::timeout(wait, stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(t.to_string()),
        _ => None,
    }
}

/// Moves a polling connection to the WebSocket once the client completed the probe,
/// then reads it. The probe and the reading are chained stages: the reading, which
/// lasts, does not keep room for the socket the probe started with.
fn upgrade_polling(
    conn: Arc<Conn>,
    socket: WebSocket,
    deflate: Option<Deflate>,
) -> impl Future<Output = ()> + Send {
    probe(conn, socket, deflate).then(|upgraded| match upgraded {
        Some((conn, stream)) => Either::Left(read_loop(conn, stream)),
        None => Either::Right(std::future::ready(())),
    })
}

/// The upgrade's probe (`2probe`, `3probe`, then `5`): the connection and the
/// WebSocket's reading half once the writer moved over to it.
async fn probe(
    conn: Arc<Conn>,
    socket: WebSocket,
    deflate: Option<Deflate>,
) -> Option<(Arc<Conn>, FrameReader)> {
    let (half, mut stream) = websocket::split(socket);
    let mut sink = WsSink::new(half, None, deflate);
    if next_text(&conn, &mut stream).await.as_deref() != Some("2probe") {
        return None;
    }
    if sink.send(Frame::from_static(PROBE_PONG)).await.is_err() {
        return None;
    }
    if conn
        .transport
        .compare_exchange(POLLING, UPGRADING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return None;
    }
    // The client waits for its pending poll to return before it sends `5`.
    if let Some(polling) = &conn.polling {
        polling.release_poll.notify_one();
    }
    if next_text(&conn, &mut stream).await.as_deref() != Some("5") {
        // The client stays on polling.
        conn.transport.store(POLLING, Ordering::Release);
        return None;
    }
    conn.transport.store(WEBSOCKET, Ordering::Release);
    let metrics = &conn.session.node().metrics;
    metrics
        .connections
        .moved(Transport::SocketIoPolling, Transport::SocketIoWebSocket);
    // The connection's writer moves over: one Engine.IO packet per WebSocket message.
    conn.upgraded(sink).then_some((conn, stream))
}

/// Reads an upgraded connection's WebSocket; its driver keeps running its timers.
async fn read_loop(conn: Arc<Conn>, mut stream: FrameReader) {
    let session = &conn.session;
    // The driver is the one waiter on the session's wake-ups: this reader takes a token.
    let stop = session.stop_token();
    loop {
        // Handled after the `select!`, not in its arm: see the Centrifugo reader.
        let msg = tokio::select! {
            biased;
            // Cancel-safe: holds no state.
            () = stop.cancelled() => return,
            // Cancel-safe: `next()` holds no state of its own.
            msg = stream.next() => msg,
        };
        if let Some(d) = driver::received(&conn, msg).await {
            session.close(d);
            return;
        }
    }
}
