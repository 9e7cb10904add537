//! Transports: one per wire protocol. Each decodes frames into [`Session`] calls and
//! encodes replies and pushes; adding a protocol touches nothing in the core.
//!
//! One writer driver ([`writer`]) drains every connection's outbox, into a WebSocket
//! ([`websocket`]) or a streaming response ([`streaming`]); one command path
//! ([`command`]) runs what any of them decodes. Every WebSocket endpoint shakes hands
//! through [`upgrade`], which negotiates permessage-deflate ([`deflate`]).
//!
//! [`Session`]: crate::session::Session

pub mod centrifuge;
mod command;
pub mod deflate;
mod frame_reader;
mod heartbeat;
pub mod pusher;
mod socket;
pub mod socketio;
pub mod streaming;
pub mod upgrade;
mod websocket;
mod writer;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::config::Config;
use crate::metrics::connections::Transport;
use crate::session::Session;

/// Whether a browser's `Origin` may connect (no header: not a browser, allowed). A
/// same-origin request (the `Origin` names the `Host` it is sent to) is always allowed;
/// with `allowed_origins` empty, any origin is.
pub fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    if config.allowed_origins.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    same_origin(origin, headers)
        || config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// What a cross-origin browser may do with a response (Socket.IO long-polling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CorsGrant {
    /// `Access-Control-Allow-Origin: *`: the page may read the response, but a request
    /// made with credentials (cookies) is refused by the browser.
    Anyone,
    /// The origin echoed with `Access-Control-Allow-Credentials: true`.
    WithCredentials(HeaderValue),
}

/// The CORS headers a response to `headers` gets: none without an `Origin` or for one
/// that is not allowed; credentials only for an origin named in `allowed_origins` (not
/// through `"*"`) or the same origin. `null` is never echoed: it is the origin of any
/// sandboxed page or local file, so it can not stand for a trusted site.
pub(crate) fn cors_grant(config: &Config, headers: &HeaderMap) -> Option<CorsGrant> {
    let origin = headers.get(header::ORIGIN)?;
    if !origin_allowed(config, headers) {
        return None;
    }
    let trusted = origin.to_str().ok().is_some_and(|o| {
        o != "null"
            && (same_origin(o, headers)
                || config
                    .allowed_origins
                    .iter()
                    .any(|a| a != "*" && a.eq_ignore_ascii_case(o)))
    });
    Some(if trusted {
        CorsGrant::WithCredentials(origin.clone())
    } else {
        CorsGrant::Anyone
    })
}

/// Lets browsers on allowed origins poll across origins (see [`cors_grant`]).
///
/// [`cors_grant`]: cors_grant
pub(crate) fn with_cors(config: &Config, headers: &HeaderMap, mut response: Response) -> Response {
    let Some(grant) = cors_grant(config, headers) else {
        return response;
    };
    let h = response.headers_mut();
    match grant {
        CorsGrant::Anyone => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        CorsGrant::WithCredentials(origin) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// The answer to a cross-origin browser's CORS preflight of an endpoint taking
/// `methods`: 403 for an origin that is not allowed.
pub(crate) fn preflight(config: &Config, headers: &HeaderMap, methods: &'static str) -> Response {
    if !origin_allowed(config, headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("300"),
    );
    with_cors(config, headers, response)
}

/// Whether `origin` (`scheme://host[:port]`) names the `Host` the request was sent to.
/// Behind a proxy this needs the client's `Host` passed on (nginx: `$http_host`).
pub(crate) fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// Why a request body carrying client messages was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limit: refused as soon as it is exceeded, without buffering the rest.
    TooLarge,
    /// The client stopped sending, or sent too slowly.
    Unread,
}

/// Reads a request body of at most `limit` bytes (`limits.max_message_size`): every
/// transport that takes client messages over HTTP applies the limit a WebSocket
/// applies to a message, rather than the HTTP framework's own default.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut data = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unread)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Counts a connection opened on `transport`; [`closed`] counts its end.
pub(crate) fn opened(session: &Session, transport: Transport) {
    session.node().metrics.connections.opened(transport);
}

/// Counts the end of a connection on `transport` by its disconnect code, and logs it
/// with why it ended.
pub(crate) fn closed(session: &Session, transport: Transport) {
    let reason = session.disconnect_reason();
    session.node().metrics.connections.closed(transport, reason);
    tracing::debug!(
        client = %session.id,
        user = %session.user(),
        transport = transport.name(),
        encoding = transport.encoding(),
        code = reason.code,
        reason = reason.reason,
        "connection closed"
    );
}
