//! centrifuge-js's `http_stream` and `sse` transports: a bidirectional connection
//! emulated over a streaming response and separate requests.
//!
//! The stream opens with the client's first commands (its connect) in the request:
//! `POST /connection/http_stream` carries them in the body, JSON lines or
//! length-delimited Protobuf (`Content-Type: application/octet-stream`);
//! `GET /connection/sse` carries them in the `cf_connect` query parameter (JSON only).
//! The connect reply tells the client its `session` and `node`; later commands come by
//! `POST /emulation` with `{"session", "node", "data"}` (or its Protobuf form), and go
//! to the session's reader as if read from its socket. Replies and pushes go down the
//! stream: JSON lines, Protobuf, or `data:` events for SSE.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::body::{self, Framing};
use super::{is_protobuf, opening, session_id, streaming_response};
use super::{ConnectQuery, Refusal, Streams};
use crate::event::Frame;
use crate::front_door::Peer;
use crate::metrics::connections::Transport;
use crate::session::Session;
use crate::transport::centrifuge::json::Json;
use crate::transport::centrifuge::protobuf::Protobuf;
use crate::transport::centrifuge::{self, disconnect_push, Encoding, Inbound, Link};
use crate::transport::{preflight as cors_preflight, read_body, with_cors};

/// Command messages queued for a session's reader: `/emulation` requests arriving
/// faster than it handles them get 429 past this.
const INBOX: usize = 32;

/// `POST /connection/http_stream`.
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
        if is_protobuf(&headers) {
            let first = Frame::Binary(data);
            Ok::<_, Refusal>(open::<Protobuf>(
                &streams,
                &headers,
                first,
                Framing::Delimited,
                Transport::HttpStreamProtobuf,
            ))
        } else {
            let first = text(&data)?;
            Ok::<_, Refusal>(open::<Json>(
                &streams,
                &headers,
                first,
                Framing::Lines,
                Transport::HttpStreamJson,
            ))
        }
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    with_cors(&streams.node.config, &headers, response)
}

/// `GET /connection/sse?cf_connect=...`, or `POST` with the commands in the body.
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
        let first = opening(&streams, &method, query, body)
            .await?
            .ok_or(Refusal::bad_request("no cf_connect"))?;
        Ok::<_, Refusal>(open::<Json>(
            &streams,
            &headers,
            text(&first)?,
            Framing::Events,
            Transport::Sse,
        ))
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    with_cors(&streams.node.config, &headers, response)
}

/// JSON commands must be UTF-8 text.
fn text(data: &Bytes) -> Result<Frame, Refusal> {
    String::from_utf8(data.to_vec())
        .map(Frame::from)
        .map_err(|_| Refusal::bad_request("not UTF-8"))
}

/// Starts an emulated connection whose first commands are `first`, and answers with
/// its stream.
fn open<E: Encoding>(
    streams: &Streams,
    headers: &HeaderMap,
    first: Frame,
    framing: Framing,
    transport: Transport,
) -> Response {
    let node = &streams.node;
    let session = Session::new(node.clone(), E::codec());
    session.set_origin(node.proxies.origin(transport.name(), headers));
    let id = session_id();
    let (commands, inbox) = mpsc::channel(INBOX);
    // The channel is new and empty: this can not fail.
    let _ = commands.try_send(first);
    streams.sessions().insert(id.clone(), commands);
    // An empty line first: an SSE stream's headers and first bytes reach the browser
    // at once through intermediaries that wait for content.
    let preamble = (framing == Framing::Events).then_some(&b"\r\n"[..]);
    let (sink, body) = body::stream(session.clone(), framing, preamble);
    let link = Box::new(Link {
        transport,
        emulation: Some(id.clone()),
        farewell: disconnect_push::<E>,
    });
    let streams2 = streams.clone();
    node.tracker.spawn(async move {
        let inbound = futures_util::stream::unfold(inbox, |mut inbox| async move {
            let frame = inbox.recv().await?;
            Some((Inbound::Frame(frame), inbox))
        });
        centrifuge::run::<E>(session, sink, Box::pin(inbound), link).await;
        streams2.sessions().remove(&id);
    });
    let content_type = match framing {
        Framing::Events => "text/event-stream; charset=utf-8",
        Framing::Delimited => "application/octet-stream",
        Framing::Lines => "application/json",
    };
    streaming_response(content_type, body)
}

/// An `/emulation` request in JSON: `data` is the commands as a JSON string.
#[derive(Debug, Deserialize)]
struct EmulationJson {
    node: String,
    session: String,
    data: String,
}

/// `POST /emulation`: a client's commands for its session. 204 once they are queued
/// for the session's reader, or when the session is gone (its stream has ended, the
/// client reconnects); 404 when `node` is not this node; 400 for a malformed request,
/// 413 for one over `limits.max_message_size`, 429 when the session has too many
/// commands queued.
pub(super) async fn emulation(
    State(streams): State<Streams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = async {
        let config = &streams.node.config;
        if !crate::transport::origin_allowed(config, &headers) {
            return Err(Refusal::FORBIDDEN);
        }
        let data = read_body(body, config.limits.max_message_size).await?;
        let bad = |_| Refusal::bad_request("malformed emulation request");
        let (node, session, frame) = if is_protobuf(&headers) {
            let r = switchboard_protocol::protobuf::decode_emulation(data).map_err(|e| bad(e.0))?;
            (r.node, r.session, Frame::Binary(r.data))
        } else {
            let r: EmulationJson = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
            (r.node, r.session, Frame::from(r.data))
        };
        // Sessions live on the node that holds their stream; a request that reaches
        // another node (no sticky routing behind a load balancer) is refused so the
        // client reconnects, instead of its commands being lost silently.
        if node != streams.node.name {
            return Err(Refusal::Status(StatusCode::NOT_FOUND, "unknown node"));
        }
        let Some(commands) = streams.sessions().get(session.as_str()).cloned() else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        match commands.try_send(frame) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refusal::Status(
                StatusCode::TOO_MANY_REQUESTS,
                "too many commands queued",
            )),
        }
    }
    .await
    .unwrap_or_else(IntoResponse::into_response);
    with_cors(&streams.node.config, &headers, response)
}

/// The CORS preflight of `/connection/http_stream`, `/connection/sse`, `/emulation`.
pub(super) async fn preflight(State(streams): State<Streams>, headers: HeaderMap) -> Response {
    cors_preflight(&streams.node.config, &headers, "GET, POST, OPTIONS")
}
