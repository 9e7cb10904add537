//! The WebSocket handshake (RFC 6455), done here instead of by axum's
//! `WebSocketUpgrade`: so an extension can be negotiated and read through
//! (permessage-deflate, [`super::deflate`]), which axum offers no hook for.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, FutureExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use super::deflate;
use super::socket::SharedSocket;
use crate::config::Config;

/// An upgraded connection's socket.
pub(crate) type Socket = TokioIo<Upgraded>;

/// An upgraded connection: its socket, shared by the connection's frame reader
/// ([`super::frame_reader`]) and its frame writer ([`super::socket::FrameWriter`]), and
/// what the handshake settled for reading it.
pub(crate) struct WebSocket<S = Socket> {
    pub(super) socket: SharedSocket<S>,
    /// Whether permessage-deflate was negotiated.
    pub(super) deflate: bool,
    /// The largest message the client may send (`limits.max_message_size`).
    pub(super) max: usize,
}

impl<S> WebSocket<S> {
    /// A connection over `io`, past its handshake.
    pub(crate) fn new(io: S, deflate: bool, max: usize) -> Self {
        Self {
            socket: SharedSocket::new(io),
            deflate,
            max,
        }
    }
}

/// How a connection that negotiated permessage-deflate compresses what it sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deflate {
    /// Deflate level, 1 to 9.
    pub(crate) level: u32,
    /// Frames shorter than this go uncompressed.
    pub(crate) min_size: usize,
}

impl Deflate {
    /// The configured compression.
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            level: config.websocket.compression_level,
            min_size: config.websocket.compression_min_size,
        }
    }
}

/// Why a request can not be upgraded: what axum's extractor answered, with the same
/// statuses.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRejection {
    /// Not a `GET`.
    #[error("request method must be `GET`")]
    MethodNotGet,
    /// A header of the handshake is missing or wrong.
    #[error("not a WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    /// The connection can not be taken over (not HTTP/1.1 with upgrades).
    #[error("WebSocket request couldn't be upgraded since no upgrade state was present")]
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let status = match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadHandshake(_) => StatusCode::BAD_REQUEST,
            Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        };
        (status, self.to_string()).into_response()
    }
}

/// A WebSocket handshake request, as an extractor: what it asked for, until
/// [`WsUpgrade::on_upgrade`] answers it.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The subprotocols the client asked for, in its order.
    requested: Vec<HeaderValue>,
    /// The subprotocol chosen, echoed in the answer.
    protocol: Option<HeaderValue>,
    /// Whether the client offered permessage-deflate on terms switchboard accepts.
    deflate_offered: bool,
    /// Whether it is negotiated (offered, and enabled by [`WsUpgrade::configure`]).
    deflate: Option<Deflate>,
    /// The largest message the client may send.
    max: usize,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRejection::MethodNotGet);
        }
        let headers = &parts.headers;
        if !header_has(headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection::BadHandshake(
                "Connection header did not include 'upgrade'",
            ));
        }
        if !header_is(headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRejection::BadHandshake(
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        if !header_is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(UpgradeRejection::BadHandshake(
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRejection::BadHandshake(
                "`Sec-WebSocket-Key` header missing",
            ))?
            .clone();
        let requested = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        let deflate_offered = deflate::offered(headers);
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self {
            key,
            on_upgrade,
            requested,
            protocol: None,
            deflate_offered,
            deflate: None,
            max: usize::MAX,
        })
    }
}

/// Whether header `name` is `value` (ignoring case).
fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether header `name` lists `token` (ignoring case): `Connection: keep-alive, Upgrade`.
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl WsUpgrade {
    /// Applies the configured message size limit, and permessage-deflate when the
    /// client offered it and `websocket.compression` is on.
    pub(crate) fn configure(mut self, config: &Config) -> Self {
        self.max = config.limits.max_message_size;
        self.deflate =
            (self.deflate_offered && config.websocket.compression).then(|| Deflate::of(config));
        self
    }

    /// Chooses the first of `protocols` the client asked for.
    pub(crate) fn protocols<const N: usize>(mut self, protocols: [&'static str; N]) -> Self {
        self.protocol = protocols
            .into_iter()
            .find(|p| self.requested.iter().any(|r| r.as_bytes() == p.as_bytes()))
            .map(HeaderValue::from_static);
        self
    }

    /// The subprotocol chosen, if any.
    pub(crate) fn selected_protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// How the connection compresses, when permessage-deflate is negotiated.
    pub(crate) fn deflate(&self) -> Option<Deflate> {
        self.deflate
    }

    /// Answers the handshake (`101 Switching Protocols`) and runs `callback` on the
    /// connection once the client has it.
    #[must_use = "the response completes the handshake"]
    pub(crate) fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            key,
            on_upgrade,
            protocol,
            deflate,
            max,
            ..
        } = self;
        // Chained futures, not one `async` block: a block would keep room for what it
        // captured (the callback's state, the configuration) beside the connection's
        // future for the connection's whole life; a chain holds one stage at a time.
        let connection = on_upgrade.then(move |upgraded| match upgraded {
            // The client went away before the upgrade: nothing to serve.
            Err(_) => Either::Left(std::future::ready(())),
            Ok(upgraded) => {
                let socket = WebSocket::new(TokioIo::new(upgraded), deflate.is_some(), max);
                Either::Right(callback(socket))
            }
        });
        tokio::spawn(connection);
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        if deflate.is_some() {
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(deflate::RESPONSE),
            );
        }
        response
    }
}
