//! Transports: one per wire protocol. Each decodes frames into [`Session`] calls and
//! encodes replies and pushes; adding a protocol touches nothing in the core.
//!
//! [`Session`]: crate::session::Session

pub mod centrifuge;
mod command;
mod heartbeat;
pub mod socketio;
mod websocket;

use axum::http::HeaderMap;

use crate::config::Config;

/// Whether a browser's `Origin` may connect (no header: not a browser, allowed).
pub fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    if config.allowed_origins.is_empty() {
        return true;
    }
    let Some(origin) = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// Logs the end of a connection, with why it ended.
pub(crate) fn log_closed(session: &crate::session::Session, transport: &'static str) {
    let reason = session.disconnect_reason();
    tracing::debug!(
        client = %session.id,
        user = %session.user(),
        transport,
        code = reason.code,
        reason = reason.reason,
        "connection closed"
    );
}
