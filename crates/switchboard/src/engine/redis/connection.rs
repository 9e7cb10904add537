//! The engine's link to Redis: one standalone server, or a Redis Cluster whose
//! connection routes each command (and script) to the shard owning its first key.
//!
//! Both are multiplexed: concurrent commands share one connection per server and are
//! pipelined on it, so a batch of scripts costs one round trip per shard.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, PushInfo, RedisFuture, Value};
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
        if config.cluster {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let conn = cluster_client(config)?.get_pending_async_connection_with_config(
                cluster_config(config).set_push_sender(tx),
            );
            return Ok((Self::Cluster(conn.clone()), Feed::Cluster(conn, rx)));
        }
        let client = single_client(config)?;
        Ok((Self::single(client.clone(), config)?, Feed::Single(client)))
    }

    /// A second connection for the periodic bulk renewals (presence leases, last-seen
    /// times: thousands of commands at once), so that publications do not queue behind
    /// them on the same socket: Redis serves the two sockets in turns.
    ///
    /// # Errors
    /// A malformed URL.
    pub(super) fn open_bulk(config: &RedisConfig) -> Result<Self, EngineError> {
        if config.cluster {
            return Ok(Self::Cluster(
                cluster_client(config)?
                    .get_pending_async_connection_with_config(cluster_config(config)),
            ));
        }
        Self::single(single_client(config)?, config)
    }

    fn single(client: redis::Client, config: &RedisConfig) -> Result<Self, EngineError> {
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_lazy_with_config(client, manager_config)
            .map(Self::Single)
            .map_err(|e| EngineError::Unavailable(e.to_string()))
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

fn bad_url(e: &redis::RedisError) -> EngineError {
    EngineError::Unavailable(format!("redis.url: {e}"))
}

fn single_client(config: &RedisConfig) -> Result<redis::Client, EngineError> {
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad_url(&e))?
        .set_tcp_settings(tcp_settings());
    redis::Client::open(info).map_err(|e| bad_url(&e))
}

fn cluster_client(config: &RedisConfig) -> Result<redis::cluster::ClusterClient, EngineError> {
    ClusterClientBuilder::new(config.urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .tcp_settings(tcp_settings())
        .build()
        .map_err(|e| bad_url(&e))
}

fn cluster_config(config: &RedisConfig) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.command_timeout)
}

/// Commands and pub/sub messages are small writes pipelined on one socket: with Nagle's
/// algorithm on (the redis crate's default) a write waits for the previous one's ACK,
/// which put tens of milliseconds into the tail of delivery latency across nodes.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
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
