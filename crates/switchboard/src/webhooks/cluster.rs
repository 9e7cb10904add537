//! The nodes' shared view for webhooks, in Redis: which nodes hold each user online
//! and each channel occupied, the clients of each node, and each endpoint's queue.
//!
//! A user is online while some node holds them and a channel occupied while some node
//! has a subscriber, so only the first node in and the last node out report it. A node
//! that dies leaves its entries behind: once its lease has expired, the one survivor
//! that claims it removes them and reports what the dead node could not.
//!
//! Keys under prefix `P` (each script touches one hash tag only):
//! `P:{hk}:nodes` (uids), `P:{hk:n:<uid>}:alive|claim|clients|users|channels`,
//! `P:{hk:u:<user>}:nodes`, `P:{hk:c:<channel>}:nodes`, `P:{hk:q:<endpoint>}:events|lock`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::WebhookError;
use crate::config::RedisConfig;

/// Adds a member; returns `{added, size after}`.
const ADD: &str = "local added = redis.call('SADD', KEYS[1], ARGV[1]) \
                   return {added, redis.call('SCARD', KEYS[1])}";
/// Removes a member; returns `{removed, size after}`.
const REMOVE: &str = "local removed = redis.call('SREM', KEYS[1], ARGV[1]) \
                      return {removed, redis.call('SCARD', KEYS[1])}";
/// Takes or extends a lock held by ARGV[1] for ARGV[2] ms; 1 when held.
const HOLD: &str = "local v = redis.call('GET', KEYS[1]) \
                    if v == false or v == ARGV[1] then \
                      redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
                    return 0";
/// Frees a lock if ARGV[1] holds it.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end \
                       return 1";
/// Appends ARGV[2] unless the list holds ARGV[1] items already; 1 when appended.
const PUSH: &str = "if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end \
                    redis.call('RPUSH', KEYS[1], ARGV[2]) return 1";
/// Drops the first ARGV[2] items if the lock KEYS[2] is still held by ARGV[1].
const ACK: &str = "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end \
                   redis.call('LTRIM', KEYS[1], ARGV[2], -1) return 1";

/// A set membership change as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// The first holder came or the last one left: report it.
    Changed,
    /// Others hold it still (or already): nothing to report.
    Unchanged,
}

/// What a dead node left behind, claimed by this node to report.
#[derive(Debug, Default)]
pub(super) struct Remains {
    /// The dead node's uid.
    pub(super) uid: String,
    /// Its clients, with their users.
    pub(super) clients: Vec<(String, String)>,
    /// Users it was the last node to hold online.
    pub(super) offline: Vec<String>,
    /// Channels it was the last node to have subscribers in.
    pub(super) vacated: Vec<String>,
}

/// This node's connection to the shared view.
pub(super) struct Cluster {
    conn: ConnectionManager,
    prefix: String,
    /// This node's uid.
    uid: String,
    lease: Duration,
    timeout: Duration,
    add: Script,
    remove: Script,
    hold: Script,
    release: Script,
    push: Script,
    ack: Script,
}

