//! Starting the memory engine from its data directory: streams come back with their
//! epochs and offsets, last-seen times with their expiry, users' inbox positions, and
//! the journal takes over.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{meta, MemoryEngine};
use crate::config::PersistenceConfig;
use crate::engine::persistence::journal::Journal;
use crate::engine::persistence::{
    decode_seen, unix_ms, Change, Durability, Keyspace, PersistError, Store,
};
use crate::engine::{EventHandler, HistoryOptions};
use crate::history::{new_epoch, Stream};
use crate::inbox::UserInbox;

impl MemoryEngine {
    /// An engine restored from `store`, writing every later change back to it.
    ///
    /// After a graceful stop, or a crash with [`Durability::Sync`] (where nothing was
    /// visible before it was on disk), streams keep their epochs, so clients recover
    /// with `recovered: true`. After a crash with [`Durability::Flush`], publications
    /// seen by clients may be missing: streams continue in new epochs, so a client's
    /// old position is refused rather than silently skipping what was lost.
    ///
    /// # Errors
    /// [`PersistError`] when the store can not be read or the journal not started.
    pub fn persistent(
        handler: Arc<dyn EventHandler>,
        history_max_bytes: usize,
        mut store: Box<dyn Store>,
        config: &PersistenceConfig,
    ) -> Result<Self, PersistError> {
        let mut engine = Self::new(handler, history_max_bytes);
        let now_ms = unix_ms();
        let now = Instant::now();
        let mut snapshot = store.load(now_ms)?;
        let renew = !snapshot.clean && config.durability == Durability::Flush;
        let mut changes = Vec::new();
        let (mut streams, mut publications) = (0usize, 0usize);
        for stored in std::mem::take(&mut snapshot.streams) {
            let opts = HistoryOptions {
                size: stored.meta.size.max(1),
                ttl: Duration::from_millis(stored.meta.ttl_ms),
            };
            publications += stored.publications.len();
            let items = stored
                .publications
                .into_iter()
                .map(|(p, expires_ms)| {
                    (
                        p,
                        now + Duration::from_millis(expires_ms.saturating_sub(now_ms)),
                    )
                })
                .collect();
            let epoch = if renew {
                new_epoch().into()
            } else {
                stored.meta.epoch
            };
            let stream = Stream::restore(epoch, stored.meta.top, items, now);
            if renew {
                changes.push(Change::Stream {
                    channel: stored.channel.clone(),
                    meta: meta(&stream, opts),
                });
            }
            let mut shard = engine.shard(&stored.channel);
            shard.bytes += stream.bytes();
            shard.streams.insert(stored.channel, (stream, opts));
            streams += 1;
        }
        // The memory cap may be lower than when the data was written.
        for shard in engine.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for channel in shard.enforce(engine.shard_budget, true) {
                if let Some((stream, opts)) = shard.streams.get(&channel) {
                    let meta = meta(stream, *opts);
                    changes.push(Change::Stream { channel, meta });
                }
            }
        }
        {
            let seen = engine.seen.get_mut().unwrap_or_else(|e| e.into_inner());
            for (user, value) in snapshot.records(Keyspace::Seen) {
                let record = decode_seen(&value).filter(|(_, expires)| *expires > now_ms);
                match (std::str::from_utf8(&user), record) {
                    (Ok(user), Some(record)) => {
                        seen.insert(Arc::from(user), record);
                    }
                    _ => changes.push(Change::Delete {
                        space: Keyspace::Seen,
                        key: user.into(),
                    }),
                }
            }
        }
        let mut inboxes = std::collections::BTreeMap::new();
        for (user, value) in snapshot.records(Keyspace::Inbox) {
            let record = serde_json::from_slice::<UserInbox>(&value)
                .ok()
                .filter(|inbox| inbox.expires_at_ms > now_ms);
            match (String::from_utf8(user), record) {
                (Ok(user), Some(record)) => {
                    inboxes.insert(user, record);
                }
                (Ok(user), None) => changes.push(Change::Delete {
                    space: Keyspace::Inbox,
                    key: user.into_bytes().into(),
                }),
                (Err(e), _) => changes.push(Change::Delete {
                    space: Keyspace::Inbox,
                    key: e.into_bytes().into(),
                }),
            }
        }
        // Every channel with a read position goes in the readers index: only
        // `read_receipts` channels are ever asked for theirs.
        engine.inbox.import(inboxes, |_| true);
        let journal = Journal::start(store, config)?;
        for change in changes {
            journal.record(change);
        }
        engine.journal = Some(journal);
        tracing::info!(
            dir = %config.dir.display(),
            streams,
            publications,
            durability = ?config.durability,
            "persistence: state restored"
        );
        if renew {
            tracing::warn!(
                streams,
                "persistence: the last run did not stop gracefully and durability is flush: \
                 streams continue in new epochs (clients reload instead of recovering)"
            );
        }
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use serde_json::value::RawValue;
    use switchboard_protocol::Publication;

