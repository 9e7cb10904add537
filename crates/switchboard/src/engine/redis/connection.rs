//! The engine's link to Redis: one standalone server, or a Redis Cluster whose
//! connection routes each command (and script) to the shard owning its first key.
//!
//! Both are multiplexed: concurrent commands share one connection per server and are
//! pipelined on it, so a batch of scripts costs one round trip per shard.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::RedisConfig;
use crate::engine::EngineError;

/// Commands to Redis, whichever its topology.
#[derive(Clone)]
pub(super) enum Connection {
    /// One server (or a primary behind one address).
    Single(ConnectionManager),
    /// A Redis Cluster, over RESP3: the same connections carry this node's sharded
    /// pub/sub messages.
    Cluster(ClusterConnection),
}

/// Where this node's pub/sub messages come from.
pub(super) enum Feed {
    /// A dedicated pub/sub connection to the one server, opened (and reopened) by the
    /// subscriber.
    Single(redis::Client),
    /// The cluster connection's pushes (`SSUBSCRIBE` goes through [`Connection`]).
    Cluster(ClusterConnection, UnboundedReceiver<PushInfo>),
}

impl Connection {
    /// Sets up the connection without waiting for Redis: until it is reachable,
    /// commands fail (and are retried by the caller's next operation).
    ///
    /// # Errors
    /// A malformed URL.
    pub(super) fn open(config: &RedisConfig) -> Result<(Self, Feed), EngineError> {
        let bad_url = |e: redis::RedisError| EngineError::Unavailable(format!("redis.url: {e}"));
        if config.cluster {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let client = ClusterClientBuilder::new(config.urls())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .build()
                .map_err(bad_url)?;
            let conn = client.get_pending_async_connection_with_config(
                ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.command_timeout)
                    .set_push_sender(tx),
            );
            return Ok((Self::Cluster(conn.clone()), Feed::Cluster(conn, rx)));
        }
        let client = redis::Client::open(config.url.as_str()).map_err(bad_url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        Ok((Self::Single(conn), Feed::Single(client)))
    }

    /// The command that publishes to a pub/sub channel: sharded on a cluster, so a
    /// message goes to the shard of its channel only instead of every server.
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "publish",
            Self::Cluster(_) => "spublish",
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
