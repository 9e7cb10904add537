//! The in-memory engine: one node, no dependencies. History and presence live in
//! sharded maps; events are handed to the hub synchronously, under the channel's
//! shard lock, so concurrent publishers into one channel deliver in offset order.
//!
//! With persistence on, every change of a stream (and every last-seen time) is also
//! queued, under the same lock, to the [`Journal`], whose thread writes it to disk;
//! [`durable`] restores the engine from there at start.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::{
    ClientInfo, HistoryResult, PresenceStatsResult, Publication, StreamPosition,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::persistence::journal::{Admission, Journal};
use super::persistence::{
    encode_seen, millis, unix_ms, Change, Durability, Keyspace, PersistError, StreamMeta,
};
use super::{Engine, EngineError, EventHandler, HistoryOptions, HistoryQuery};
use crate::event::EventKind;
use crate::history::Stream;
use crate::presence::PresenceSet;

mod durable;
mod inbox;

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    streams: HashMap<Arc<str>, (Stream, HistoryOptions)>,
    presence: HashMap<Arc<str>, PresenceSet>,
    /// Bytes held by this shard's streams.
    bytes: usize,
}

impl Shard {
    /// Evicts the shard's oldest publications until it is within `budget`. Returns the
    /// channels that lost publications when `track` (for the journal).
    fn enforce(&mut self, budget: usize, track: bool) -> Vec<Arc<str>> {
        let mut evicted: Vec<Arc<str>> = Vec::new();
        while self.bytes > budget {
            let oldest = self
                .streams
                .iter_mut()
                .filter_map(|(ch, (s, _))| s.oldest_time().map(|t| (t, ch, s)))
                .min_by_key(|(t, _, _)| *t);
            let Some((_, channel, stream)) = oldest else {
                break;
            };
            let before = stream.bytes();
            stream.evict_oldest();
            self.bytes = self.bytes.saturating_sub(before - stream.bytes());
            if track && !evicted.contains(channel) {
                evicted.push(channel.clone());
            }
        }
        evicted
    }

    /// The stream of `channel` with `opts`, created (with a new epoch) if missing.
    fn stream(&mut self, channel: &Arc<str>, opts: HistoryOptions, now: Instant) -> &mut Stream {
        let (stream, stored_opts) = self
            .streams
            .entry(channel.clone())
            .or_insert_with(|| (Stream::new(now), opts));
        *stored_opts = opts;
        stream
    }
}