    use super::*;
    use crate::engine::persistence::datafile::DataFile;
    use crate::engine::persistence::{Snapshot, StreamMeta};
    use crate::engine::{Engine, HistoryQuery};
    use crate::event::EventKind;

    /// Records the offsets delivered, in order.
    #[derive(Default)]
    struct Delivered(Mutex<Vec<u64>>);

    impl EventHandler for Delivered {
        fn on_event(&self, _: &Arc<str>, kind: EventKind) {
            if let EventKind::Publication(p) = kind {
                self.0.lock().unwrap().push(p.offset);
            }
        }
    }

    fn publication(text: &str) -> Publication {
        Publication {
            data: Arc::from(RawValue::from_string(format!("\"{text}\"")).unwrap()),
            info: None,
            offset: 0,
            tags: None,
            exclude_client: None,
        }
    }

    const OPTS: HistoryOptions = HistoryOptions {
        size: 100,
        ttl: Duration::from_secs(3600),
    };

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sb-memory-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn config(dir: &Path, durability: Durability) -> PersistenceConfig {
        PersistenceConfig {
            dir: dir.to_owned(),
            durability,
            ..PersistenceConfig::default()
        }
    }

    fn open(
        dir: &Path,
        handler: Arc<dyn EventHandler>,
        cap: usize,
        durability: Durability,
    ) -> MemoryEngine {
        let store = DataFile::open(dir).unwrap();
        MemoryEngine::persistent(handler, cap, Box::new(store), &config(dir, durability)).unwrap()
    }

    async fn offsets(engine: &MemoryEngine, channel: &str) -> (String, u64, Vec<u64>) {
        let h = engine
            .history(channel, HistoryQuery::default())
            .await
            .unwrap();
        let offsets = h.publications.iter().map(|p| p.offset).collect();
        (h.epoch, h.offset, offsets)
    }

