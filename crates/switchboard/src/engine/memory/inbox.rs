//! Users' inbox positions with persistence on: kept by a [`MemoryInbox`] and written
//! to the data directory whenever a user's record changes or expires, so read state
//! survives a restart like the histories it points into.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::StreamPosition;

use super::MemoryEngine;
use crate::engine::persistence::{Change, Keyspace};
use crate::engine::EngineError;
use crate::inbox::{InboxStore, Mark, Marks, MemoryInbox};

/// A [`MemoryInbox`] whose changes go to the engine's journal.
pub(super) struct DurableInbox {
    pub(super) inner: Arc<MemoryInbox>,
    pub(super) engine: Arc<MemoryEngine>,
}

impl DurableInbox {
    fn record(&self, change: Change) {
        if let Some(journal) = &self.engine.journal {
            journal.record(change);
        }
    }
}

#[async_trait]
impl InboxStore for DurableInbox {
    async fn marks(&self, user: &str, channel: &str) -> Result<Option<Marks>, EngineError> {
        self.inner.marks(user, channel).await
    }

    async fn user_marks(&self, user: &str) -> Result<BTreeMap<String, Marks>, EngineError> {
        self.inner.user_marks(user).await
    }

    async fn advance(
        &self,
        user: &str,
        channel: &str,
        mark: Mark,
        position: &StreamPosition,
        keep: Duration,
        receipts: bool,
    ) -> Result<(Marks, bool), EngineError> {
        let (marks, changed) = self
            .inner
            .advance(user, channel, mark, position, keep, receipts)
            .await?;
        if changed {
            if let Some(record) = self.inner.user(user) {
                let value = serde_json::to_vec(&record)
                    .map_err(|e| EngineError::Unavailable(format!("inbox record: {e}")))?;
                self.record(Change::Put {
                    space: Keyspace::Inbox,
                    key: user.as_bytes().into(),
                    value: value.into(),
                });
            }
        }
        Ok((marks, changed))
    }

    async fn readers(&self, channel: &str) -> Result<BTreeMap<String, Marks>, EngineError> {
        self.inner.readers(channel).await
    }

    async fn maintain(&self) {
        for user in self.inner.sweep() {
            self.record(Change::Delete {
                space: Keyspace::Inbox,
                key: user.as_bytes().into(),
            });
        }
    }
}
