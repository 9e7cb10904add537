//! One conformance suite for every engine: the same tests run against the memory engine
//! and the Redis engine, on a real redis-server and on a real 3-master Redis Cluster
//! (both started by the fixture).

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard::auth::{now_secs, TokenStamp};
use switchboard::config::RedisConfig;
use switchboard::engine::memory::MemoryEngine;
use switchboard::engine::redis::RedisEngine;
use switchboard::engine::{Engine, EventHandler, HistoryOptions, HistoryQuery};
use switchboard::event::EventKind;
use switchboard::typing::{Expiry, Signal};
use switchboard_protocol::{ClientInfo, Publication, StreamPosition};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::redis::{Redis, Topology};
use common::TIMEOUT;

const LEASE: Duration = Duration::from_millis(500);

/// What the engine delivered: channel, and `pub:<offset>` (`pub:<offset> skips
/// <client>`), `join:<client>` or `leave:<client>`.
struct Recorder(mpsc::UnboundedSender<(String, String)>);

impl EventHandler for Recorder {
    fn on_event(&self, channel: &Arc<str>, kind: EventKind) {
        let what = match kind {
            EventKind::Publication(p) => match &p.exclude_client {
                Some(client) => format!("pub:{} skips {client}", p.offset),
                None => format!("pub:{}", p.offset),
            },
            EventKind::Join(i) => format!("join:{}", i.client),
            EventKind::Leave(i) => format!("leave:{}", i.client),
        };
        let _ = self.0.send((channel.to_string(), what));
    }
}

struct Fixture {
    engine: Arc<dyn Engine>,
    events: mpsc::UnboundedReceiver<(String, String)>,
    stop: CancellationToken,
    _redis: Option<Redis>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Redis(Topology),
}

async fn fixture(kind: Kind) -> Option<Fixture> {
    let (tx, events) = mpsc::unbounded_channel();
    let handler: Arc<dyn EventHandler> = Arc::new(Recorder(tx));
    let stop = CancellationToken::new();
    let (engine, redis): (Arc<dyn Engine>, _) = match kind {
        Kind::Memory => (
            Arc::new(MemoryEngine::new(handler, 1 << 20).with_presence_lease(LEASE)),
            None,
        ),
        Kind::Redis(topology) => {
            let redis = Redis::start(topology)?;
            let mut config = RedisConfig::default();
            redis.configure(&mut config);
            let engine =
                RedisEngine::connect(handler, &config, LEASE, stop.clone()).expect("redis engine");
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while !engine.ready().await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "redis engine not ready"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (engine as Arc<dyn Engine>, Some(redis))
        }
    };
    Some(Fixture {
        engine,
        events,
        stop,
        _redis: redis,
    })
}

impl Fixture {
    fn redis(&self) -> &Redis {
        self._redis.as_ref().expect("a Redis fixture")
    }

    async fn next_event(&mut self) -> (String, String) {
        tokio::time::timeout(TIMEOUT, self.events.recv())
            .await
            .expect("event timeout")
            .expect("events open")
    }
}

fn publication(n: u32) -> Publication {
    Publication {
        data: Arc::from(RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap()),
        info: None,
        offset: 0,
        tags: None,
        exclude_client: None,
    }
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: None,
        chan_info: None,
    }
}

const OPTS: HistoryOptions = HistoryOptions {
    size: 3,
    ttl: Duration::from_secs(60),
};

fn offsets(h: &switchboard_protocol::HistoryResult) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

/// Runs each test against every engine.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                if let Some(f) = super::fixture(super::Kind::Memory).await {
                    super::$name(f).await;
                }
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                let kind = super::Kind::Redis(super::Topology::Standalone);
                if let Some(f) = super::fixture(kind).await {
                    super::$name(f).await;
                }
            })*
        }
        mod redis_cluster {
            $(#[tokio::test]
            async fn $name() {
                let kind = super::Kind::Redis(super::Topology::Cluster);
                if let Some(f) = super::fixture(kind).await {
                    super::$name(f).await;
                }
            })*
        }
    };
}

