//! The Centrifugo protocol over streaming HTTP responses, for clients that can not
//! use WebSocket, and the unidirectional transports for clients that only listen.
//!
//! Each connection is one long response written by the same writer driver as a
//! WebSocket ([`super::writer`]) through a [`body::StreamSink`], and runs the same
//! reader and command path ([`super::centrifuge`]); only the link differs.
//!
//! - [`emulation`]: `http_stream` and `sse`, centrifuge-js's fallbacks: the stream
//!   carries replies and pushes, the client's commands come by `POST /emulation`.
//! - [`uni`]: `uni_websocket`, `uni_sse`, `uni_http_stream`: pushes only, the connect
//!   request in the URL, the body or the first message.
//! - [`body`]: a streaming response as the writer's sink.

mod body;
mod emulation;
mod uni;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{read_body, BodyError};
use crate::event::Frame;
use crate::front_door::Peer;
use crate::node::Node;

/// The endpoints the configuration turns on (`[transports]`), `/emulation` with the
/// bidirectional ones.
pub fn router(node: Arc<Node>) -> Router {
    let t = node.config.transports.clone();
    let state = Streams {
        node,
        sessions: Arc::default(),
    };
    let mut router = Router::new();
    if t.http_stream {
        router = router.route(
            "/connection/http_stream",
            post(emulation::http_stream).options(emulation::preflight),
        );
    }
    if t.sse {
        router = router.route(
            "/connection/sse",
            get(emulation::sse)
                .post(emulation::sse)
                .options(emulation::preflight),
        );
    }
    if t.http_stream || t.sse {
        router = router.route(
            "/emulation",
            post(emulation::emulation).options(emulation::preflight),
        );
    }
    if t.uni_websocket {
        router = router.route("/connection/uni_websocket", get(uni::websocket));
    }
    if t.uni_sse {
        router = router.route(
            "/connection/uni_sse",
            get(uni::sse).post(uni::sse).options(uni::preflight),
        );
    }
    if t.uni_http_stream {
        router = router.route(
            "/connection/uni_http_stream",
            post(uni::http_stream).options(uni::preflight),
        );
    }
    router.with_state(state)
}

/// The node, and the emulated sessions of this node by session id.
#[derive(Clone)]
struct Streams {
    node: Arc<Node>,
    /// Where `/emulation` delivers a session's commands. Short sections only: insert,
    /// look up, remove.
    sessions: Arc<Mutex<HashMap<Arc<str>, mpsc::Sender<Frame>>>>,
}

impl Streams {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, mpsc::Sender<Frame>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a new connection: a browser origin that is not allowed, shutdown, or a
    /// client address over its handshake rate (as for WebSocket).
    fn admit(&self, headers: &HeaderMap, peer: &Peer) -> Result<(), Refusal> {
        if !super::origin_allowed(&self.node.config, headers) {
            return Err(Refusal::FORBIDDEN);
        }
        if self.node.shutdown.is_cancelled() {
            return Err(Refusal::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down",
            ));
        }
        peer.admit_handshake().map_err(Refusal::Busy)
    }
}

/// A fresh session id for `/emulation`: random, unlike the client id, which other
/// clients see in presence.
fn session_id() -> Arc<str> {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
        .into()
}

/// Why a request to a streaming endpoint is answered without a stream.
enum Refusal {
    /// This status, with a short reason as the body.
    Status(StatusCode, &'static str),
    /// Over the client address's handshake rate (`503` with `Retry-After`).
    Busy(crate::front_door::Busy),
}

impl Refusal {
    const FORBIDDEN: Self = Self::Status(StatusCode::FORBIDDEN, "origin not allowed");
    /// Over `limits.max_message_size`.
    const TOO_LARGE: Self = Self::Status(StatusCode::PAYLOAD_TOO_LARGE, "request too large");

    fn bad_request(why: &'static str) -> Self {
        Self::Status(StatusCode::BAD_REQUEST, why)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Status(status, why) => (status, why).into_response(),
            Self::Busy(busy) => busy.into_response(),
        }
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge => Self::TOO_LARGE,
            BodyError::Unread => Self::bad_request("request body not read"),
        }
    }
}

/// The query of the endpoints a connection can open with a `GET`.
#[derive(Debug, Deserialize)]
struct ConnectQuery {
    /// The client's first commands (`sse`) or connect request (the unidirectional
    /// ones), JSON, as a `POST` would carry them in its body.
    cf_connect: Option<String>,
}

impl ConnectQuery {
    /// `cf_connect`, unless empty, within `limit` bytes.
    fn within(self, limit: usize) -> Result<Option<Bytes>, Refusal> {
        match self.cf_connect.filter(|c| !c.is_empty()) {
            Some(c) if c.len() > limit => Err(Refusal::TOO_LARGE),
            c => Ok(c.map(Bytes::from)),
        }
    }
}

/// What a connection opens with: a `POST`'s body, or a `GET`'s `cf_connect` (`None`
/// without one); at most `limits.max_message_size` bytes either way.
async fn opening(
    streams: &Streams,
    method: &Method,
    query: ConnectQuery,
    body: Body,
) -> Result<Option<Bytes>, Refusal> {
    let limit = streams.node.config.limits.max_message_size;
    if *method == Method::POST {
        return Ok(Some(read_body(body, limit).await?));
    }
    query.within(limit)
}

/// Whether the request's body is Protobuf (`application/octet-stream`), as the SDKs
/// mark it.
fn is_protobuf(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(b"application/octet-stream")
    })
}

/// A streaming response of `content_type`: never cached, never buffered by nginx.
fn streaming_response(content_type: &'static str, body: body::ResponseBody) -> Response {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
        ),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
        (header::EXPIRES, HeaderValue::from_static("0")),
        (
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    (headers, Body::from_stream(body)).into_response()
}
