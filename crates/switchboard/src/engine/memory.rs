//! The in-memory engine: one node, no dependencies. History and presence live in
//! sharded maps; events are handed to the hub synchronously, under the channel's
//! shard lock, so concurrent publishers into one channel deliver in offset order.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::{
    ClientInfo, HistoryResult, PresenceStatsResult, Publication, StreamPosition,
};
use tokio::time::Instant;

use super::{Engine, EngineError, EventHandler, HistoryOptions, HistoryQuery};
use crate::event::EventKind;
use crate::history::Stream;
use crate::presence::PresenceSet;

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    streams: HashMap<Arc<str>, (Stream, HistoryOptions)>,
    presence: HashMap<Arc<str>, PresenceSet>,
    /// Bytes held by this shard's streams.
    bytes: usize,
}

impl Shard {
    /// Evicts the shard's oldest publications until it is within `budget`.
    fn enforce(&mut self, budget: usize) {
        while self.bytes > budget {
            let oldest = self
                .streams
                .iter_mut()
                .filter_map(|(_, (s, _))| s.oldest_time().map(|t| (t, s)))
                .min_by_key(|(t, _)| *t);
            let Some((_, stream)) = oldest else {
                break;
            };
            let before = stream.bytes();
            stream.evict_oldest();
            self.bytes = self.bytes.saturating_sub(before - stream.bytes());
        }
    }
}

/// The default engine for a single node.
///
/// History memory is capped: the cap is split evenly over the shards (channels hash to
/// shards), and a shard over its share evicts its oldest publications first.
pub struct MemoryEngine {
    handler: Arc<dyn EventHandler>,
    shard_budget: usize,
    /// Short critical sections only (no await inside), so a std mutex is right.
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    presence_lease: Duration,
}

impl MemoryEngine {
    /// An engine delivering to `handler`, holding at most `history_max_bytes` of history.
    pub fn new(handler: Arc<dyn EventHandler>, history_max_bytes: usize) -> Self {
        Self {
            handler,
            shard_budget: history_max_bytes / SHARDS,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            presence_lease: Duration::from_secs(20),
        }
    }

    /// Sets how long a presence entry lives without a refresh.
    #[must_use]
    pub fn with_presence_lease(mut self, lease: Duration) -> Self {
        self.presence_lease = lease;
        self
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(channel) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops idle streams (no publication for their TTL): called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            s.streams.retain(|_, (stream, opts)| {
                stream.expire(now);
                !stream.idle(opts.ttl, now)
            });
            s.bytes = s.streams.values().map(|(st, _)| st.bytes()).sum();
        }
    }
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish(
        &self,
        channel: &Arc<str>,
        mut publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, EngineError> {
        let mut shard = self.shard(channel);
        let position = match history {
            Some(opts) => {
                let now = Instant::now();
                let (stream, stored_opts) = shard
                    .streams
                    .entry(channel.clone())
                    .or_insert_with(|| (Stream::new(now), opts));
                *stored_opts = opts;
                let before = stream.bytes();
                publication.offset = stream.append(publication.clone(), opts, now);
                let after = stream.bytes();
                let position = stream.position();
                shard.bytes = (shard.bytes + after).saturating_sub(before);
                shard.enforce(self.shard_budget);
                position
            }
            None => StreamPosition::default(),
        };
        self.handler
            .on_event(channel, EventKind::Publication(publication));
        drop(shard);
        Ok(position)
    }

    async fn publish_join(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError> {
        let _order = self.shard(channel);
        self.handler.on_event(channel, EventKind::Join(info));
        Ok(())
    }

    async fn publish_leave(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError> {
        let _order = self.shard(channel);
        self.handler.on_event(channel, EventKind::Leave(info));
        Ok(())
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<bool, EngineError> {
        let expires = Instant::now() + self.presence_lease;
        let mut shard = self.shard(channel);
        if let Some(set) = shard.presence.get_mut(channel) {
            return Ok(set.add(info, expires));
        }
        let mut set = PresenceSet::default();
        let first = set.add(info, expires);
        shard.presence.insert(Arc::from(channel), set);
        Ok(first)
    }

    async fn expire_presence(&self, channel: &str) -> Result<Vec<(ClientInfo, bool)>, EngineError> {
        let mut shard = self.shard(channel);
        let Some(set) = shard.presence.get_mut(channel) else {
            return Ok(Vec::new());
        };
        let gone = set.expire(Instant::now());
        if set.is_empty() {
            shard.presence.remove(channel);
        }
        Ok(gone)
    }

    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
        _user: &str,
    ) -> Result<bool, EngineError> {
        let mut shard = self.shard(channel);
        let Some(set) = shard.presence.get_mut(channel) else {
            return Ok(false);
        };
        let last = set.remove(client).is_some_and(|(_, last)| last);
        if set.is_empty() {
            shard.presence.remove(channel);
        }
        Ok(last)
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<Arc<str>, ClientInfo>, EngineError> {
        Ok(self
            .shard(channel)
            .presence
            .get(channel)
            .map(PresenceSet::clients)
            .unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, EngineError> {
        Ok(self
            .shard(channel)
            .presence
            .get(channel)
            .map(PresenceSet::stats)
            .unwrap_or_default())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, EngineError> {
        let now = Instant::now();
        let mut shard = self.shard(channel);
        if let Some((stream, _)) = shard.streams.get_mut(channel) {
            return Ok(stream.read(&query, now));
        }
        match query.ensure {
            Some(opts) => {
                let mut stream = Stream::new(now);
                let result = stream.read(&query, now);
                shard.streams.insert(Arc::from(channel), (stream, opts));
                Ok(result)
            }
            None => Ok(HistoryResult::default()),
        }
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let mut shard = self.shard(channel);
        if let Some((stream, _)) = shard.streams.remove(channel) {
            shard.bytes = shard.bytes.saturating_sub(stream.bytes());
        }
        Ok(())
    }

    async fn maintain(&self) {
        self.sweep();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    struct Sink;
    impl EventHandler for Sink {
        fn on_event(&self, _: &Arc<str>, _: EventKind) {}
    }

    fn publication(bytes: usize) -> Publication {
        Publication {
            data: Arc::from(RawValue::from_string(format!("\"{}\"", "x".repeat(bytes))).unwrap()),
            info: None,
            offset: 0,
            tags: None,
        }
    }

    #[tokio::test]
    async fn history_memory_is_capped_and_oldest_goes_first() {
        let cap = SHARDS * 10_000;
        let engine = MemoryEngine::new(Arc::new(Sink), cap);
        let opts = HistoryOptions {
            size: 1000,
            ttl: Duration::from_secs(3600),
        };
        for i in 0..2000 {
            let ch: Arc<str> = format!("chat:{}", i % 50).into();
            engine
                .publish(&ch, publication(1000), Some(opts))
                .await
                .unwrap();
        }
        let total: usize = engine.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(total <= cap, "total {total} over cap {cap}");
        // Each kept stream holds its newest publications, not its oldest.
        let h = engine
            .history(
                "chat:0",
                HistoryQuery {
                    limit: None,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(h.offset, 40);
        assert!(h
            .publications
            .iter()
            .all(|p| p.offset > 40 - h.publications.len() as u64));
        let accounted: usize = engine
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                assert_eq!(
                    s.bytes,
                    s.streams.values().map(|(st, _)| st.bytes()).sum::<usize>()
                );
                s.bytes
            })
            .sum();
        assert_eq!(accounted, total);
    }
}
