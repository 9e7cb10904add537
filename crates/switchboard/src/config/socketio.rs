//! The `[socketio]` section: event routes that map a Socket.IO app's own client events
//! (`socket.emit("join:conversation", id)`) to switchboard actions.

use serde::{Deserialize, Serialize};

/// Socket.IO settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    /// Client events and the actions they map to (see docs/socketio.md, "Event routes").
    pub routes: Vec<RouteConfig>,
    /// Names (and shapes) of the events switchboard itself sends.
    pub pushes: PushesConfig,
    /// How long the channels a connection joined through routes are kept after it
    /// closes, for `socket.io-client` to re-join them on reconnect (`0`: never).
    #[serde(with = "super::duration")]
    pub rejoin_window: std::time::Duration,
    /// Connection-state recovery as `socket.io` ≥ 4.6 does it: events of channels with
    /// history carry an offset, and a client that reconnects within this window gets
    /// what it missed and `socket.recovered === true` (`0`: off, no offsets).
    #[serde(with = "super::duration")]
    pub recovery_window: std::time::Duration,
    /// Most publications one recovery replays (all channels together), and most a
    /// connection's writer remembers for it; a client that missed more is not
    /// recovered.
    pub recovery_max_publications: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            pushes: PushesConfig::default(),
            rejoin_window: std::time::Duration::from_secs(120),
            recovery_window: std::time::Duration::ZERO,
            recovery_max_publications: 100,
        }
    }
}

/// `[socketio.pushes]`: event names for what switchboard sends, so an app's listeners
/// (`socket.on("user_online", …)`) keep working. Empty: switchboard's own name and shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushesConfig {
    /// A client joined a channel with `join_leave`: this event, `{userId, clientId, channel}`.
    pub join: String,
    /// A client left: this event, `{userId, clientId, channel}`.
    pub leave: String,
    /// A user status change (a publication in the `user_status.namespace`): this event,
    /// `{userId, status: "online"|"offline", lastSeen}`.
    pub status: String,
    /// A user came online (a status publication, see `status`): this event instead of
    /// `status`, same payload.
    pub online: String,
    /// A user went offline: this event instead of `status`, same payload.
    pub offline: String,
    /// The server's own "stopped typing" after `typing_timeout` (`{"typing":false}` in a
    /// typing namespace): this event, `{userId, clientId, channel}`.
    pub typing_stop: String,
}

/// What a routed event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Subscribe to `channel` (as the `subscribe` command).
    #[default]
    Subscribe,
    /// Unsubscribe from `channel`.
    Unsubscribe,
    /// Publish `data` into `channel`, delivered as the event `emit`.
    Publish,
    /// A publish that excludes the sender by default (`socket.to(room).emit`).
    TypingStart,
    /// As `typing_start`.
    TypingStop,
    /// The user ids present in `channel`, as a list.
    Presence,
    /// The status of `user`: one (`{userId, status}`), or a list for a list of ids.
    UserStatus,
    /// Calls the server method `method` with `data`; the acknowledgement carries the
    /// method's answer. The hook through which a route reaches the app backend once
    /// an RPC proxy is configured; today only built-in methods (`user_status`) answer.
    Rpc,
}

/// One event route: `[[socketio.routes]]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The client's event name.
    pub event: String,
    /// What it does.
    pub action: RouteAction,
    /// Channel template over the arguments (`{0}`, `{0.id}`) and the identity (`{sub}`).
    pub channel: String,
    /// `publish`, typing: the event name receivers get (the `event` tag); defaults to
    /// `event`.
    pub emit: String,
    /// `publish`, typing: the payload, a JSON value whose strings are templates; a
    /// string that is a single placeholder (`"{0}"`) is replaced by that JSON value.
    /// Defaults to `"{0}"`, the first argument.
    pub data: Option<serde_json::Value>,
    /// `publish`: deliver to everyone in the channel but the sender's connection.
    /// Typing actions exclude it unless set to `false`.
    pub exclude_sender: Option<bool>,
    /// `user_status`: which argument holds the user id or the list of ids (`"{0}"`).
    pub user: String,
    /// `rpc`: the method to call.
    pub method: String,
}

/// Event names `socket.io-client` keeps for itself: a push under one of them would
/// pass for a connection event.
const CLIENT_RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

impl PushesConfig {
    /// Names that `socket.io-client` would take for its own events, by key.
    pub(crate) fn errors(&self) -> Vec<String> {
        [
            ("join", &self.join),
            ("leave", &self.leave),
            ("status", &self.status),
            ("online", &self.online),
            ("offline", &self.offline),
            ("typing_stop", &self.typing_stop),
        ]
        .into_iter()
        .filter(|(_, name)| CLIENT_RESERVED.contains(&name.as_str()))
        .map(|(key, name)| {
            format!("socketio.pushes.{key}: {name:?} is reserved by socket.io-client")
        })
        .collect()
    }
}
