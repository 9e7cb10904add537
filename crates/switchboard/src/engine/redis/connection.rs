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
use redis::{
    ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, PushInfo, RedisFuture, TlsCertificates,
    Value,
};
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
    Single(Box<redis::Client>),
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
        Ok((
            Self::single(client.clone(), config)?,
            Feed::Single(Box::new(client)),
        ))
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

/// A client of the one server in `config.url`, with the settings every connection of
/// this process to Redis uses (the engine's and the webhook queues').
///
/// # Errors
/// A malformed URL, or TLS files that can not be read.
pub(crate) fn single_client(config: &RedisConfig) -> Result<redis::Client, EngineError> {
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad_url(&e))?
        .set_tcp_settings(tcp_settings());
    match tls_certificates(config)? {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
    .map_err(|e| bad_url(&e))
}

fn cluster_client(config: &RedisConfig) -> Result<redis::cluster::ClusterClient, EngineError> {
    let mut builder = ClusterClientBuilder::new(config.urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .tcp_settings(tcp_settings());
    if let Some(certs) = tls_certificates(config)? {
        builder = builder.certs(certs);
    }
    builder.build().map_err(|e| bad_url(&e))
}

/// The CA and client certificate files of `[redis]`, when any is set (without them a
/// `rediss://` URL trusts the system's roots).
fn tls_certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>, EngineError> {
    if config.tls_ca.is_empty() && config.tls_cert.is_empty() {
        return Ok(None);
    }
    let read = |key: &str, path: &str| {
        std::fs::read(path)
            .map_err(|e| EngineError::Unavailable(format!("redis.{key} {path}: {e}")))
    };
    let root_cert = match config.tls_ca.as_str() {
        "" => None,
        path => Some(read("tls_ca", path)?),
    };
    let client_tls = match (config.tls_cert.as_str(), config.tls_key.as_str()) {
        ("", _) | (_, "") => None,
        (cert, key) => Some(ClientTlsConfig {
            client_cert: read("tls_cert", cert)?,
            client_key: read("tls_key", key)?,
        }),
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
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