impl Cluster {
    /// A lazy connection: nothing is sent until the first call.
    pub(super) fn new(
        config: &RedisConfig,
        uid: &str,
        lease: Duration,
    ) -> Result<Self, WebhookError> {
        let client =
            crate::engine::redis::client(config).map_err(|e| WebhookError::Redis(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| WebhookError::Redis(e.to_string()))?;
        Ok(Self {
            conn,
            prefix: config.prefix.clone(),
            uid: uid.to_owned(),
            lease,
            timeout: config.command_timeout,
            add: Script::new(ADD),
            remove: Script::new(REMOVE),
            hold: Script::new(HOLD),
            release: Script::new(RELEASE),
            push: Script::new(PUSH),
            ack: Script::new(ACK),
        })
    }

    fn node_key(&self, uid: &str, what: &str) -> String {
        format!("{}:{{hk:n:{uid}}}:{what}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:{{hk}}:nodes", self.prefix)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:{{hk:u:{user}}}:nodes", self.prefix)
    }

    fn channel_key(&self, channel: &str) -> String {
        format!("{}:{{hk:c:{channel}}}:nodes", self.prefix)
    }

    /// The list of an endpoint's events and the lock of whoever delivers them.
    pub(super) fn queue_keys(&self, endpoint: &str) -> (String, String) {
        (
            format!("{}:{{hk:q:{endpoint}}}:events", self.prefix),
            format!("{}:{{hk:q:{endpoint}}}:lock", self.prefix),
        )
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, WebhookError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| WebhookError::Redis(e.to_string())),
            Err(_) => Err(WebhookError::Redis("redis command timed out".into())),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, WebhookError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| WebhookError::Redis(e.to_string())),
            Err(_) => Err(WebhookError::Redis("redis command timed out".into())),
        }
    }

    /// Marks this node alive for one lease (called every third of it).
    pub(super) async fn heartbeat(&self) -> Result<(), WebhookError> {
        let lease = millis(self.lease);
        self.query::<()>(redis::cmd("SADD").arg(self.nodes_key()).arg(&self.uid))
            .await?;
        self.query::<()>(
            redis::cmd("SET")
                .arg(self.node_key(&self.uid, "alive"))
                .arg(1)
                .arg("PX")
                .arg(lease),
        )
        .await
    }

    /// Adds this node to `key`'s holders, after noting it in this node's own `index` so
    /// a survivor finds it should this node die in between.
    async fn enter(
        &self,
        index: &str,
        key: String,
        member: &str,
    ) -> Result<Transition, WebhookError> {
        self.query::<()>(
            redis::cmd("SADD")
                .arg(self.node_key(&self.uid, index))
                .arg(member),
        )
        .await?;
        let mut inv = self.add.key(key);
        inv.arg(&self.uid);
        let (added, size): (i64, i64) = self.run(&inv).await?;
        Ok(if added == 1 && size == 1 {
            Transition::Changed
        } else {
            Transition::Unchanged
        })
    }

    /// Removes node `uid` from `key`'s holders, then from that node's `index`.
    async fn leave(
        &self,
        uid: &str,
        index: &str,
        key: String,
        member: &str,
    ) -> Result<Transition, WebhookError> {
        let mut inv = self.remove.key(key);
        inv.arg(uid);
        let (removed, size): (i64, i64) = self.run(&inv).await?;
        self.query::<()>(
            redis::cmd("SREM")
                .arg(self.node_key(uid, index))
                .arg(member),
        )
        .await?;
        Ok(if removed == 1 && size == 0 {
            Transition::Changed
        } else {
            Transition::Unchanged
        })
    }

    /// `user` came online on this node: whether they were offline everywhere.
    pub(super) async fn user_online(&self, user: &str) -> Result<Transition, WebhookError> {
        self.enter("users", self.user_key(user), user).await
    }

    /// `user` went offline on this node: whether no node holds them any more.
    pub(super) async fn user_offline(&self, user: &str) -> Result<Transition, WebhookError> {
        self.leave(&self.uid, "users", self.user_key(user), user)
            .await
    }

    /// `channel` got its first subscriber here: whether it had none anywhere.
    pub(super) async fn occupied(&self, channel: &str) -> Result<Transition, WebhookError> {
        self.enter("channels", self.channel_key(channel), channel)
            .await
    }

    /// `channel` lost its last subscriber here: whether it has none anywhere now.
    pub(super) async fn vacated(&self, channel: &str) -> Result<Transition, WebhookError> {
        self.leave(&self.uid, "channels", self.channel_key(channel), channel)
            .await
    }

    /// Notes a client of this node, for a survivor to report should this node die.
    pub(super) async fn client_connected(
        &self,
        client: &str,
        user: &str,
    ) -> Result<(), WebhookError> {
        self.query(
            redis::cmd("HSET")
                .arg(self.node_key(&self.uid, "clients"))
                .arg(client)
                .arg(user),
        )
        .await
    }

    /// Forgets a client of this node.
    pub(super) async fn client_disconnected(&self, client: &str) -> Result<(), WebhookError> {
        self.query(
            redis::cmd("HDEL")
                .arg(self.node_key(&self.uid, "clients"))
                .arg(client),
        )
        .await
    }

    /// Nodes whose lease expired, each claimed by this node alone (for `claim_for`,
    /// after which another survivor may claim what is left, should this one die too).
    pub(super) async fn claim_dead(
        &self,
        claim_for: Duration,
    ) -> Result<Vec<String>, WebhookError> {
        let uids: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.nodes_key()))
            .await?;
        let mut claimed = Vec::new();
        for uid in uids.into_iter().filter(|u| *u != self.uid) {
            let alive: bool = self
                .query(redis::cmd("EXISTS").arg(self.node_key(&uid, "alive")))
                .await?;
            if alive {
                continue;
            }
            let won: Option<String> = self
                .query(
                    redis::cmd("SET")
                        .arg(self.node_key(&uid, "claim"))
                        .arg(&self.uid)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(claim_for)),
                )
                .await?;
            if won.is_some() {
                claimed.push(uid);
            }
        }
        Ok(claimed)
    }

    /// Removes a claimed dead node's entries, returning what must be reported.
    pub(super) async fn take_remains(&self, uid: &str) -> Result<Remains, WebhookError> {
        let clients: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.node_key(uid, "clients")))
            .await?;
        let mut remains = Remains {
            uid: uid.to_owned(),
            clients,
            ..Remains::default()
        };
        let users: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.node_key(uid, "users")))
            .await?;
        for user in users {
            if self
                .leave(uid, "users", self.user_key(&user), &user)
                .await?
                == Transition::Changed
            {
                remains.offline.push(user);
            }
        }
        let channels: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.node_key(uid, "channels")))
            .await?;
        for channel in channels {
            let key = self.channel_key(&channel);
            if self.leave(uid, "channels", key, &channel).await? == Transition::Changed {
                remains.vacated.push(channel);
            }
        }
        Ok(remains)
    }

    /// Forgets a dead node once its remains are queued for delivery.
    pub(super) async fn bury(&self, uid: &str) -> Result<(), WebhookError> {
        self.query::<()>(
            redis::cmd("DEL")
                .arg(self.node_key(uid, "clients"))
                .arg(self.node_key(uid, "users"))
                .arg(self.node_key(uid, "channels")),
        )
        .await?;
        self.query(redis::cmd("SREM").arg(self.nodes_key()).arg(uid))
            .await
    }

    /// Appends an event to a queue unless it holds `cap` already; whether it did.
    pub(super) async fn push(
        &self,
        list: &str,
        cap: usize,
        event: &str,
    ) -> Result<bool, WebhookError> {
        let mut inv = self.push.key(list);
        inv.arg(cap).arg(event);
        let pushed: i64 = self.run(&inv).await?;
        Ok(pushed == 1)
    }

    /// Takes or extends the delivery lock `lock` for `lease`; whether this node holds it.
    pub(super) async fn hold(&self, lock: &str, lease: Duration) -> Result<bool, WebhookError> {
        let mut inv = self.hold.key(lock);
        inv.arg(&self.uid).arg(millis(lease));
        let held: i64 = self.run(&inv).await?;
        Ok(held == 1)
    }

    /// Frees the delivery lock `lock` if this node holds it.
    pub(super) async fn release(&self, lock: &str) -> Result<(), WebhookError> {
        let mut inv = self.release.key(lock);
        inv.arg(&self.uid);
        self.run::<i64>(&inv).await.map(drop)
    }

    /// The first `n` events of a queue.
    pub(super) async fn peek(&self, list: &str, n: usize) -> Result<Vec<String>, WebhookError> {
        self.query(
            redis::cmd("LRANGE")
                .arg(list)
                .arg(0)
                .arg(n.saturating_sub(1)),
        )
        .await
    }

    /// Drops the first `n` events, if this node still holds the lock (else whoever
    /// does will send them again: at least once).
    pub(super) async fn ack(&self, list: &str, lock: &str, n: usize) -> Result<bool, WebhookError> {
        let mut inv = self.ack.key(list);
        inv.key(lock).arg(&self.uid).arg(n);
        let done: i64 = self.run(&inv).await?;
        Ok(done == 1)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
