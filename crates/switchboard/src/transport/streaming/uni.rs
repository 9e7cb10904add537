//! The unidirectional transports, as Centrifugo serves them: the client connects once
//! and only listens. Its channels are the server-side ones (the token's `subs`,
//! `auto_subscribe`, a connect proxy's `subs`).
//!
//! - `GET /connection/uni_websocket`: the connect request (a JSON `ConnectRequest`,
//!   `{"token": "..."}`) as the first text message, or in `cf_connect`; pushes as text
//!   messages; later messages are ignored (and metered).
//! - `GET /connection/uni_sse?cf_connect=<ConnectRequest JSON>` (or `POST` with it as
//!   the body): pushes as server-sent events.
//! - `POST /connection/uni_http_stream` with the `ConnectRequest` as the body: pushes as
//!   newline-delimited JSON.
//!
//! Pushes have no `{"push": ...}` envelope: the first is `{"connect": {...}}`, then
//! `{"channel": "...", "pub": {...}}` and so on. The server pings with `{}` and expects
//! no answer. A refused connect closes with a code: an expired token 3005, too many
//! requests 3013, permission denied 3507, an invalid token 3500, other errors 3004.

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use switchboard_protocol::command::{Command, ConnectRequest, DecodeError};
use switchboard_protocol::reply::{encode_bare_push, PushBody, ReplyBody};
use switchboard_protocol::{Disconnect, ErrorCode};
use tokio::time::sleep_until;

use super::body::{self, Framing};
use super::{opening, streaming_response, ConnectQuery, Refusal, Streams};
use crate::event::{Codec, Frame, Outgoing};
use crate::front_door::Peer;
use crate::metrics::connections::Transport;
use crate::session::{Session, SessionError};
use crate::transport::centrifuge::json::Json;
use crate::transport::centrifuge::{
    self, disconnect_push, event_push, ws_inbound, Encoding, Inbound,
};
use crate::transport::command;
use crate::transport::heartbeat::Heartbeat;
use crate::transport::read_body;
use crate::transport::websocket::{self, WsSink, WsUpgrade};
use crate::transport::writer::{self, FrameSink, Wire};
use crate::transport::{preflight as cors_preflight, with_cors};

/// The JSON encoding of unidirectional transports: bare pushes.
pub(crate) struct Uni;

static CODEC: LazyLock<Codec> =
    LazyLock::new(|| Codec::register("centrifuge-uni", |ev, _| event_push::<Uni>(ev)));

/// JSON's, but for the pushes: those go without the envelope.
impl Encoding for Uni {
    const JOIN: &'static str = Json::JOIN;

    fn codec() -> &'static Codec {
        &CODEC
    }

    fn ping() -> Frame {
        Json::ping()
    }

    /// A unidirectional client sends no commands after its connect.
    fn decode(message: Frame) -> Result<Vec<Result<Command, DecodeError>>, Disconnect> {
        Json::decode(message)
    }

    /// Not sent: a unidirectional client gets no replies (its connect result is a push).
    fn reply(id: u32, body: &ReplyBody) -> Frame {
        Json::reply(id, body)
    }

    fn push(channel: &str, body: &PushBody<'_>) -> Frame {
        Frame::from(encode_bare_push(channel, body))
    }
}

/// A connect request in JSON; `null` stands for an empty one, as in Centrifugo.
fn connect_request(json: &[u8]) -> Result<ConnectRequest, Refusal> {
    serde_json::from_slice::<Option<ConnectRequest>>(json)
        .map(Option::unwrap_or_default)
        .map_err(|_| Refusal::bad_request("invalid connect request"))
}

