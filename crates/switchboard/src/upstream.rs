//! This node's upstream subscriptions: a channel is subscribed in the engine exactly
//! while it has local subscribers in the hub.
//!
//! The hub change and the engine call of one channel happen under one per-channel
//! (sharded) async lock, so a last unsubscribe racing a first subscribe can never leave
//! the node unsubscribed upstream while a session still listens locally. Only those
//! take the lock: a subscribe to a channel already subscribed upstream, or an
//! unsubscribe that leaves others, changes the hub alone (in one step under the hub's
//! own lock). Otherwise a burst of subscribes to one channel (10,000 clients
//! reconnecting after a deploy) would queue on the lock one task wake-up at a time,
//! each with its command's state alive.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::delivery::Delivery;
use crate::engine::{Engine, EngineError};
use crate::hooks::{Hooks, Lifecycle};
use crate::hub::Hub;
use crate::session::Session;

const SHARDS: usize = 64;

/// Serializes each channel's subscription changes.
pub(crate) struct Upstream {
    /// Held across the engine call on purpose (an async mutex): the hub change and the
    /// engine's subscription must not be reordered against another session's.
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Told of a channel's first and last local subscriber under the channel's lock,
    /// so its reports of one channel are never reordered.
    hooks: Arc<dyn Hooks>,
}

