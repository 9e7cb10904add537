//! switchboard: a self-hosted real-time gateway speaking the Centrifugo client protocol,
//! Socket.IO and Pusher's protocol.
//!
//! # Layout
//! - [`config`]: defaults, TOML file, `SWITCHBOARD_*` variables, flags.
//! - [`auth`]: connection and subscription tokens -> [`auth::Identity`].
//! - [`channel`], [`rules`]: channel names and who may do what in which namespace.
//! - [`node`]: the public face of the process: publish, presence, history, disconnect.
//! - [`hub`]: node-local index channel -> sessions, user -> sessions; `upstream` keeps
//!   each channel's engine subscription in step with it.
//! - [`session`]: one connection's identity, subscriptions, limits and [`outbox`];
//!   [`delivery`]: what a subscription asked of its channel's events (a tags filter).
//! - [`event`]: what flows to sessions: frames (text or binary), encoded once per codec a
//!   transport registers.
//! - [`engine`]: cross-node pub/sub, presence and history ([`engine::memory`] by default,
//!   kept on disk by [`engine::persistence`] when configured; [`engine::redis`] for
//!   several nodes).
//! - [`history`], [`presence`]: a channel's stream and presence set.
//! - [`cluster`]: commands between nodes, and each node's status for `info`/`channels`.
//! - [`status`], [`typing`]: user online status and typing signals.
//! - [`inbox`]: users' delivered and read positions in inbox channels (what a fresh
//!   session still gets, read state across devices, read receipts).
//! - [`transport`]: wire protocols ([`transport::centrifuge`] in JSON and Protobuf,
//!   [`transport::socketio`], [`transport::pusher`] with its HTTP API), over WebSocket or
//!   streaming HTTP responses ([`transport::streaming`]: HTTP-streaming, SSE, the
//!   unidirectional transports), all written by one writer driver. WebSocket endpoints
//!   shake hands in [`transport::upgrade`], which negotiates permessage-deflate
//!   ([`transport::deflate`]).
//! - [`server`]: HTTP routes, `run`, graceful shutdown.
//! - [`front_door`]: accepting TCP connections: caps, rates, timeouts, lingering close.
//! - [`hooks`]: the named hook points of the core (connect, online, occupied, join...)
//!   and the [`hooks::Hooks`] trait that observes them.
//! - [`proxy`]: HTTP calls to the app backend (connect, refresh, subscribe, publish, rpc).
//! - [`revocation`]: revoked tokens and invalidated users, behind a store trait.
//! - [`tls`]: serving `https`/`wss` with rustls, certificate reload.
//! - [`api`]: the Centrifugo-compatible server HTTP API; [`metrics`] at `/metrics`.
//! - [`webhooks`]: lifecycle events POSTed to the app backend, signed, batched, retried.
//! - [`cli`]: the operator CLI's client of a running server's API.
//! - [`admin`]: the operator console at `/admin`: login, audited actions through the
//!   server API, and its live feed over the client protocol.
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod channel;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod event;
pub mod feed;
pub mod front_door;
pub mod history;
pub mod hooks;
pub mod hub;
pub mod inbox;
pub mod limiter;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod proxy;
pub mod revocation;
pub mod rules;
pub mod server;
pub mod session;
pub mod status;
pub mod tls;
pub mod transport;
pub mod typing;
mod upstream;
pub mod webhooks;

/// The server version reported to clients.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use config::Config;
pub use server::{run, Server};
