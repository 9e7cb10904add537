//! The HTTP server: binds, routes, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::{Node, StartError};
use crate::tls::Tls;
use crate::transport;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The configuration is invalid (checked here too, for configs built in code).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    node: Arc<Node>,
    tls: Option<Tls>,
}

impl Server {
    /// Builds the node, loads the TLS certificate (when configured) and binds
    /// `config.bind`.
    ///
    /// # Errors
    /// [`ServerError`] when the configuration is invalid, keys or the certificate can
    /// not be loaded or the address can not be bound.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let tls = if config.tls.enabled() {
            Some(Tls::load(&config.tls)?)
        } else {
            None
        };
        let listener = listen(&config.bind, config.listen_backlog).await?;
        let node = Node::new(config)?;
        Ok(Self {
            listener,
            node,
            tls,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The node behind this server.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serves until `shutdown` completes, then tells every client to reconnect (3001)
    /// and waits up to `shutdown_timeout` for connections to drain.
    ///
    /// # Errors
    /// An I/O error of the listener.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let node = self.node;
        let app = router(node.clone());
        let stop = node.shutdown.clone();
        let signal_node = node.clone();
        tokio::spawn(async move {
            shutdown.await;
            // First shut down, then say so: a log write can fail (stderr gone) and must
            // not keep the node running.
            signal_node.begin_shutdown();
            tracing::info!("shutting down: closing connections");
        });
        node.spawn_maintenance();
        let addr = self.listener.local_addr()?;
        let acceptor = self.tls.as_ref().map(Tls::acceptor);
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, node = %node.name, "switchboard listening");
        if let Some(tls) = self.tls {
            tokio::spawn(tls.watch(stop.clone()));
        }
        let door =
            crate::front_door::Door::new(&node.config.network, node.metrics.clone(), acceptor);
        crate::front_door::serve(self.listener, app, door, stop, node.config.shutdown_timeout)
            .await;
        let timeout = node.config.shutdown_timeout;
        if tokio::time::timeout(timeout, node.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?timeout, "connections did not drain in time");
        }
        node.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds the first address `bind` resolves to, with a listen queue of `backlog`: a connect
/// storm overflowing a short queue makes clients wait a whole SYN retry (1 s).
async fn listen(bind: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for addr in tokio::net::lookup_host(bind).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Binds and serves `config` until `shutdown` completes.
///
/// # Errors
/// See [`Server::bind`] and [`Server::run`].
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await
}

/// All routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/connection/websocket", get(transport::centrifuge::handler))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(crate::metrics::prometheus::handler))
        .with_state(node.clone())
        .merge(transport::socketio::router(node.clone()))
        .merge(crate::admin::router(node.clone()))
        .merge(transport::streaming::router(node.clone()))
        .merge(transport::pusher::router(node.clone()))
        .merge(crate::api::router(node))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 while the engine can serve requests and the node is not shutting
/// down, so a load balancer stops sending traffic before connections are closed.
async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    if !node.shutdown.is_cancelled() && node.ready().await {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable"})),
        )
    }
}