impl Upstream {
    pub(crate) fn new(hooks: Arc<dyn Hooks>) -> Self {
        Self {
            locks: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            hooks,
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
        delivery: Option<Arc<Delivery>>,
    ) -> Result<(), EngineError> {
        if hub.join_occupied(channel, session, delivery.clone()) {
            return Ok(());
        }
        let _order = self.lock(channel).lock().await;
        if hub.subscribe(channel, session, delivery) {
            // A watched channel is subscribed upstream already.
            if !hub.is_watched(channel) {
                if let Err(e) = engine.subscribe(channel).await {
                    hub.unsubscribe(channel, session);
                    return Err(e);
                }
            }
            self.hooks.on_lifecycle(Lifecycle::ChannelOccupied {
                channel: channel.clone(),
            });
        }
        hub.set_upstream(channel);
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
        if hub.leave_occupied(channel, session) {
            return;
        }
        let _order = self.lock(channel).lock().await;
        if hub.unsubscribe(channel, session) {
            if !hub.is_watched(channel) {
                if let Err(e) = engine.unsubscribe(channel).await {
                    tracing::warn!(%channel, error = %e, "engine unsubscribe failed");
                }
            }
            self.hooks.on_lifecycle(Lifecycle::ChannelVacated {
                channel: Arc::from(channel),
            });
        }
    }

    /// Adds a watcher (an operator console) to the channel, subscribing the node
    /// upstream if nobody here listened yet. Watchers are no subscribers: the channel's
    /// hooks (occupied, vacated) never hear of them.
    ///
    /// # Cancel safety
    /// Not cancel-safe, as [`Upstream::subscribe`].
    pub(crate) async fn watch(
        &self,
        hub: &Hub,
        engine: &dyn Engine,
        channel: &Arc<str>,
        session: &Arc<Session>,
    ) -> Result<(), EngineError> {
        let _order = self.lock(channel).lock().await;
        if hub.watch(channel, session) && !hub.has_subscribers(channel) {
            if let Err(e) = engine.subscribe(channel).await {
                hub.unwatch(channel, session);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes a watcher, unsubscribing the node upstream when nobody here listens any
    /// more.
    pub(crate) async fn unwatch(
        &self,
        hub: &Hub,
        engine: &dyn Engine,
        channel: &str,
        session: &Session,
    ) {
        let _order = self.lock(channel).lock().await;
        if hub.unwatch(channel, session) && !hub.has_subscribers(channel) {
            if let Err(e) = engine.unsubscribe(channel).await {
                tracing::warn!(%channel, error = %e, "engine unsubscribe failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use async_trait::async_trait;
    use switchboard_protocol::{
        ClientInfo, HistoryResult, PresenceStatsResult, Publication, StreamPosition,
    };

    use super::*;
    use crate::engine::{HistoryOptions, HistoryQuery};
    use crate::event::{Codec, Frame};
    use crate::node::Node;

    /// Tracks what the node is subscribed to upstream; unsubscribing takes a while,
    /// as a Redis round trip does, which opens the window a racing subscribe hits.
    #[derive(Default)]
    struct SlowUpstream {
        subscribed: std::sync::Mutex<HashSet<String>>,
        /// Whether subscribing takes a while too.
        slow_subscribe: bool,
    }

    #[async_trait]
    impl Engine for SlowUpstream {
        async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
            if self.slow_subscribe {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.subscribed.lock().unwrap().insert(channel.to_owned());
            Ok(())
        }
        async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.subscribed.lock().unwrap().remove(channel);
            Ok(())
        }
        async fn publish(
            &self,
            _: &Arc<str>,
            _: Publication,
            _: Option<HistoryOptions>,
        ) -> Result<StreamPosition, EngineError> {
            Ok(StreamPosition::default())
        }
        async fn publish_join(&self, _: &Arc<str>, _: ClientInfo) -> Result<(), EngineError> {
            Ok(())
        }
        async fn publish_leave(&self, _: &Arc<str>, _: ClientInfo) -> Result<(), EngineError> {
            Ok(())
        }
        async fn add_presence(&self, _: &str, _: ClientInfo) -> Result<bool, EngineError> {
            Ok(true)
        }
        async fn expire_presence(&self, _: &str) -> Result<Vec<(ClientInfo, bool)>, EngineError> {
            Ok(Vec::new())
        }
        async fn remove_presence(&self, _: &str, _: &str, _: &str) -> Result<bool, EngineError> {
            Ok(true)
        }
        async fn presence(&self, _: &str) -> Result<HashMap<Arc<str>, ClientInfo>, EngineError> {
            Ok(HashMap::new())
        }
        async fn presence_stats(&self, _: &str) -> Result<PresenceStatsResult, EngineError> {
            Ok(PresenceStatsResult::default())
        }
        async fn history(&self, _: &str, _: HistoryQuery) -> Result<HistoryResult, EngineError> {
            Ok(HistoryResult::default())
        }
        async fn remove_history(&self, _: &str) -> Result<(), EngineError> {
            Ok(())
        }
    }

    /// A node on `engine`, a hub and its upstream, and the channel the tests use.
    fn setup(engine: SlowUpstream) -> (Arc<SlowUpstream>, Arc<Node>, Hub, Upstream, Arc<str>) {
        let engine = Arc::new(engine);
        let e = engine.clone();
        let node = Node::with_engine(crate::Config::default(), move |_, _| Ok(e)).unwrap();
        let upstream = Upstream::new(Arc::new(crate::hooks::NoHooks));
        (engine, node, Hub::default(), upstream, "news:1".into())
    }

    fn codec() -> &'static Codec {
        static CODEC: std::sync::LazyLock<Codec> =
            std::sync::LazyLock::new(|| Codec::register("test", |_, _| Frame::from_static("")));
        &CODEC
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_subscribe_racing_the_last_unsubscribe_stays_subscribed_upstream() {
        let (engine, node, hub, upstream, channel) = setup(SlowUpstream::default());
        let (leaver, joiner) = (
            Session::new(node.clone(), codec()),
            Session::new(node.clone(), codec()),
        );
        upstream
            .subscribe(&hub, &*engine, &channel, &leaver, None)
            .await
            .unwrap();
        // The leaver's unsubscribe is on its way to the engine when the joiner comes.
        let leave = upstream.unsubscribe(&hub, &*engine, &channel, &leaver);
        let join = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            upstream
                .subscribe(&hub, &*engine, &channel, &joiner, None)
                .await
        };
        let ((), joined) = tokio::join!(leave, join);
        joined.unwrap();
        assert_eq!(hub.channels().len(), 1, "the joiner listens locally");
        assert!(
            engine.subscribed.lock().unwrap().contains("news:1"),
            "so the node must still be subscribed upstream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_keeps_the_channel_upstream_and_is_never_counted() {
        let (engine, node, hub, upstream, channel) = setup(SlowUpstream::default());
        let upstream_has = |c: &str| engine.subscribed.lock().unwrap().contains(c);
        let (console, reader) = (
            Session::new(node.clone(), codec()),
            Session::new(node.clone(), codec()),
        );
        upstream
            .watch(&hub, &*engine, &channel, &console)
            .await
            .unwrap();
        assert!(upstream_has("news:1"), "a watcher alone listens upstream");
        assert!(hub.channels().is_empty(), "but is no subscriber");
        upstream
            .subscribe(&hub, &*engine, &channel, &reader, None)
            .await
            .unwrap();
        assert_eq!(hub.channels(), vec![(channel.clone(), 1)]);
        upstream
            .unsubscribe(&hub, &*engine, &channel, &reader)
            .await;
        assert!(upstream_has("news:1"), "still watched");
        upstream.unwatch(&hub, &*engine, &channel, &console).await;
        assert!(!upstream_has("news:1"));
        assert!(hub.watched_channels().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn subscribes_and_unsubscribes_that_change_nothing_upstream_take_no_lock() {
        use futures_util::FutureExt;
        let (engine, node, hub, upstream, channel) = setup(SlowUpstream::default());
        let sessions: Vec<_> = (0..3)
            .map(|_| Session::new(node.clone(), codec()))
            .collect();
        upstream
            .subscribe(&hub, &*engine, &channel, &sessions[0], None)
            .await
            .unwrap();
        // Whatever holds the channel's lock (another channel of its shard, say), a
        // subscriber joining an occupied channel, and one leaving others behind, go on.
        let guard = upstream.lock(&channel).lock().await;
        for s in &sessions[1..] {
            let joined = upstream.subscribe(&hub, &*engine, &channel, s, None);
            assert!(matches!(joined.now_or_never(), Some(Ok(()))));
        }
        assert_eq!(hub.channels(), vec![(channel.clone(), 3)]);
        let left = upstream.unsubscribe(&hub, &*engine, &channel, &sessions[1]);
        assert!(left.now_or_never().is_some());
        // Leaving a channel not subscribed is nothing to wait for either.
        let none = upstream.unsubscribe(&hub, &*engine, &channel, &sessions[1]);
        assert!(none.now_or_never().is_some());
        assert_eq!(hub.channels(), vec![(channel.clone(), 2)]);
        drop(guard);
        // All leave (one of them again): the last one unsubscribes upstream.
        for s in &sessions {
            upstream.unsubscribe(&hub, &*engine, &channel, s).await;
        }
        assert!(hub.channels().is_empty());
        assert!(!engine.subscribed.lock().unwrap().contains("news:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_joins_only_once_the_channel_is_subscribed_upstream() {
        let (engine, node, hub, upstream, channel) = setup(SlowUpstream {
            slow_subscribe: true,
            ..SlowUpstream::default()
        });
        let (first, second) = (
            Session::new(node.clone(), codec()),
            Session::new(node.clone(), codec()),
        );
        let upstream_has = || engine.subscribed.lock().unwrap().contains("news:1");
        let one = upstream.subscribe(&hub, &*engine, &channel, &first, None);
        let two = async {
            // The first one's engine subscribe is under way: the hub lists the channel
            // already, but the second must not be told it is subscribed before it is.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let joined = upstream
                .subscribe(&hub, &*engine, &channel, &second, None)
                .await;
            (joined, upstream_has())
        };
        let (a, (b, subscribed_then)) = tokio::join!(one, two);
        a.unwrap();
        b.unwrap();
        assert!(
            subscribed_then,
            "the second joined before the node was subscribed"
        );
        assert_eq!(hub.channels(), vec![(channel.clone(), 2)]);
    }
}
