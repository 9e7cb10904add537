//! How an Engine.IO connection runs until it ends: its writer in a task of its own, and
//! one driver for its timers (pings, the connect deadline, token expiry) and for what
//! its client sends. A connection opened on WebSocket is read by its driver itself: one
//! loop, not a reader beside a timer loop, each waiting on the session's close. The
//! packets of a long-polling connection come in `POST`s (after an upgrade, from the
//! upgrade's reader): its driver only hears of the pongs among them.

use std::future::Future;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use switchboard_protocol::socketio::PING;
use switchboard_protocol::Disconnect;
use tokio::time::sleep_until;

use super::{packets, Conn, WIRE};
use crate::event::Frame;
use crate::transport::heartbeat::Heartbeat;
use crate::transport::websocket::{FrameReader, Message};
use crate::transport::writer::{self, FrameSink};

/// What a driver heard from its client.
pub(super) enum Heard {
    /// A pong that came in elsewhere (a `POST`, or an upgraded WebSocket's reader).
    Pong,
    /// A WebSocket message, or the WebSocket's end (`None`).
    Message(Option<Result<Message, Disconnect>>),
}

/// Where a driver hears from its client.
pub(super) trait Inbound: Send {
    /// The next thing heard. Cancel-safe: it holds no state of its own.
    fn next(&mut self, conn: &Conn) -> impl Future<Output = Heard> + Send;
}

/// A connection that started on long-polling: its packets come in `POST`s.
pub(super) struct Posts;

impl Inbound for Posts {
    async fn next(&mut self, conn: &Conn) -> Heard {
        match &conn.polling {
            // A kept notification.
            Some(polling) => polling.pong.notified().await,
            None => std::future::pending().await,
        }
        Heard::Pong
    }
}

impl Inbound for FrameReader {
    async fn next(&mut self, _: &Conn) -> Heard {
        Heard::Message(StreamExt::next(self).await)
    }
}

/// Serves a connection until it ends: its writer into `sink` in a task of its own,
/// and the driver on `inbound`; then counts it closed. Returns the connection, for the
/// caller to forget. The caller counted it opened.
///
/// Not an `async fn`, and its stages chained rather than one `async` block: either
/// would keep the sink and the reader twice in every connection's task, as passed and
/// as moved on (rust-lang/rust#62958).
pub(super) fn serve(
    conn: Arc<Conn>,
    sink: impl FrameSink + 'static,
    inbound: impl Inbound,
) -> impl Future<Output = Arc<Conn>> + Send {
    let encoder = conn.clone();
    let writer = tokio::spawn(writer::write_loop_with(
        sink,
        conn.session.clone(),
        WIRE,
        move |_, item| encoder.encode(item),
    ));
    drive(conn.clone(), inbound).then(move |()| async move {
        // The writer ends after the close went out (to a long-poll, which keeps the
        // connection findable until then), bounded by `network.close_linger`.
        let _ = writer.await;
        crate::transport::closed(&conn.session, conn.metrics_transport());
        conn
    })
}

/// Runs a connection's timers and handles what `inbound` hears until its session
/// closes, then releases the session.
async fn drive(conn: Arc<Conn>, mut inbound: impl Inbound) {
    let session = &conn.session;
    let mut heartbeat = Heartbeat::new(session, || Frame::from_static(PING));
    // Engine.IO pings from the start, before the client joins a namespace.
    heartbeat.start_pings(session);
    // Waited on across the loop: registered with the node's shutdown once.
    let shutdown = session.node().shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        // Handled after the `select!`, not in its arm: see the Centrifugo reader.
        let heard = tokio::select! {
            biased;
            // Cancel-safe: polled by reference.
            () = &mut shutdown => break,
            // Cancel-safe (see `woken`): the session closed, or a deadline moved.
            closing = session.woken() => {
                if closing {
                    break;
                }
                continue;
            }
            // Cancel-safe: a timer.
            () = sleep_until(heartbeat.deadline(session)) => {
                if let Some(d) = heartbeat.fire(session) {
                    session.close(d);
                    break;
                }
                continue;
            }
            // Cancel-safe: see `Inbound::next`.
            heard = inbound.next(&conn) => heard,
        };
        let disconnect = match heard {
            Heard::Pong => {
                heartbeat.pong();
                None
            }
            Heard::Message(msg) => {
                let disconnect = received(&conn, msg).await;
                if conn.take_pong() {
                    heartbeat.pong();
                }
                disconnect
            }
        };
        if let Some(d) = disconnect {
            session.close(d);
            break;
        }
    }
    conn.not_pending();
    // Boxed: only a closing connection pays for this state.
    Box::pin(conn.keep_state()).await;
    Box::pin(session.cleanup()).await;
}

/// Handles a WebSocket message (`None`: the WebSocket ended). Returns the disconnect
/// to apply.
pub(super) async fn received(
    conn: &Conn,
    msg: Option<Result<Message, Disconnect>>,
) -> Option<Disconnect> {
    match msg {
        None | Some(Ok(Message::Close(_))) => Some(Disconnect::CONNECTION_CLOSED),
        Some(Ok(Message::Text(text))) => packets::handle(conn, text.as_str()).await,
        Some(Ok(Message::Binary(_))) => Some(Disconnect::BAD_REQUEST),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
            crate::transport::command::meter_control(&conn.session)
        }
        Some(Err(d)) => Some(d),
    }
}
