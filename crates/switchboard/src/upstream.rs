//! This node's upstream subscriptions: a channel is subscribed in the engine exactly
//! while it has local subscribers in the hub.
//!
//! The hub change and the engine call of one channel happen under one per-channel
//! (sharded) async lock, so a last unsubscribe racing a first subscribe can never leave
//! the node unsubscribed upstream while a session still listens locally.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::engine::{Engine, EngineError};
use crate::hub::Hub;
use crate::session::Session;

const SHARDS: usize = 64;

/// Serializes each channel's subscription changes.
pub(crate) struct Upstream {
    /// Held across the engine call on purpose (an async mutex): the hub change and the
    /// engine's subscription must not be reordered against another session's.
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Upstream {
    pub(crate) fn new() -> Self {
        Self {
            locks: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn lock(&self, channel: &str) -> &Mutex<()> {
        &self.locks[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds `session` to the channel's local subscribers, subscribing the node upstream
    /// first if it is the first one. On failure the session is not added.
    ///
    /// # Cancel safety
    /// Not cancel-safe: run it to completion (session commands are).
    pub(crate) async fn subscribe(
        &self,
        hub: &Hub,
        engine: &dyn Engine,
        channel: &Arc<str>,
        session: &Arc<Session>,
    ) -> Result<(), EngineError> {
        let _order = self.lock(channel).lock().await;
        if hub.subscribe(channel, session) {
            if let Err(e) = engine.subscribe(channel).await {
                hub.unsubscribe(channel, session);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes `session` from the channel's local subscribers, unsubscribing the node
    /// upstream when it was the last one (a failure there is only logged: the node then
    /// receives events nobody local wants, which the hub drops).
    pub(crate) async fn unsubscribe(
        &self,
        hub: &Hub,
        engine: &dyn Engine,
        channel: &str,
        session: &Session,
    ) {
        let _order = self.lock(channel).lock().await;
        if hub.unsubscribe(channel, session) {
            if let Err(e) = engine.unsubscribe(channel).await {
                tracing::warn!(%channel, error = %e, "engine unsubscribe failed");
            }
        }
    }
}