/// A stream's state as the journal writes it. `top` is the highest offset handed out,
/// visible or not, so a restart never hands one out twice.
fn meta(stream: &Stream, opts: HistoryOptions) -> StreamMeta {
    StreamMeta {
        epoch: stream.epoch().clone(),
        top: stream.reserved(),
        first: stream.first_offset(),
        size: opts.size,
        ttl_ms: millis(opts.ttl),
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
    /// Where changes go to disk, with persistence on.
    journal: Option<Journal>,
    /// Last-seen times (user -> time, expiry; Unix ms), kept with persistence only:
    /// without it the node's own status record is all there is. Short critical
    /// sections only.
    seen: Mutex<HashMap<Arc<str>, (u64, u64)>>,
    /// Users' inbox positions (restored from and written to the data directory with
    /// persistence).
    inbox: Arc<crate::inbox::MemoryInbox>,
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
            journal: None,
            seen: Mutex::new(HashMap::new()),
            inbox: Arc::default(),
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

    /// Queues changes of streams whose publications `enforce` evicted. Called under the
    /// shard lock, so they reach the disk in order.
    fn record_evicted(&self, shard: &Shard, evicted: Vec<Arc<str>>) {
        let Some(journal) = &self.journal else {
            return;
        };
        for channel in evicted {
            if let Some((stream, opts)) = shard.streams.get(&channel) {
                let meta = meta(stream, *opts);
                journal.record(Change::Stream { channel, meta });
            }
        }
    }

    /// Drops idle streams (no publication for their TTL) and forgotten last-seen
    /// times: called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let journal = self.journal.as_ref();
            s.streams.retain(|channel, (stream, opts)| {
                let first = stream.first_offset();
                stream.expire(now);
                let idle = stream.idle(opts.ttl, now);
                if let Some(journal) = journal {
                    if idle {
                        journal.record(Change::Drop {
                            channel: channel.clone(),
                        });
                    } else if stream.first_offset() != first {
                        let meta = meta(stream, *opts);
                        let channel = channel.clone();
                        journal.record(Change::Stream { channel, meta });
                    }
                }
                !idle
            });
            s.bytes = s.streams.values().map(|(st, _)| st.bytes()).sum();
        }
        if let Some(journal) = &self.journal {
            let now_ms = unix_ms();
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|user, (_, expires)| {
                let keep = *expires > now_ms;
                if !keep {
                    journal.record(Change::Delete {
                        space: Keyspace::Seen,
                        key: user.as_bytes().into(),
                    });
                }
                keep
            });
        }
    }

    /// Appends a publication and delivers it at once; with persistence (flush), queues
    /// it for the disk.
    fn append(
        &self,
        channel: &Arc<str>,
        mut publication: Publication,
        opts: HistoryOptions,
        journal: Option<(&Journal, Admission)>,
    ) -> StreamPosition {
        let now = Instant::now();
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let stream = shard.stream(channel, opts, now);
        let before = stream.bytes();
        publication.offset = stream.append(publication.clone(), opts, now);
        let after = stream.bytes();
        let position = stream.position();
        if let Some((journal, admission)) = journal {
            let change = Change::Publication {
                channel: channel.clone(),
                publication: publication.clone(),
                expires_ms: unix_ms().saturating_add(millis(opts.ttl)),
                meta: meta(stream, opts),
            };
            journal.record_admitted(change, admission, None);
        }
        shard.bytes = (shard.bytes + after).saturating_sub(before);
        let evicted = shard.enforce(self.shard_budget, self.journal.is_some());
        self.record_evicted(shard, evicted);
        self.handler
            .on_event(channel, EventKind::Publication(publication));
        drop(guard);
        position
    }

    /// Gives a publication its offset, waits until the journal wrote it (group commit),
    /// then makes it visible and delivers it (with any publication of the channel
    /// written before it): nothing is seen that a crash could take back.
    async fn append_durably(
        &self,
        channel: &Arc<str>,
        mut publication: Publication,
        opts: HistoryOptions,
        journal: &Journal,
        admission: Admission,
    ) -> Result<StreamPosition, EngineError> {
        let (ack, written) = oneshot::channel();
        let position = {
            let now = Instant::now();
            let mut shard = self.shard(channel);
            let stream = shard.stream(channel, opts, now);
            let offset = stream.reserve(publication.clone(), opts, now);
            publication.offset = offset;
            let meta = StreamMeta {
                first: stream.first_offset_with(offset, opts),
                ..meta(stream, opts)
            };
            let change = Change::Publication {
                channel: channel.clone(),
                publication: publication.clone(),
                expires_ms: unix_ms().saturating_add(millis(opts.ttl)),
                meta,
            };
            journal.record_admitted(change, admission, Some(ack));
            StreamPosition {
                offset,
                epoch: stream.epoch().to_string(),
            }
        };
        let result = written
            .await
            .unwrap_or_else(|_| Err(PersistError::Stopped("the journal thread is gone".into())));
        let now = Instant::now();
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        // The same stream, unless `history_remove` dropped it meanwhile.
        let stream = shard
            .streams
            .get_mut(channel)
            .filter(|(s, _)| **s.epoch() == *position.epoch);
        match (result, stream) {
            (Ok(()), Some((stream, opts))) => {
                let before = stream.bytes();
                let handler = &self.handler;
                stream.reveal_through(position.offset, *opts, now, |p| {
                    handler.on_event(channel, EventKind::Publication(p.clone()));
                });
                let after = stream.bytes();
                shard.bytes = (shard.bytes + after).saturating_sub(before);
                let evicted = shard.enforce(self.shard_budget, self.journal.is_some());
                self.record_evicted(shard, evicted);
                Ok(position)
            }
            // The stream is gone: deliver what was written all the same.
            (Ok(()), None) => {
                self.handler
                    .on_event(channel, EventKind::Publication(publication));
                Ok(position)
            }
            (Err(e), stream) => {
                if let Some((stream, _)) = stream {
                    stream.discard(position.offset);
                }
                Err(unavailable(&e))
            }
        }
    }
}

