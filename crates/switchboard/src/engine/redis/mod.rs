//! The Redis engine: every node on one Redis (and key prefix) is one gateway.
//!
//! Publications are appended to a bounded history and published in one Lua script, so
//! offsets are assigned in publish order; each node holds one pub/sub connection with
//! one upstream subscription per channel (see [`subscriber`]). Presence entries carry
//! leases that their node refreshes, so a dead node's clients expire.
//!
//! Keys of channel `c` under prefix `P` share the hash tag `{c}`: `P:{c}:h` (history
//! list), `P:{c}:m` (epoch `e`, top offset `s`), `P:{c}:p` / `P:{c}:z` / `P:{c}:u`
//! (presence infos, lease deadlines, users' client counts), and the pub/sub channel
//! `P:{c}:c`; users' inbox positions and channels' readers are in [`inbox`]. Every
//! script touches the keys of one hash tag only, so on a Redis Cluster each runs on one
//! shard (see [`connection`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::RedisError;
use switchboard_protocol::{
    ClientInfo, HistoryResult, PresenceStatsResult, Publication, StreamPosition,
};
use tokio_util::sync::CancellationToken;

use super::{Claim, Engine, EngineError, EventHandler, HistoryOptions, HistoryQuery};
use crate::config::RedisConfig;
use crate::history::{new_epoch, window};

mod connection;
mod inbox;
mod revocations;
mod scripts;
mod status;
mod subscriber;
mod typing;

pub use inbox::RedisInbox;
pub use revocations::RedisRevocations;
pub use typing::RedisTyping;

pub(crate) use connection::single_client as client;

use connection::Connection;
use scripts::Scripts;
use subscriber::Subscriber;

/// Key names of one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, channel: &str, kind: char) -> String {
        format!("{}:{{{channel}}}:{kind}", self.prefix)
    }

    /// The pub/sub channel of `channel`.
    pub(crate) fn pubsub(&self, channel: &str) -> String {
        self.key(channel, 'c')
    }

    /// The switchboard channel a pub/sub channel name carries, if it is one of ours.
    pub(crate) fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:c")
    }

    /// A user's connection counts per node. (Named apart from the `conns` hash of
    /// earlier versions, whose fields mean something else.)
    fn connections(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:connections", self.prefix)
    }

    /// The record of a publish `idempotency_key`.
    fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:i:{key}", self.prefix)
    }

    /// The pub/sub channel of commands between nodes.
    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// Node status records and their lease deadlines. Suffixes of more than one letter
    /// never meet a channel's keys (whose suffixes are single letters).
    fn nodes(&self) -> [String; 2] {
        [
            format!("{}:{{nodes}}:status", self.prefix),
            format!("{}:{{nodes}}:lease", self.prefix),
        ]
    }

    fn presence(&self, channel: &str) -> [String; 3] {
        [
            self.key(channel, 'p'),
            self.key(channel, 'z'),
            self.key(channel, 'u'),
        ]
    }
}

/// Engine state shared by several nodes through Redis.
pub struct RedisEngine {
    conn: Connection,
    /// Periodic bulk renewals only (see [`Connection::open_bulk`]).
    bulk: Connection,
    keys: Keys,
    scripts: Scripts,
    subscriber: Arc<Subscriber>,
    lease: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &RedisError) -> EngineError {
    EngineError::Unavailable(e.to_string())
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Unavailable(format!("unexpected data in Redis: {what}"))
}

impl RedisEngine {
    /// Sets up the engine and starts its pub/sub task (stopped by `shutdown`). Does not
    /// wait for Redis: until it is reachable the engine is not ready and operations
    /// fail with [`EngineError::Unavailable`].
    ///
    /// # Errors
    /// A malformed URL.
    pub fn connect(
        handler: Arc<dyn EventHandler>,
        config: &RedisConfig,
        presence_lease: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, EngineError> {
        let (conn, feed) = Connection::open(config)?;
        let bulk = Connection::open_bulk(config)?;
        let keys = Keys {
            prefix: config.prefix.clone(),
        };
        let subscriber = Subscriber::spawn(
            feed,
            keys.clone(),
            handler,
            config.connect_timeout,
            config.command_timeout,
            shutdown,
        );
        Ok(Arc::new(Self {
            conn,
            bulk,
            keys,
            scripts: Scripts::new(),
            subscriber,
            lease: presence_lease,
            timeout: config.command_timeout,
        }))
    }

    /// The uids of the nodes within their lease.
    async fn live_nodes(&self) -> Result<Vec<String>, EngineError> {
        let [_, z] = self.keys.nodes();
        self.run(&self.scripts.live_nodes.key(z)).await
    }

    /// Runs one script with a deadline: a Redis that stopped answering is unavailable.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, EngineError> {
        self.run_on(&self.conn, invocation).await
    }

