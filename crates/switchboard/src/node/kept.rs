//! Small records kept for a while and shared by every node: a closed Socket.IO
//! connection's state, for the reconnect that may reach another node. Each record is a
//! one-entry stream in the engine's history, so every engine keeps them without a
//! method of its own.

use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{Publication, SharedJson};

use super::{Node, NodeError};
use crate::engine::{HistoryOptions, HistoryQuery};

/// Streams of kept records: no namespace has this name, so no client can read them.
const PREFIX: &str = "__kept:";

impl Node {
    /// Keeps `data` under `key` for `ttl`, on every node, replacing what was there.
    ///
    /// # Errors
    /// An engine failure: nothing was kept.
    pub async fn keep(&self, key: &str, data: SharedJson, ttl: Duration) -> Result<(), NodeError> {
        let publication = Publication {
            data,
            info: None,
            offset: 0,
            tags: None,
            exclude_client: None,
        };
        let history = HistoryOptions { size: 1, ttl };
        let stream: Arc<str> = format!("{PREFIX}{key}").into();
        self.engine
            .publish(&stream, publication, Some(history))
            .await?;
        Ok(())
    }

    /// What [`Node::keep`] kept under `key`, if it has not expired.
    ///
    /// # Errors
    /// An engine failure.
    pub async fn kept(&self, key: &str) -> Result<Option<SharedJson>, NodeError> {
        let query = HistoryQuery {
            limit: Some(1),
            reverse: true,
            ..HistoryQuery::default()
        };
        let h = self
            .engine
            .history(&format!("{PREFIX}{key}"), query)
            .await?;
        Ok(h.publications.into_iter().next().map(|p| p.data))
    }

    /// Removes what was kept under `key`, so it is used once. (Two nodes racing for
    /// one record may both read it before either removes it: one round trip.)
    ///
    /// # Errors
    /// An engine failure.
    pub async fn forget_kept(&self, key: &str) -> Result<(), NodeError> {
        Ok(self
            .engine
            .remove_history(&format!("{PREFIX}{key}"))
            .await?)
    }
}
