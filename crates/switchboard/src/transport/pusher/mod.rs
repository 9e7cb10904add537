//! The Pusher Channels protocol 7 at `/app/<key>` (pusher-js, Laravel Echo) and the
//! Pusher HTTP API at `/apps/<app_id>/...` (the Pusher server libraries), for each app
//! `[pusher]` and `[pusher.apps.<name>]` configure; off while no app has a key. Pusher
//! channels are switchboard channels under each app's mapping in [`names`], so Pusher
//! clients share them with the other protocols and never reach another app's. See
//! docs/pusher.md.
//!
//! - [`names`]: each app's Pusher channel names and switchboard channels.
//! - [`signature`]: channel authorization, user sign-in and HTTP API signatures.
//! - [`wire`]: the protocol's messages, and how channel events are encoded.
//! - [`socket`]: one WebSocket connection: subscribe, client events, sign-in, pings.
//! - [`http`]: the HTTP API.
//! - [`counts`]: `pusher_internal:subscription_count`, for the apps that ask for it.

mod counts;
mod http;
mod names;
mod signature;
mod socket;
mod wire;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;

/// What the handlers share: the node, and where new subscribers are noted for their
/// subscription count (when an app asks for counts).
#[derive(Clone)]
struct Shared {
    node: Arc<Node>,
    counts: Option<Arc<counts::Counts>>,
}

impl FromRef<Shared> for Arc<Node> {
    fn from_ref(shared: &Shared) -> Self {
        shared.node.clone()
    }
}

impl FromRef<Shared> for Option<Arc<counts::Counts>> {
    fn from_ref(shared: &Shared) -> Self {
        shared.counts.clone()
    }
}

/// The routes of this transport and its HTTP API; none while Pusher is off. Starts
/// telling subscription counts when an app asks for them.
pub fn router(node: Arc<Node>) -> Router {
    if !node.config.pusher.enabled() {
        return Router::new();
    }
    let limit = node.config.api_max_body_size;
    let counts = counts::Counts::start(&node);
    Router::new()
        .route("/app/{key}", get(socket::handler))
        .route("/apps/{app_id}/events", post(http::events))
        .route("/apps/{app_id}/batch_events", post(http::batch_events))
        .route("/apps/{app_id}/channels", get(http::channels))
        // A channel, and its users.
        .route("/apps/{app_id}/channels/{*rest}", get(http::channel))
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(http::terminate_connections),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Shared { node, counts })
}