    /// Runs a batch of scripts on the bulk connection, `BULK_CHUNK` at a time.
    async fn run_bulk(
        &self,
        invocations: &[redis::ScriptInvocation<'_>],
    ) -> Result<(), EngineError> {
        for chunk in invocations.chunks(BULK_CHUNK) {
            let results = futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|inv| self.run_on::<redis::Value>(&self.bulk, inv)),
            )
            .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn run_on<T: redis::FromRedisValue>(
        &self,
        conn: &Connection,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, EngineError> {
        let mut conn = conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(&e)),
            Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
        }
    }

    fn presence_invocation(
        &self,
        channel: &str,
        info: &ClientInfo,
    ) -> Result<redis::ScriptInvocation<'_>, EngineError> {
        let json = serde_json::to_string(info).map_err(|e| corrupt(&e.to_string()))?;
        let mut inv = self.scripts.add_presence.prepare_invoke();
        for k in self.keys.presence(channel) {
            inv.key(k);
        }
        inv.arg(&*info.client)
            .arg(&*info.user)
            .arg(json)
            .arg(millis(self.lease));
        Ok(inv)
    }

    async fn publish_raw(&self, channel: &str, payload: String) -> Result<(), EngineError> {
        self.publish_to(self.keys.pubsub(channel), payload).await
    }

    async fn publish_to(&self, pubsub: String, payload: String) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd(self.conn.publish_command())
            .arg(pubsub)
            .arg(payload)
            .to_owned();
        match tokio::time::timeout(self.timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(r) => r.map(drop).map_err(|e| unavailable(&e)),
            Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
        }
    }
}

/// How long a stream's epoch and offset outlive its last publication: longer than the
/// publications themselves, so a client returning to an idle channel still finds its
/// position (and is told nothing was missed) instead of a new epoch.
fn meta_ttl(history_ttl: Duration) -> Duration {
    history_ttl.max(Duration::from_secs(7 * 24 * 3600))
}

/// Scripts of a bulk renewal in flight at once: one round trip each, and Redis, which
/// runs a socket's pipelined commands back to back, turns to other sockets between them.
const BULK_CHUNK: usize = 128;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, EngineError> {
    serde_json::to_string(v).map_err(|e| corrupt(&e.to_string()))
}

/// Parses a history entry `<offset> <expires ms> <json>`.
fn parse_entry(entry: &[u8]) -> Option<(u64, u64, Publication)> {
    let mut parts = entry.splitn(3, |b| *b == b' ');
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let expires = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let mut publication: Publication = serde_json::from_slice(parts.next()?).ok()?;
    publication.offset = offset;
    Some((offset, expires, publication))
}