    #[tokio::test]
    async fn sync_publishes_share_commits_deliver_in_order_and_come_back() {
        let dir = temp_dir("sync");
        let delivered = Arc::new(Delivered::default());
        let engine = Arc::new(open(&dir, delivered.clone(), 1 << 20, Durability::Sync));
        let ch: Arc<str> = "chat:a".into();
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let (engine, ch) = (engine.clone(), ch.clone());
                tokio::spawn(async move {
                    engine
                        .publish(&ch, publication(&n.to_string()), Some(OPTS))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut answered = Vec::new();
        for t in tasks {
            answered.push(t.await.unwrap());
        }
        let mut answered_offsets: Vec<u64> = answered.iter().map(|p| p.offset).collect();
        answered_offsets.sort_unstable();
        assert_eq!(answered_offsets, (1..=50).collect::<Vec<_>>());
        assert_eq!(
            *delivered.0.lock().unwrap(),
            (1..=50).collect::<Vec<_>>(),
            "delivered once each, in offset order"
        );
        let (epoch, top, kept) = offsets(&engine, "chat:a").await;
        assert_eq!((top, kept.len()), (50, 50));
        assert!(answered.iter().all(|p| p.epoch == epoch));
        engine
            .record_seen("ann", 1_234, Duration::from_secs(3600 * 24 * 365 * 100))
            .await
            .unwrap();
        engine.close().await;
        drop(engine);

        let engine = open(
            &dir,
            Arc::new(Delivered::default()),
            1 << 20,
            Durability::Sync,
        );
        assert_eq!(
            offsets(&engine, "chat:a").await,
            (epoch, 50, (1..=50).collect())
        );
        assert_eq!(
            engine
                .last_seen(&["ann".into(), "bob".into()])
                .await
                .unwrap(),
            Some(vec![1_234, 0])
        );
        engine.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn what_the_memory_cap_evicts_leaves_the_disk_too() {
        let dir = temp_dir("cap");
        // A budget of about 10 small publications per shard.
        let cap = super::super::SHARDS * 1_100;
        let engine = open(&dir, Arc::new(Delivered::default()), cap, Durability::Flush);
        for i in 0..200 {
            let ch: Arc<str> = format!("chat:{}", i % 4).into();
            engine
                .publish(&ch, publication("0123456789"), Some(OPTS))
                .await
                .unwrap();
        }
        let mut in_memory = Vec::new();
        for c in 0..4 {
            in_memory.push(offsets(&engine, &format!("chat:{c}")).await.2);
        }
        assert!(
            in_memory.iter().all(|o| o.len() < 50),
            "evicted: {in_memory:?}"
        );
        engine.close().await;
        drop(engine);
        let file = DataFile::open(&dir).unwrap();
        for (c, kept) in in_memory.iter().enumerate() {
            assert_eq!(&file.offsets(&format!("chat:{c}")).unwrap(), kept);
        }
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn after_a_crash_flush_streams_get_new_epochs_and_sync_streams_keep_theirs() {
        for durability in [Durability::Flush, Durability::Sync] {
            let dir = temp_dir(&format!("crash-{durability:?}"));
            {
                // What a crashed run leaves: written, never closed.
                let mut file = DataFile::open(&dir).unwrap();
                file.load(unix_ms()).unwrap();
                let meta = StreamMeta {
                    epoch: "old".into(),
                    top: 1,
                    first: 1,
                    size: 100,
                    ttl_ms: 3_600_000,
                };
                let mut p = publication("kept");
                p.offset = 1;
                file.commit(&[Change::Publication {
                    channel: "chat:c".into(),
                    publication: p,
                    expires_ms: unix_ms() + 3_600_000,
                    meta,
                }])
                .unwrap();
            }
            let engine = open(&dir, Arc::new(Delivered::default()), 1 << 20, durability);
            let (epoch, top, kept) = offsets(&engine, "chat:c").await;
            assert_eq!((top, kept), (1, vec![1]), "{durability:?}");
            match durability {
                Durability::Flush => assert_ne!(epoch, "old"),
                Durability::Sync => assert_eq!(epoch, "old"),
            }
            engine.close().await;
            drop(engine);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A disk that fails every write (a full disk, without needing one).
    struct Full;

    impl Store for Full {
        fn load(&mut self, _: u64) -> Result<Snapshot, PersistError> {
            Ok(Snapshot::default())
        }
        fn commit(&mut self, _: &[Change]) -> Result<(), PersistError> {
            Err(PersistError::Io {
                path: "data".into(),
                reason: "No space left on device".into(),
            })
        }
        fn close(&mut self) -> Result<(), PersistError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_write_refuses_the_publication_delivers_nothing_and_unreadies() {
        let delivered = Arc::new(Delivered::default());
        let config = config(Path::new("unused"), Durability::Sync);
        let engine =
            MemoryEngine::persistent(delivered.clone(), 1 << 20, Box::new(Full), &config).unwrap();
        assert!(engine.ready().await);
        let ch: Arc<str> = "chat:x".into();
        let err = engine
            .publish(&ch, publication("lost"), Some(OPTS))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(delivered.0.lock().unwrap().is_empty());
        assert!(!engine.ready().await);
        assert!(engine
            .publish(&ch, publication("again"), Some(OPTS))
            .await
            .is_err());
        // Channels without history do not touch the disk.
        engine
            .publish(&ch, publication("live"), None)
            .await
            .unwrap();
        assert_eq!(offsets(&engine, "chat:x").await.1, 0, "nothing visible");
    }
}