fn unavailable(e: &PersistError) -> EngineError {
    EngineError::Unavailable(format!("persistence: {e}"))
}

#[async_trait]
impl Engine for MemoryEngine {
    async fn publish(
        &self,
        channel: &Arc<str>,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, EngineError> {
        let Some(opts) = history else {
            let _order = self.shard(channel);
            self.handler
                .on_event(channel, EventKind::Publication(publication));
            return Ok(StreamPosition::default());
        };
        let Some(journal) = &self.journal else {
            return Ok(self.append(channel, publication, opts, None));
        };
        let admission = journal.admit().await.map_err(|e| unavailable(&e))?;
        match journal.durability() {
            Durability::Flush => {
                Ok(self.append(channel, publication, opts, Some((journal, admission))))
            }
            Durability::Sync => {
                self.append_durably(channel, publication, opts, journal, admission)
                    .await
            }
        }
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
        if let Some((stream, opts)) = shard.streams.get_mut(channel) {
            let first = stream.first_offset();
            let result = stream.read(&query, now);
            // Reading expired some: the disk forgets them too.
            if let Some(journal) = self
                .journal
                .as_ref()
                .filter(|_| stream.first_offset() != first)
            {
                let meta = meta(stream, *opts);
                journal.record(Change::Stream {
                    channel: Arc::from(channel),
                    meta,
                });
            }
            return Ok(result);
        }
        match query.ensure {
            Some(opts) => {
                let mut stream = Stream::new(now);
                let result = stream.read(&query, now);
                let channel: Arc<str> = Arc::from(channel);
                if let Some(journal) = &self.journal {
                    let meta = meta(&stream, opts);
                    journal.record(Change::Stream {
                        channel: channel.clone(),
                        meta,
                    });
                }
                shard.streams.insert(channel, (stream, opts));
                Ok(result)
            }
            None => Ok(HistoryResult::default()),
        }
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let mut shard = self.shard(channel);
        if let Some((channel, (stream, _))) = shard.streams.remove_entry(channel) {
            shard.bytes = shard.bytes.saturating_sub(stream.bytes());
            if let Some(journal) = &self.journal {
                journal.record(Change::Drop { channel });
            }
        }
        Ok(())
    }

    async fn record_seen(&self, user: &str, at_ms: u64, keep: Duration) -> Result<(), EngineError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let expires = at_ms.saturating_add(millis(keep));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Nodes report times out of order (a refresh racing a disconnect): the latest wins.
        let (at, expires) = match seen.get_mut(user) {
            Some(entry) => {
                if at_ms >= entry.0 {
                    *entry = (at_ms, expires);
                }
                *entry
            }
            None => {
                seen.insert(Arc::from(user), (at_ms, expires));
                (at_ms, expires)
            }
        };
        journal.record(Change::Put {
            space: Keyspace::Seen,
            key: user.as_bytes().into(),
            value: encode_seen(at, expires),
        });
        Ok(())
    }

    async fn last_seen(&self, users: &[String]) -> Result<Option<Vec<u64>>, EngineError> {
        if self.journal.is_none() {
            return Ok(None);
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(
            users
                .iter()
                .map(|u| seen.get(u.as_str()).map_or(0, |(at, _)| *at))
                .collect(),
        ))
    }

    fn inbox(self: Arc<Self>) -> Arc<dyn crate::inbox::InboxStore> {
        if self.journal.is_none() {
            return self.inbox.clone();
        }
        Arc::new(inbox::DurableInbox {
            inner: self.inbox.clone(),
            engine: self,
        })
    }

    async fn close(&self) {
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.close().await {
                tracing::error!(error = %e, "persistence: closing the data file failed");
            }
        }
    }

    async fn ready(&self) -> bool {
        self.journal.as_ref().is_none_or(|j| j.stopped().is_none())
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
            exclude_client: None,
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