#[async_trait]
impl Engine for RedisEngine {
    async fn publish(
        &self,
        channel: &Arc<str>,
        publication: Publication,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, EngineError> {
        let json = to_json(&publication.stored())?;
        let Some(opts) = history else {
            self.publish_raw(channel, format!("p 0 - {json}")).await?;
            return Ok(StreamPosition::default());
        };
        let mut inv = self.scripts.publish.key(self.keys.key(channel, 'h'));
        inv.key(self.keys.key(channel, 'm'))
            .arg(self.keys.pubsub(channel))
            .arg(json)
            .arg(opts.size.max(1))
            .arg(millis(opts.ttl))
            .arg(new_epoch())
            .arg(millis(meta_ttl(opts.ttl)))
            .arg(self.conn.publish_command());
        let (offset, epoch): (u64, String) = self.run(&inv).await?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn publish_join(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError> {
        self.publish_raw(channel, format!("j {}", to_json(&info)?))
            .await
    }

    async fn publish_leave(&self, channel: &Arc<str>, info: ClientInfo) -> Result<(), EngineError> {
        self.publish_raw(channel, format!("l {}", to_json(&info)?))
            .await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.subscriber.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.subscriber.unsubscribe(channel).await
    }

    async fn add_presence(&self, channel: &str, info: ClientInfo) -> Result<bool, EngineError> {
        let first: i64 = self.run(&self.presence_invocation(channel, &info)?).await?;
        Ok(first == 1)
    }

    async fn refresh_presence(
        &self,
        entries: &[(Arc<str>, ClientInfo)],
    ) -> Result<(), EngineError> {
        let invocations = entries
            .iter()
            .map(|(channel, info)| self.presence_invocation(channel, info))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_bulk(&invocations).await
    }

    async fn remove_presence(
        &self,
        channel: &str,
        client: &str,
        user: &str,
    ) -> Result<bool, EngineError> {
        let mut inv = self.scripts.remove_presence.prepare_invoke();
        for k in self.keys.presence(channel) {
            inv.key(k);
        }
        inv.arg(client).arg(user);
        let last: i64 = self.run(&inv).await?;
        Ok(last == 1)
    }

    async fn expire_presence(&self, channel: &str) -> Result<Vec<(ClientInfo, bool)>, EngineError> {
        let mut inv = self.scripts.expire_presence.prepare_invoke();
        for k in self.keys.presence(channel) {
            inv.key(k);
        }
        let gone: Vec<(String, i64)> = self.run(&inv).await?;
        Ok(gone
            .into_iter()
            .filter_map(|(json, last)| {
                serde_json::from_str::<ClientInfo>(&json)
                    .ok()
                    .map(|info| (info, last == 1))
            })
            .collect())
    }

    async fn presence(&self, channel: &str) -> Result<HashMap<Arc<str>, ClientInfo>, EngineError> {
        let [p, z, _] = self.keys.presence(channel);
        let mut inv = self.scripts.presence.key(p);
        inv.key(z);
        let infos: Vec<String> = self.run(&inv).await?;
        Ok(infos
            .iter()
            .filter_map(|json| serde_json::from_str::<ClientInfo>(json).ok())
            .map(|info| (info.client.clone(), info))
            .collect())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, EngineError> {
        let clients = self.presence(channel).await?;
        let users: HashSet<&str> = clients.values().map(|i| &*i.user).collect();
        Ok(PresenceStatsResult {
            num_clients: u32::try_from(clients.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        })
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryResult, EngineError> {
        let mut inv = self.scripts.history.key(self.keys.key(channel, 'h'));
        inv.key(self.keys.key(channel, 'm'))
            .arg(query.ensure.map_or(0, |o| millis(meta_ttl(o.ttl))))
            .arg(new_epoch());
        let (epoch, top, now, entries): (String, u64, u64, Vec<Vec<u8>>) = self.run(&inv).await?;
        let mut items = Vec::with_capacity(entries.len());
        for entry in &entries {
            let (_, expires, publication) =
                parse_entry(entry).ok_or_else(|| corrupt("history entry"))?;
            // Per-publication TTL, as in the memory engine.
            if expires > now {
                items.push(publication);
            }
        }
        Ok(window(items.iter(), &epoch, top, &query))
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("DEL")
            .arg(self.keys.key(channel, 'h'))
            .arg(self.keys.key(channel, 'm'))
            .to_owned();
        match tokio::time::timeout(self.timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(r) => r.map(drop).map_err(|e| unavailable(&e)),
            Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
        }
    }

    async fn publish_control(&self, payload: String) -> Result<(), EngineError> {
        self.publish_to(self.keys.control(), payload).await
    }

    async fn heartbeat(&self, uid: &str, status: String) -> Result<(), EngineError> {
        let [n, z] = self.keys.nodes();
        let mut inv = self.scripts.heartbeat.key(n);
        inv.key(z).arg(uid).arg(status).arg(millis(self.lease));
        self.run::<i64>(&inv).await.map(drop)
    }

    async fn nodes(&self) -> Result<Vec<String>, EngineError> {
        let [n, z] = self.keys.nodes();
        let mut inv = self.scripts.presence.key(n);
        inv.key(z);
        self.run(&inv).await
    }

    async fn count_connection(
        &self,
        user: &str,
        node: &str,
        limit: usize,
    ) -> Result<bool, EngineError> {
        let live = self.live_nodes().await?;
        let mut inv = self
            .scripts
            .count_connection
            .key(self.keys.connections(user));
        inv.arg(node).arg(limit).arg(millis(self.lease)).arg(live);
        Ok(self.run::<i64>(&inv).await? == 1)
    }

    async fn uncount_connection(&self, user: &str, node: &str) -> Result<(), EngineError> {
        let mut inv = self
            .scripts
            .uncount_connection
            .key(self.keys.connections(user));
        inv.arg(node);
        self.run::<i64>(&inv).await.map(drop)
    }

    async fn connection_counts(&self, users: &[String]) -> Result<Option<Vec<u32>>, EngineError> {
        let live: HashSet<String> = self.live_nodes().await?.into_iter().collect();
        // Concurrent reads share the connection (one per shard): pipelined.
        let reads = users.iter().map(|user| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("HGETALL")
                .arg(self.keys.connections(user))
                .to_owned();
            async move {
                match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
                    Ok(r) => r.map_err(|e| unavailable(&e)),
                    Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
                }
            }
        });
        let mut out = Vec::with_capacity(users.len());
        for counts in futures_util::future::join_all(reads).await {
            let counts: HashMap<String, i64> = counts?;
            let total: i64 = counts
                .iter()
                .filter_map(|(field, n)| Some((field.strip_prefix("n:")?, n)))
                .filter(|(uid, _)| live.contains(*uid))
                .map(|(_, n)| (*n).max(0))
                .sum();
            out.push(u32::try_from(total).unwrap_or(u32::MAX));
        }
        Ok(Some(out))
    }

    async fn claim_idempotent(
        &self,
        channel: &str,
        key: &str,
        window: Duration,
    ) -> Result<Claim, EngineError> {
        let mut conn = self.conn.clone();
        let k = self.keys.idempotency(channel, key);
        // SET NX marks the key pending; otherwise read what the first publish left.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&k)
            .arg("")
            .arg("NX")
            .arg("PX")
            .arg(millis(window))
            .cmd("GET")
            .arg(&k);
        let (set, value): (Option<String>, Option<String>) =
            match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
                Ok(r) => r.map_err(|e| unavailable(&e))?,
                Err(_) => return Err(EngineError::Unavailable("redis command timed out".into())),
            };
        if set.is_some() {
            return Ok(Claim::First);
        }
        let value = value.unwrap_or_default();
        let Some((offset, epoch)) = value.split_once(' ') else {
            return Ok(Claim::Pending);
        };
        let offset = offset.parse().map_err(|_| corrupt("idempotency record"))?;
        Ok(Claim::Done(StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        }))
    }

    async fn settle_idempotent(
        &self,
        channel: &str,
        key: &str,
        result: Option<&StreamPosition>,
        window: Duration,
    ) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let k = self.keys.idempotency(channel, key);
        let cmd = match result {
            Some(pos) => redis::cmd("SET")
                .arg(&k)
                .arg(format!("{} {}", pos.offset, pos.epoch))
                .arg("PX")
                .arg(millis(window))
                .to_owned(),
            None => redis::cmd("DEL").arg(&k).to_owned(),
        };
        match tokio::time::timeout(self.timeout, cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(r) => r.map(drop).map_err(|e| unavailable(&e)),
            Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
        }
    }

    fn revocations(self: Arc<Self>) -> Arc<dyn crate::revocation::RevocationStore> {
        Arc::new(RedisRevocations::new(self))
    }

    async fn record_seen(&self, user: &str, at_ms: u64, keep: Duration) -> Result<(), EngineError> {
        self.record_seen_at(user, at_ms, keep).await
    }

    async fn refresh_seen(
        &self,
        users: &[Arc<str>],
        at_ms: u64,
        keep: Duration,
    ) -> Result<(), EngineError> {
        self.refresh_seen_at(users, at_ms, keep).await
    }

    async fn last_seen(&self, users: &[String]) -> Result<Option<Vec<u64>>, EngineError> {
        self.last_seen_of(users).await.map(Some)
    }

    fn typing(self: Arc<Self>) -> Arc<dyn crate::typing::TypingStore> {
        Arc::new(RedisTyping::new(self))
    }

    fn inbox(self: Arc<Self>) -> Arc<dyn crate::inbox::InboxStore> {
        Arc::new(RedisInbox::new(self))
    }

    async fn ready(&self) -> bool {
        if !self.subscriber.connected() {
            return false;
        }
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING").to_owned();
        matches!(
            tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_names_map_back_to_channels() {
        let keys = Keys {
            prefix: "sb".into(),
        };
        let name = keys.pubsub("chat:room-1");
        assert_eq!(name, "sb:{chat:room-1}:c");
        assert_eq!(keys.channel_of(&name), Some("chat:room-1"));
        assert_eq!(keys.channel_of("other:{chat:1}:c"), None);
        assert_eq!(keys.key("chat:1", 'h'), "sb:{chat:1}:h");
    }

    #[test]
    fn history_entries_parse() {
        let (offset, expires, p) = parse_entry(br#"12 1700000000000 {"data":{"a":1}}"#).unwrap();
        assert_eq!((offset, expires, p.offset), (12, 1_700_000_000_000, 12));
        assert_eq!(p.data.get(), r#"{"a":1}"#);
        assert!(parse_entry(b"x 1 {}").is_none());
    }
}
