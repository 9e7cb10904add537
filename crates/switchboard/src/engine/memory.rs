//! The in-memory engine: one node, no dependencies. History and presence live in
//! sharded maps; events are handed to the hub synchronously, under the channel's
//! shard lock, so concurrent publishers into one channel deliver in offset order.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use switchboard_protocol::{
    ClientInfo, HistoryResult, PresenceStatsResult, Publication, StreamPosition,
};
use tokio::time::Instant;

use super::{Engine, EngineError, EventHandler, HistoryOptions, HistoryQuery};
use crate::event::{ChannelEvent, EventKind};
use crate::history::Stream;
use crate::presence::PresenceSet;

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    streams: HashMap<Arc<str>, (Stream, HistoryOptions)>,
    presence: HashMap<Arc<str>, PresenceSet>,
}

/// The default engine for a single node.
pub struct MemoryEngine {
    handler: Arc<dyn EventHandler>,
    /// Short critical sections only (no await inside), so a std mutex is right.
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl MemoryEngine {
    /// An engine delivering to `handler`.
    pub fn new(handler: Arc<dyn EventHandler>) -> Self {
        Self {
            handler,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
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
                publication.offset = stream.append(publication.clone(), opts, now);
                stream.position()
            }
            None => StreamPosition::default(),
        };
        let event = ChannelEvent::new(channel.clone(), EventKind::Publication(publication));
        self.handler.on_event(&event);
        drop(shard);
        Ok(position)
    }

    async fn publish_join(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError> {
        let _order = self.shard(channel);
        self.handler
            .on_event(&ChannelEvent::new(channel.clone(), EventKind::Join(info)));
        Ok(())
    }

    async fn publish_leave(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError> {
        let _order = self.shard(channel);
        self.handler
            .on_event(&ChannelEvent::new(channel.clone(), EventKind::Leave(info)));
        Ok(())
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        let mut shard = self.shard(channel);
        if let Some(set) = shard.presence.get_mut(channel) {
            set.add(info);
        } else {
            let mut set = PresenceSet::default();
            set.add(info);
            shard.presence.insert(Arc::from(channel), set);
        }
        Ok(())
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
            .map(|s| s.clients().clone())
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
        self.shard(channel).streams.remove(channel);
        Ok(())
    }
}
