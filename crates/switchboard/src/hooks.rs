//! Hook points: the named moments of the core (a client connects, a channel gets its
//! first subscriber, ...) that something outside the core may observe, such as
//! [`crate::webhooks`].
//!
//! The node reports what it saw locally, in order, through one synchronous call that
//! must not block; an observer that needs a cluster-wide view (is the user online on
//! any node?) aggregates the nodes' reports itself.

use std::sync::Arc;

use switchboard_protocol::{ClientInfo, Disconnect, SharedJson};

/// One thing that happened on this node.
#[derive(Debug, Clone)]
pub enum Lifecycle {
    /// A client authenticated (token or connect proxy).
    Connected {
        /// Connection id.
        client: Arc<str>,
        /// User id (empty for an anonymous connection).
        user: Arc<str>,
    },
    /// An authenticated client's connection ended.
    Disconnected {
        /// Connection id.
        client: Arc<str>,
        /// User id (empty for an anonymous connection).
        user: Arc<str>,
        /// Why it ended, as the client was told.
        reason: Disconnect,
    },
    /// The user's first connection on this node, after the user was offline here
    /// (debounced like `user_status`: a reload does not report offline then online).
    UserOnline {
        /// User id.
        user: Arc<str>,
    },
    /// The user's last connection on this node closed and the offline debounce passed
    /// without a new one.
    UserOffline {
        /// User id.
        user: Arc<str>,
        /// Unix milliseconds of the last disconnect.
        last_seen: u64,
    },
    /// The channel got its first subscriber on this node.
    ChannelOccupied {
        /// Channel name.
        channel: Arc<str>,
    },
    /// The channel lost its last subscriber on this node.
    ChannelVacated {
        /// Channel name.
        channel: Arc<str>,
    },
    /// A client subscribed to a channel.
    Subscribed {
        /// Channel name.
        channel: Arc<str>,
        /// Who subscribed.
        info: ClientInfo,
    },
    /// A client's subscription ended (its request, the server's, or its disconnect).
    Unsubscribed {
        /// Channel name.
        channel: Arc<str>,
        /// Who it was.
        info: ClientInfo,
    },
    /// A client joined a presence channel (only the user's first client when the
    /// namespace has `presence_per_user`).
    Joined {
        /// Channel name.
        channel: Arc<str>,
        /// Who joined.
        info: ClientInfo,
    },
    /// A client left a presence channel, or its entry expired after its node died
    /// (reported by the one node whose sweep removed it).
    Left {
        /// Channel name.
        channel: Arc<str>,
        /// Who left.
        info: ClientInfo,
    },
    /// A publication was accepted by this node (from a client or the server API).
    Published {
        /// Channel name.
        channel: Arc<str>,
        /// The payload.
        data: SharedJson,
        /// The publishing client, if a client published.
        info: Option<ClientInfo>,
    },
}

/// Observes the core's hook points.
pub trait Hooks: Send + Sync + 'static {
    /// Called at each hook point, in the order things happened on this node. Must not
    /// block or await: it runs inside session commands (and, for channel occupancy,
    /// under the channel's subscription lock).
    fn on_lifecycle(&self, event: Lifecycle);

    /// Whether [`Lifecycle::Published`] is wanted: when not, publishing skips building
    /// it (the hot path).
    fn observes_publications(&self) -> bool {
        false
    }
}

/// Observes nothing: the default.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn on_lifecycle(&self, _event: Lifecycle) {}
}
