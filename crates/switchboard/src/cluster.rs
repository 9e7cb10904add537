//! What nodes tell each other through the engine: commands about a user's connections
//! (run on every node where the user is connected), and each node's status record
//! (refreshed every third of `presence_lease`) from which `info` and `channels`
//! aggregate the whole cluster. With the memory engine there is one node: commands
//! run locally and the view is the local one.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};

use serde::{Deserialize, Serialize};
use switchboard_protocol::Disconnect;

use crate::engine::EventHandler;
use crate::event::EventKind;
use crate::hub::Hub;
use crate::node::Node;

/// A command about one user's connections, wherever they are connected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserCommand {
    /// Close connections (all, or `client`), except those in `whitelist`.
    Disconnect {
        /// User id.
        user: String,
        /// Only this connection, when set.
        client: Option<String>,
        /// Connections to keep.
        whitelist: Vec<String>,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// Subscribe connections to a channel on the server's initiative.
    Subscribe {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
        /// Only this connection, when set.
        client: Option<String>,
    },
    /// Unsubscribe connections from a channel.
    Unsubscribe {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
        /// Only this connection, when set.
        client: Option<String>,
    },
    /// Change when connections expire, or expire them now.
    Refresh {
        /// User id.
        user: String,
        /// Only this connection, when set.
        client: Option<String>,
        /// Close them now (3005).
        expire_now: bool,
        /// New expiry (Unix seconds), `None` for never.
        expire_at: Option<u64>,
    },
    /// Tell a user's connections (but `except`) that their read position in a channel
    /// moved (the store has it already).
    InboxRead {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
        /// The positions after the read.
        marks: crate::inbox::Marks,
        /// The connection that marked it (it has the answer).
        except: Option<String>,
    },
    /// End the connections and subscriptions whose token a revocation refuses (the
    /// record is in the revocation store already).
    Revoke {
        /// What was revoked.
        revocation: crate::revocation::Revocation,
    },
}

/// A command on its way between nodes, with its origin (which ran it already).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) from: String,
    pub(crate) command: UserCommand,
}

/// One node's status as the other nodes see it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Unique id of the process.
    pub uid: String,
    /// Node name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Authenticated connections.
    pub num_clients: u32,
    /// Distinct connected users.
    pub num_users: u32,
    /// Subscriptions.
    pub num_subs: u32,
    /// Seconds since start.
    pub uptime: u32,
    /// Channels with subscribers on the node, with their counts.
    pub channels: BTreeMap<String, u32>,
}

/// The engine's event handler: channel events go to the hub, commands from other
/// nodes to the node (known only once it is built, hence the late link).
pub(crate) struct Dispatch {
    hub: Arc<Hub>,
    node: OnceLock<Weak<Node>>,
}

impl Dispatch {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            node: OnceLock::new(),
        }
    }

    pub(crate) fn link(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }
}

impl EventHandler for Dispatch {
    fn on_event(&self, channel: &Arc<str>, kind: EventKind) {
        self.hub.on_event(channel, kind);
    }

    fn on_lost(&self, channel: &Arc<str>) {
        self.hub.on_lost(channel);
    }

    fn on_control(&self, payload: &[u8]) {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return;
        };
        let envelope: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable command from another node");
                return;
            }
        };
        if envelope.from == node.uid {
            return;
        }
        tokio::spawn(async move { node.apply(&envelope.command).await });
    }
}

/// A disconnect as it travels between nodes, and back.
pub(crate) fn disconnect_of(code: u16, reason: &str) -> Disconnect {
    Disconnect {
        code,
        reason: crate::api::intern_reason(reason),
    }
}