conformance!(
    publications_get_offsets_and_arrive_in_order,
    history_windows_and_epochs,
    ensure_fixes_the_epoch_before_the_first_publication,
    presence_counts_users_once_and_expires_unrefreshed_entries,
    joins_and_leaves_reach_subscribers,
    revocation_records_refuse_until_they_expire,
    typing_is_throttled_and_ended_once,
    whom_a_publication_skips_travels_with_it_into_history,
);

async fn publications_get_offsets_and_arrive_in_order(mut f: Fixture) {
    let ch: Arc<str> = "chat:order".into();
    f.engine.subscribe(&ch).await.unwrap();
    let mut epoch = None;
    for i in 1..=10u32 {
        let pos = f
            .engine
            .publish(&ch, publication(i), Some(OPTS))
            .await
            .unwrap();
        assert_eq!(pos.offset, u64::from(i));
        assert_eq!(*epoch.get_or_insert(pos.epoch.clone()), pos.epoch);
    }
    // Without history: delivered, offset 0.
    let pos = f.engine.publish(&ch, publication(0), None).await.unwrap();
    assert_eq!(pos, StreamPosition::default());
    for i in 1..=10u64 {
        assert_eq!(
            f.next_event().await,
            ("chat:order".into(), format!("pub:{i}"))
        );
    }
    assert_eq!(f.next_event().await, ("chat:order".into(), "pub:0".into()));
}

/// Whom a publication skips reaches every node's subscribers and stays in history, so
/// a replay skips it too (it is never in the tags, which clients see).
async fn whom_a_publication_skips_travels_with_it_into_history(mut f: Fixture) {
    let ch: Arc<str> = "chat:skip".into();
    f.engine.subscribe(&ch).await.unwrap();
    let skipping = Publication {
        exclude_client: Some("c1".into()),
        ..publication(1)
    };
    f.engine.publish(&ch, skipping, Some(OPTS)).await.unwrap();
    assert_eq!(
        f.next_event().await,
        ("chat:skip".into(), "pub:1 skips c1".into())
    );
    let h = f
        .engine
        .history(&ch, HistoryQuery::default())
        .await
        .unwrap();
    let p = &h.publications[0];
    assert_eq!(
        (p.exclude_client.as_deref(), p.tags.is_none()),
        (Some("c1"), true)
    );
}

