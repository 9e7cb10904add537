//! The engine: cross-node pub/sub, presence and history behind one narrow trait.
//!
//! Local delivery goes through the engine too (it calls the [`EventHandler`], which
//! is the hub), so one node and many nodes take the same path. The memory engine is
//! the default (kept on disk with [`persistence`] when configured); a Redis engine
//! implements the same trait for several nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::{
    ClientInfo, HistoryResult, PresenceStatsResult, Publication, StreamPosition,
};

use crate::event::EventKind;
pub use crate::history::{HistoryOptions, HistoryQuery};
use crate::inbox::{InboxStore, MemoryInbox};
use crate::revocation::{MemoryRevocations, RevocationStore};
use crate::typing::{MemoryTyping, TypingStore};

pub mod memory;
pub mod persistence;
pub mod redis;

/// Receives every event of channels this node is subscribed to, from any node.
///
/// Engines hand over domain values only; encoding for a wire protocol happens behind
/// the handler, once per protocol.
pub trait EventHandler: Send + Sync {
    /// Delivers one event. Must not block: it runs on the engine's delivery path.
    fn on_event(&self, channel: &Arc<str>, kind: EventKind);

    /// This node missed events of `channel` (its link to the other nodes broke, or the
    /// stream's epoch changed under it): local subscribers must resynchronize.
    fn on_lost(&self, _channel: &Arc<str>) {}

    /// A command another node sent to every node (see [`crate::cluster`]).
    fn on_control(&self, _payload: &[u8]) {}
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody used the key: publish, then settle.
    First,
    /// A publish with this key is under way on some node.
    Pending,
    /// A publish with this key succeeded at this position.
    Done(StreamPosition),
}

/// Why an engine operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The backing store is unreachable or failed.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
}