/// `GET /connection/uni_sse?cf_connect=...` or `POST /connection/uni_sse`. Without
/// `cf_connect` a `GET` connects with an empty request (the connect proxy decides,
/// from the cookies it is passed).
pub(super) async fn sse(
    State(streams): State<Streams>,
    method: Method,
    headers: HeaderMap,
    peer: Peer,
    Query(query): Query<ConnectQuery>,
    body: Body,
) -> Response {
    let response = async {
        streams.admit(&headers, &peer)?;
        let req = match opening(&streams, &method, query, body).await? {
            Some(data) => connect_request(&data)?,
            None => ConnectRequest::default(),
        };
        Ok::<_, Refusal>(open(
            &streams,
            &headers,
            req,
            Framing::Events,
            Transport::UniSse,
        ))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    with_cors(&streams.node.config, &headers, response)
}

/// `POST /connection/uni_http_stream` with the connect request as the body.
pub(super) async fn http_stream(
    State(streams): State<Streams>,
    headers: HeaderMap,
    peer: Peer,
    body: Body,
) -> Response {
    let response = async {
        streams.admit(&headers, &peer)?;
        let limit = streams.node.config.limits.max_message_size;
        let data = read_body(body, limit).await?;
        let req = connect_request(&data)?;
        Ok::<_, Refusal>(open(
            &streams,
            &headers,
            req,
            Framing::Lines,
            Transport::UniHttpStream,
        ))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    with_cors(&streams.node.config, &headers, response)
}

/// The CORS preflight of `uni_sse` and `uni_http_stream`.
pub(super) async fn preflight(State(streams): State<Streams>, headers: HeaderMap) -> Response {
    cors_preflight(&streams.node.config, &headers, "GET, POST, OPTIONS")
}

fn open(
    streams: &Streams,
    headers: &HeaderMap,
    req: ConnectRequest,
    framing: Framing,
    transport: Transport,
) -> Response {
    let node = &streams.node;
    let session = Session::new(node.clone(), Uni::codec());
    session.set_origin(node.proxies.origin(transport.name(), headers));
    let preamble = (framing == Framing::Events).then_some(&b"\r\n"[..]);
    let (sink, body) = body::stream(session.clone(), framing, preamble);
    // Nothing to read: the client ends the connection by going away, which drops the
    // body and closes the session.
    let inbound = futures_util::stream::pending();
    node.tracker
        .spawn(run(session, sink, inbound, Some(req), transport));
    let content_type = match framing {
        Framing::Events => "text/event-stream; charset=utf-8",
        Framing::Lines | Framing::Delimited => "application/json",
    };
    streaming_response(content_type, body)
}

/// `GET /connection/uni_websocket`.
pub(super) async fn websocket(
    State(streams): State<Streams>,
    headers: HeaderMap,
    peer: Peer,
    Query(query): Query<ConnectQuery>,
    ws: WsUpgrade,
) -> Response {
    if let Err(refused) = streams.admit(&headers, &peer) {
        return refused.into_response();
    }
    let node = streams.node;
    let req = query
        .within(node.config.limits.max_message_size)
        .and_then(|data| data.map(|d| connect_request(&d)).transpose());
    let req = match req {
        Ok(req) => req,
        Err(bad) => return bad.into_response(),
    };
    let transport = Transport::UniWebSocket;
    let origin = node.proxies.origin(transport.name(), &headers);
    let ws = ws.configure(&node.config);
    let deflate = ws.deflate();
    ws.on_upgrade(move |socket| {
        let tracker = node.tracker.clone();
        tracker.track_future(async move {
            let session = Session::new(node, websocket::codec(Uni::codec(), deflate));
            session.set_origin(origin);
            let (sink, stream) = websocket::split(socket);
            let sink = WsSink::new(sink, None, deflate);
            run(session, sink, stream.map(ws_inbound), req, transport).await;
        })
    })
}

/// Runs a unidirectional connection: connects with `connect` (or the first message
/// read, when `None`), then pings and keeps the timers until the session closes.
async fn run(
    session: Arc<Session>,
    sink: impl FrameSink + 'static,
    mut inbound: impl Stream<Item = Inbound> + Send + Unpin,
    mut connect: Option<ConnectRequest>,
    transport: Transport,
) {
    crate::transport::opened(&session, transport);
    let writer = {
        let session = session.clone();
        let wire = Wire {
            encode: centrifuge::encode::<Uni>,
            farewell: disconnect_push::<Uni>,
            close: writer::same_close,
        };
        tokio::spawn(async move { writer::write_loop(sink, &session, wire).await })
    };
    let mut heartbeat = Heartbeat::one_way(&session, Uni::ping);
    let mut asked = false;
    // Waited on across the loop: registered with the node's shutdown once.
    let shutdown = session.node().shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        if let Some(req) = connect.take() {
            asked = true;
            if let Some(d) = Box::pin(uni_connect(&session, req)).await {
                session.close(d);
                break;
            }
            heartbeat.start_pings(&session);
        }
        let deadline = heartbeat.deadline(&session);
        tokio::select! {
            biased;
            // Cancel-safe: polled by reference.
            () = &mut shutdown => break,
            // Cancel-safe (see `woken`): the session closed, or a deadline moved.
            closing = session.woken() => {
                if closing {
                    break;
                }
            }
            // Cancel-safe: a timer.
            () = sleep_until(deadline) => {
                if let Some(d) = heartbeat.fire(&session) {
                    session.close(d);
                    break;
                }
            }
            // Cancel-safe: `next()` holds no state of its own.
            msg = inbound.next() => match msg {
                Some(Inbound::Frame(first)) if !asked => {
                    match serde_json::from_slice::<Option<ConnectRequest>>(first.as_bytes()) {
                        Ok(req) => connect = Some(req.unwrap_or_default()),
                        Err(_) => {
                            session.close(Disconnect::BAD_REQUEST);
                            break;
                        }
                    }
                }
                // A unidirectional client has nothing more to say: metered, then dropped.
                Some(Inbound::Frame(_) | Inbound::Control) => {
                    if let Some(d) = command::meter_control(&session) {
                        session.close(d);
                        break;
                    }
                }
                Some(Inbound::Closed(d)) => {
                    session.close(d);
                    break;
                }
                None => {
                    session.close(Disconnect::CONNECTION_CLOSED);
                    break;
                }
            }
        }
    }
    Box::pin(session.cleanup()).await;
    let _ = writer.await;
    crate::transport::closed(&session, transport);
}

/// Connects; the connect result goes out as a `connect` push. Returns the disconnect
/// for a refused connect: there is no reply to carry an error.
async fn uni_connect(session: &Arc<Session>, req: ConnectRequest) -> Option<Disconnect> {
    match command::connect(session, Ok(req)).await {
        Ok(c) => {
            let mut result = c.result;
            // The client can not answer pings.
            result.pong = false;
            let frame = Uni::push("", &PushBody::Connect(&result));
            c.activation.complete(Some(Outgoing::frame(frame)));
            None
        }
        Err(e) => Some(refusal(&e)),
    }
}

/// The disconnect an error reply to a unidirectional connect becomes (Centrifugo's
/// mapping).
fn refusal(e: &SessionError) -> Disconnect {
    let code = match e {
        SessionError::Disconnect(d) => return *d,
        SessionError::Reply(code) => code.code(),
        SessionError::Rejected(reply) => reply.code,
    };
    match code {
        c if c == ErrorCode::TokenExpired.code() || c == ErrorCode::Expired.code() => {
            Disconnect::EXPIRED
        }
        c if c == ErrorCode::TooManyRequests.code() => Disconnect::TOO_MANY_REQUESTS,
        c if c == ErrorCode::PermissionDenied.code() => Disconnect::PERMISSION_DENIED,
        _ => Disconnect::SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::reply::ErrorReply;

    use super::*;

    #[test]
    fn refused_connects_become_centrifugos_disconnects() {
        let reply = |c: ErrorCode| refusal(&SessionError::Reply(c));
        assert_eq!(reply(ErrorCode::TokenExpired), Disconnect::EXPIRED);
        assert_eq!(
            reply(ErrorCode::TooManyRequests),
            Disconnect::TOO_MANY_REQUESTS
        );
        assert_eq!(
            reply(ErrorCode::PermissionDenied),
            Disconnect::PERMISSION_DENIED
        );
        assert_eq!(reply(ErrorCode::Internal), Disconnect::SERVER_ERROR);
        let proxy = SessionError::Rejected(Box::new(ErrorReply::from(ErrorCode::Expired)));
        assert_eq!(refusal(&proxy), Disconnect::EXPIRED);
        let invalid = SessionError::Disconnect(Disconnect::INVALID_TOKEN);
        assert_eq!(refusal(&invalid), Disconnect::INVALID_TOKEN);
    }

    #[test]
    fn pushes_go_without_the_envelope() {
        let frame = Uni::push(
            "",
            &PushBody::Disconnect {
                code: 3005,
                reason: "connection expired",
            },
        );
        assert_eq!(
            frame.as_bytes(),
            br#"{"disconnect":{"code":3005,"reason":"connection expired"}}"#
        );
    }
}