async fn history_windows_and_epochs(f: Fixture) {
    let ch: Arc<str> = "chat:hist".into();
    for i in 1..=5 {
        f.engine
            .publish(&ch, publication(i), Some(OPTS))
            .await
            .unwrap();
    }
    let all = f
        .engine
        .history(&ch, HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!((offsets(&all), all.offset), (vec![3, 4, 5], 5));
    assert_eq!(all.publications[0].data.get(), r#"{"n":3}"#);
    let epoch = all.epoch.clone();
    let since = |offset| HistoryQuery {
        since: Some(StreamPosition {
            offset,
            epoch: epoch.clone(),
        }),
        ..Default::default()
    };
    let h = f.engine.history(&ch, since(3)).await.unwrap();
    assert_eq!(offsets(&h), vec![4, 5]);
    let h = f.engine.history(&ch, since(5)).await.unwrap();
    assert!(h.publications.is_empty());
    let rev = HistoryQuery {
        limit: Some(2),
        reverse: true,
        ..Default::default()
    };
    assert_eq!(
        offsets(&f.engine.history(&ch, rev).await.unwrap()),
        vec![5, 4]
    );
    let position_only = HistoryQuery {
        limit: Some(0),
        ..Default::default()
    };
    let h = f.engine.history(&ch, position_only).await.unwrap();
    assert_eq!((h.publications.len(), h.offset), (0, 5));

    f.engine.remove_history(&ch).await.unwrap();
    let ensure = HistoryQuery {
        limit: Some(0),
        ensure: Some(OPTS),
        ..Default::default()
    };
    let h = f.engine.history(&ch, ensure).await.unwrap();
    assert_ne!(h.epoch, epoch, "a removed stream starts a new epoch");
    assert_eq!(h.offset, 0);
}

async fn ensure_fixes_the_epoch_before_the_first_publication(f: Fixture) {
    let ch: Arc<str> = "chat:ensure".into();
    let none = f
        .engine
        .history(&ch, HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!((none.epoch.as_str(), none.offset), ("", 0));
    let ensure = HistoryQuery {
        limit: Some(0),
        ensure: Some(OPTS),
        ..Default::default()
    };
    let h = f.engine.history(&ch, ensure.clone()).await.unwrap();
    assert!(!h.epoch.is_empty());
    let again = f.engine.history(&ch, ensure).await.unwrap();
    assert_eq!(again.epoch, h.epoch);
    let pos = f
        .engine
        .publish(&ch, publication(1), Some(OPTS))
        .await
        .unwrap();
    assert_eq!((pos.epoch, pos.offset), (h.epoch, 1));
}

async fn presence_counts_users_once_and_expires_unrefreshed_entries(f: Fixture) {
    let ch: Arc<str> = "chat:presence".into();
    let e = &f.engine;
    assert!(e.add_presence(&ch, info("ann", "c1")).await.unwrap());
    assert!(!e.add_presence(&ch, info("ann", "c2")).await.unwrap());
    assert!(e.add_presence(&ch, info("bob", "c3")).await.unwrap());
    assert!(!e.add_presence(&ch, info("ann", "c1")).await.unwrap());
    let stats = e.presence_stats(&ch).await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    let mut clients: Vec<_> = e.presence(&ch).await.unwrap().into_keys().collect();
    clients.sort();
    assert_eq!(
        clients,
        vec!["c1".into(), "c2".into(), "c3".into()] as Vec<Arc<str>>
    );
    assert!(!e.remove_presence(&ch, "c1", "ann").await.unwrap());
    assert!(!e.remove_presence(&ch, "c1", "ann").await.unwrap(), "twice");

    // c3's node keeps refreshing; c2's node died. Poll (the lease runs on the store's
    // clock) until the sweep reports c2, refreshing c3 meanwhile.
    let refreshed = [(ch.clone(), info("bob", "c3"))];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let gone = loop {
        e.refresh_presence(&refreshed).await.unwrap();
        let gone = e.expire_presence(&ch).await.unwrap();
        if !gone.is_empty() {
            break gone;
        }
        assert!(tokio::time::Instant::now() < deadline, "c2 never expired");
        tokio::time::sleep(LEASE / 5).await;
    };
    assert_eq!(gone.len(), 1);
    assert_eq!(
        (&*gone[0].0.client, gone[0].1),
        ("c2", true),
        "ann's last client"
    );
    assert!(
        e.expire_presence(&ch).await.unwrap().is_empty(),
        "an expired entry is reported once"
    );
    let left: Vec<_> = e.presence(&ch).await.unwrap().into_keys().collect();
    assert_eq!(left, vec![Arc::<str>::from("c3")]);
    let stats = e.presence_stats(&ch).await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
}

async fn joins_and_leaves_reach_subscribers(mut f: Fixture) {
    let ch: Arc<str> = "chat:jl".into();
    f.engine.subscribe(&ch).await.unwrap();
    f.engine.publish_join(&ch, info("ann", "c1")).await.unwrap();
    f.engine
        .publish_leave(&ch, info("ann", "c1"))
        .await
        .unwrap();
    assert_eq!(f.next_event().await, ("chat:jl".into(), "join:c1".into()));
    assert_eq!(f.next_event().await, ("chat:jl".into(), "leave:c1".into()));
}

// ---------------------------------------------------------------------------------------
// Redis only: a user's connections counted per node, across node leases.

#[tokio::test]
async fn redis_connection_counts_follow_node_leases() {
    connection_counts_follow_node_leases(Topology::Standalone).await;
}

#[tokio::test]
async fn redis_cluster_connection_counts_follow_node_leases() {
    connection_counts_follow_node_leases(Topology::Cluster).await;
}

async fn connection_counts_follow_node_leases(topology: Topology) {
    let Some(f) = fixture(Kind::Redis(topology)).await else {
        return;
    };
    let e = &f.engine;
    let ann = ["ann".to_owned()];
    e.heartbeat("A", "{}".into()).await.unwrap();
    e.heartbeat("B", "{}".into()).await.unwrap();
    assert!(e.count_connection("ann", "A", 2).await.unwrap());
    assert!(e.count_connection("ann", "B", 2).await.unwrap());
    assert!(!e.count_connection("ann", "A", 2).await.unwrap(), "over 2");
    assert_eq!(e.connection_counts(&ann).await.unwrap(), Some(vec![2]));

    // B dies (no more heartbeats); A lives on. Once B's lease ran out its connection
    // no longer counts, and A may take the room.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while e.connection_counts(&ann).await.unwrap() != Some(vec![1]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's count never expired"
        );
        e.heartbeat("A", "{}".into()).await.unwrap();
        tokio::time::sleep(LEASE / 5).await;
    }
    // B's count was last changed just after its last heartbeat: let a little more time
    // pass (A staying alive), so it is stale for sure.
    for _ in 0..2 {
        tokio::time::sleep(LEASE / 4).await;
        e.heartbeat("A", "{}".into()).await.unwrap();
    }
    // C started after the live nodes were read (no heartbeat yet): its fresh count is
    // kept by A's next count, while B's stale one is dropped.
    assert!(e.count_connection("ann", "C", 0).await.unwrap());
    assert!(e.count_connection("ann", "A", 3).await.unwrap());
    let fields = f.redis().hash("switchboard:{u:ann}:connections").await;
    assert!(!fields.contains_key("n:B"), "{fields:?}");
    assert_eq!(
        fields.get("n:A").map(String::as_str),
        Some("2"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get("n:C").map(String::as_str),
        Some("1"),
        "{fields:?}"
    );

    e.uncount_connection("ann", "A").await.unwrap();
    e.uncount_connection("ann", "C").await.unwrap();
    assert_eq!(e.connection_counts(&ann).await.unwrap(), Some(vec![1]));
}

// ---------------------------------------------------------------------------------------
// Redis only: an engine set up while Redis is down.

#[tokio::test]
async fn redis_engine_started_before_redis_becomes_ready() {
    started_before_redis(Topology::Standalone).await;
}

#[tokio::test]
async fn redis_cluster_engine_started_before_the_cluster_becomes_ready() {
    started_before_redis(Topology::Cluster).await;
}

async fn started_before_redis(topology: Topology) {
    let Some(mut redis) = Redis::start(topology) else {
        return;
    };
    redis.kill();
    let (tx, mut events) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut config = RedisConfig::default();
    redis.configure(&mut config);
    let engine = RedisEngine::connect(Arc::new(Recorder(tx)), &config, LEASE, stop)
        .expect("set up without Redis");
    assert!(!engine.ready().await);
    let ch: Arc<str> = "chat:late".into();
    assert!(engine
        .publish(&ch, publication(1), Some(OPTS))
        .await
        .is_err());

    redis.restart();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !engine.ready().await {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.subscribe(&ch).await.unwrap();
    let pos = engine
        .publish(&ch, publication(1), Some(OPTS))
        .await
        .unwrap();
    assert_eq!(pos.offset, 1);
    let event = tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("event");
    assert_eq!(event, Some(("chat:late".to_owned(), "pub:1".to_owned())));
}

fn stamp(id: Option<&str>, iat: Option<u64>) -> TokenStamp {
    TokenStamp {
        id: id.map(str::to_owned),
        issued_at: iat,
    }
}

async fn revocation_records_refuse_until_they_expire(f: Fixture) {
    let store = f.engine.clone().revocations();
    let later = now_secs() + 60;
    let revoked = |user: &'static str, channel: Option<&'static str>, t: TokenStamp| {
        let store = store.clone();
        async move { store.is_revoked(user, channel, &t).await.unwrap() }
    };
    store.revoke_token("t1", later).await.unwrap();
    assert!(revoked("u", None, stamp(Some("t1"), None)).await);
    assert!(revoked("v", Some("c:1"), stamp(Some("t1"), Some(5))).await);
    assert!(!revoked("u", None, stamp(Some("t2"), None)).await);
    // An expired record refuses nothing; a later revocation extends, never shortens.
    store.revoke_token("old", now_secs() - 1).await.unwrap();
    assert!(!revoked("u", None, stamp(Some("old"), None)).await);
    store.revoke_token("t1", now_secs() - 1).await.unwrap();
    assert!(revoked("u", None, stamp(Some("t1"), None)).await);

    store
        .invalidate_user_tokens("u", None, 100, later)
        .await
        .unwrap();
    // A smaller cut-off does not lower it.
    store
        .invalidate_user_tokens("u", None, 50, later)
        .await
        .unwrap();
    assert!(revoked("u", None, stamp(None, Some(99))).await);
    assert!(!revoked("u", None, stamp(None, Some(100))).await);
    assert!(revoked("u", None, stamp(None, None)).await);
    assert!(revoked("u", Some("c:1"), stamp(None, Some(5))).await);
    assert!(!revoked("v", None, stamp(None, Some(1))).await);

    store
        .invalidate_user_tokens("w", Some("c:1"), 100, later)
        .await
        .unwrap();
    assert!(revoked("w", Some("c:1"), stamp(None, Some(5))).await);
    assert!(!revoked("w", Some("c:2"), stamp(None, Some(5))).await);
    assert!(!revoked("w", None, stamp(None, Some(5))).await);
}

async fn typing_is_throttled_and_ended_once(f: Fixture) {
    let typing = f.engine.clone().typing();
    let ch: Arc<str> = "typing:1".into();
    let ann = info("ann", "c1");
    let user = ann.user.clone();
    let (interval, timeout) = (Duration::from_secs(60), Duration::from_millis(300));
    let Signal::Forward(deadline) = typing
        .signal(&ch, &ann, false, interval, timeout)
        .await
        .unwrap()
    else {
        panic!("the first signal is forwarded");
    };
    // Another device of the same user, within the interval.
    let other = info("ann", "c2");
    assert_eq!(
        typing
            .signal(&ch, &other, false, interval, timeout)
            .await
            .unwrap(),
        Signal::Throttled
    );
    assert!(matches!(
        typing
            .signal(&ch, &info("bob", "c3"), false, interval, timeout)
            .await
            .unwrap(),
        Signal::Forward(_)
    ));
    // Check at the deadline, and again as long as it was extended, as a node does.
    let mut at = deadline;
    let ended = loop {
        tokio::time::sleep_until(at).await;
        match typing.expire(&ch, &user).await.unwrap() {
            Expiry::Ended(info) => break info,
            Expiry::Later(later) => at = later,
            Expiry::Gone => panic!("ended by nobody"),
        }
    };
    assert_eq!(ended.user, ann.user);
    assert!(matches!(
        typing.expire(&ch, &user).await.unwrap(),
        Expiry::Gone
    ));
    // An explicit stop, and a stop at unsubscribe.
    assert!(matches!(
        typing
            .signal(&ch, &ann, false, interval, timeout)
            .await
            .unwrap(),
        Signal::Forward(_)
    ));
    assert_eq!(
        typing
            .signal(&ch, &ann, true, interval, timeout)
            .await
            .unwrap(),
        Signal::Stop
    );
    assert!(typing.stop("typing:1", "ann").await.unwrap().is_none());
    assert_eq!(
        typing
            .stop("typing:1", "bob")
            .await
            .unwrap()
            .map(|i| i.client),
        Some("c3".into())
    );
}