/// Cross-node pub/sub, presence and history.
///
/// Errors are [`EngineError::Unavailable`] whenever the backing store can not be
/// reached: the caller refuses the operation (never a silent loss).
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Publishes into a channel on every node, appending to history when `history`
    /// is given. Returns the stream position after the publication.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails; nothing was published then.
    async fn publish(
        &self,
        channel: &Arc<str>,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, EngineError>;

    /// Tells every node's subscribers that a client joined.
    async fn publish_join(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError>;

    /// Tells every node's subscribers that a client left.
    async fn publish_leave(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError>;

    /// This node has its first subscriber of `channel`: start receiving its events.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// This node has no subscriber of `channel` left.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;

    /// Adds (or refreshes) a client's presence in a channel for one presence lease.
    /// Returns whether it is the user's first client there.
    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<bool, EngineError>;

    /// Extends the lease of this node's presence entries (called every third of the
    /// lease), re-adding any the store lost.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn refresh_presence(
        &self,
        entries: &[(Arc<str>, ClientInfo)],
    ) -> Result<(), EngineError> {
        for (channel, info) in entries {
            self.add_presence(channel, info.clone()).await?;
        }
        Ok(())
    }

    /// Removes a channel's entries whose lease ran out (their node died), returning
    /// each with whether it was its user's last client there. Each expired entry is
    /// returned to one caller only, so one node sends its leave push.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn expire_presence(&self, channel: &str) -> Result<Vec<(ClientInfo, bool)>, EngineError>;

    /// Removes a client's presence. Returns whether the user has no client left there.
    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
        user: &str,
    ) -> Result<bool, EngineError>;

    /// Clients present in a channel.
    async fn presence(&self, channel: &str) -> Result<HashMap<Arc<str>, ClientInfo>, EngineError>;

    /// Counts of clients and distinct users in a channel.
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, EngineError>;

    /// Reads a channel's history.
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, EngineError>;

    /// Drops a channel's history (the epoch changes).
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;

    /// Sends a command to every other node's [`EventHandler::on_control`]. With one
    /// node there is nobody to tell.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn publish_control(&self, _payload: String) -> Result<(), EngineError> {
        Ok(())
    }

    /// Records this node's status (JSON) under `uid` for one presence lease.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn heartbeat(&self, _uid: &str, _status: String) -> Result<(), EngineError> {
        Ok(())
    }

    /// The status records of every live node (this one included once it sent a
    /// heartbeat); empty when the engine has no view beyond this node.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn nodes(&self) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }

    /// Counts a connection of `user` on node `node` unless the user already holds
    /// `limit` connections (0: no limit) on live nodes. Returns whether it was counted.
    /// With one node the hub's own count is enough.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn count_connection(
        &self,
        _user: &str,
        _node: &str,
        _limit: usize,
    ) -> Result<bool, EngineError> {
        Ok(true)
    }

    /// Uncounts a connection counted by [`Engine::count_connection`].
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn uncount_connection(&self, _user: &str, _node: &str) -> Result<(), EngineError> {
        Ok(())
    }

    /// Connections of each user on every live node; `None` when the engine sees no
    /// node but this one.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn connection_counts(&self, _users: &[String]) -> Result<Option<Vec<u32>>, EngineError> {
        Ok(None)
    }

    /// Records that `user` connected or disconnected at `at_ms` (Unix ms), for
    /// [`Engine::last_seen`], kept for `keep`. With one node the node's own record is
    /// enough.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn record_seen(
        &self,
        _user: &str,
        _at_ms: u64,
        _keep: Duration,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Records `at_ms` for every user connected here (the periodic renewal). The
    /// default records them one by one.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn refresh_seen(
        &self,
        users: &[Arc<str>],
        at_ms: u64,
        keep: Duration,
    ) -> Result<(), EngineError> {
        for user in users {
            self.record_seen(user, at_ms, keep).await?;
        }
        Ok(())
    }

    /// The latest time (Unix ms, 0: never) any node recorded for each user; `None`
    /// when the engine sees no node but this one.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn last_seen(&self, _users: &[String]) -> Result<Option<Vec<u64>>, EngineError> {
        Ok(None)
    }

    /// Claims a publish `idempotency_key` of `channel` for `window` across nodes.
    /// With one node the API's own cache is enough: every claim is first.
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn claim_idempotent(
        &self,
        _channel: &str,
        _key: &str,
        _window: Duration,
    ) -> Result<Claim, EngineError> {
        Ok(Claim::First)
    }

    /// Records the result of a claimed publish (`None`: it failed, release the key so
    /// a retry publishes).
    ///
    /// # Errors
    /// [`EngineError`] when the backing store fails.
    async fn settle_idempotent(
        &self,
        _channel: &str,
        _key: &str,
        _result: Option<&StreamPosition>,
        _window: Duration,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Where revocation records live: shared by every node of the engine, so a node
    /// started later refuses a token revoked earlier. With one node, its memory.
    fn revocations(self: Arc<Self>) -> Arc<dyn RevocationStore> {
        Arc::new(MemoryRevocations::default())
    }

    /// Where typing state lives: shared by every node of the engine, so a user typing
    /// through two nodes is throttled and ended once. With one node, its memory.
    fn typing(self: Arc<Self>) -> Arc<dyn TypingStore> {
        Arc::new(MemoryTyping::default())
    }

    /// Where users' inbox positions live: shared by every node of the engine, so a
    /// session on any node gets what the user has not received. With one node, its
    /// memory.
    fn inbox(self: Arc<Self>) -> Arc<dyn InboxStore> {
        Arc::new(MemoryInbox::default())
    }

    /// Periodic housekeeping (expiring idle streams); called about once a minute.
    async fn maintain(&self) {}

    /// Graceful stop, once connections drained: writes what the engine still holds for
    /// later (the memory engine's persistence). Nothing is published afterwards.
    async fn close(&self) {}

    /// Whether the engine can serve requests (for `/ready`).
    async fn ready(&self) -> bool {
        true
    }
}
