//! Configuration: defaults, then a TOML file, then `SWITCHBOARD_*` variables, then flags.
//!
//! Every limit lives here with its default, so docs/config.md and
//! switchboard.example.toml can be checked against one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod diagnose;
mod persistence;
mod pusher;
mod socketio;
mod webhooks;
mod websocket;

pub use persistence::{Durability, PersistenceConfig};
pub use pusher::{PusherApp, PusherAppConfig, PusherConfig, PUSHER_NAMESPACES};
pub use socketio::{PushesConfig, RouteAction, RouteConfig, SocketIoConfig};
pub use webhooks::{WebhookEndpointConfig, WebhooksConfig, EVENT_KINDS};
pub use websocket::WebSocketConfig;

/// `SWITCHBOARD_*` variables that are not configuration keys: read by the CLI's flags
/// (`SWITCHBOARD_CONFIG`, `SWITCHBOARD_URL`), the log filter (`SWITCHBOARD_LOG`) and the
/// test harnesses (`SWITCHBOARD_BIN`, `SWITCHBOARD_KEEP_LOGS`, `SWITCHBOARD_TEST_LOGS`,
/// `SWITCHBOARD_TEST_REDIS_PORTS`).
/// Every other one must name a key, or loading fails.
pub const NOT_CONFIG_VARIABLES: &[&str] = &[
    "SWITCHBOARD_CONFIG",
    "SWITCHBOARD_URL",
    "SWITCHBOARD_LOG",
    "SWITCHBOARD_BIN",
    "SWITCHBOARD_KEEP_LOGS",
    "SWITCHBOARD_TEST_LOGS",
    "SWITCHBOARD_TEST_REDIS_PORTS",
];

/// Sections whose keys may also be set as `SWITCHBOARD_<SECTION>_<KEY>` (one underscore).
const ALIASED_SECTIONS: [&str; 2] = ["redis", "persistence"];

/// What `check-config` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// The whole configuration of one switchboard node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub bind: String,
    /// Length of the TCP listen queue (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Name of this node in `info` and logs (defaults to a random id).
    pub node_name: String,
    /// HMAC secret for HS256/384/512 tokens.
    pub token_hmac_secret: String,
    /// RSA public key (PEM text, or a path to a PEM file) for RS256/384/512 tokens.
    pub token_rsa_public_key: String,
    /// ECDSA public key (PEM text, or a path to a PEM file) for ES256/384 tokens.
    pub token_ecdsa_public_key: String,
    /// JWKS endpoint; keys are cached and refetched on an unknown `kid`.
    pub token_jwks_url: String,
    /// How long JWKS keys are cached.
    #[serde(with = "duration")]
    pub token_jwks_cache_ttl: Duration,
    /// Required `aud` claim, when set.
    pub token_audience: String,
    /// Required `iss` claim, when set.
    pub token_issuer: String,
    /// Clock skew tolerated when checking a token's `exp`, `nbf` and `iat`: a backend
    /// whose clock runs a few milliseconds ahead stamps whole-second `iat`/`nbf` one
    /// second in this node's future near every second boundary.
    #[serde(with = "duration")]
    pub token_leeway: Duration,
    /// How long a revocation (`revoke_token`, `invalidate_user_tokens`) given no
    /// `expire_at` is remembered.
    #[serde(with = "duration")]
    pub token_revocation_ttl: Duration,
    /// Server API key (one).
    pub api_key: String,
    /// Server API keys (several, for rotation).
    pub api_keys: Vec<String>,
    /// Largest server API request body, in bytes; larger requests get 413.
    pub api_max_body_size: usize,
    /// How long a publish `idempotency_key` is remembered per channel: a retry with
    /// the same key within this window gets the first result and publishes nothing.
    #[serde(with = "duration")]
    pub api_idempotency_window: Duration,
    /// Browser origins allowed on the WebSocket and Socket.IO endpoints; empty allows
    /// any. Socket.IO long-polling grants credentials only to origins listed by name
    /// (see [`crate::transport::origin_allowed`]).
    pub allowed_origins: Vec<String>,
    /// Channels every connection joins on connect, as claim templates.
    pub auto_subscribe: Vec<String>,
    /// Heartbeats and connection timing.
    pub client: ClientConfig,
    /// Per-connection limits.
    pub limits: LimitsConfig,
    /// The TCP and HTTP front door: timeouts, connection caps and rates.
    pub network: NetworkConfig,
    /// WebSocket options: permessage-deflate compression (off by default).
    pub websocket: WebSocketConfig,
    /// Serving `https`/`wss` directly; off while `tls.cert` is empty.
    pub tls: TlsConfig,
    /// Channel namespaces: the part of a channel name before the first `:`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Memory all channel histories may hold together, in bytes; past it the oldest
    /// publications are evicted first (see docs/config.md).
    pub history_max_bytes: usize,
    /// Online/offline status of users.
    pub user_status: UserStatusConfig,
    /// Proxies of a connection to the app backend: `connect` and `refresh`.
    pub proxy: ConnectionProxies,
    /// Named proxies to the app backend, referred to by namespaces
    /// (`subscribe_proxy`, `sub_refresh_proxy`, `publish_proxy`) and by `rpc_proxies`.
    pub proxies: BTreeMap<String, ProxyConfig>,
    /// RPC methods forwarded to a named proxy: an exact method name, or a prefix
    /// ending in `*` (`"conversation:*"`, `"*"`). The longest match wins.
    pub rpc_proxies: BTreeMap<String, String>,
    /// Where channels, history and presence live: `memory` (one node) or `redis`
    /// (several nodes sharing one Redis; see docs/scaling.md).
    pub engine: EngineKind,
    /// The Redis engine's connection and keys (used when `engine = "redis"`).
    pub redis: RedisConfig,
    /// The memory engine's data directory and durability (off by default).
    pub persistence: PersistenceConfig,
    /// How long a presence entry lives unless its node refreshes it: after a node dies,
    /// its clients leave presence within this lease (plus one sweep, a quarter of it).
    #[serde(with = "duration")]
    pub presence_lease: Duration,
    /// Time allowed to drain connections on SIGINT/SIGTERM.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Socket.IO event routes.
    pub socketio: SocketIoConfig,
    /// The Pusher apps served at `/app/<key>` and `/apps/<app_id>` (off by default).
    pub pusher: PusherConfig,
    /// Lifecycle webhooks to the app backend (see docs/webhooks.md).
    pub webhooks: WebhooksConfig,
    /// Which HTTP-streaming, SSE and unidirectional endpoints are served (see
    /// docs/protocol.md); `/connection/websocket` and `/socket.io/` always are.
    pub transports: TransportsConfig,
    /// The operator console at `/admin` (see docs/admin.md); off by default.
    pub admin: AdminConfig,
}

/// The operator console at `/admin`: its login, sessions and live feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the console; refused at start without a `password`.
    pub enabled: bool,
    /// The password the login form asks for.
    pub password: String,
    /// Key that signs console sessions and connection tokens. Empty: a random key per
    /// process, so sessions end with a restart and are valid on this node only; set the
    /// same secret on every node behind one load balancer.
    pub secret: String,
    /// How long a login lasts.
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// Login attempts per minute from one client address, right or wrong; more get 429.
    pub login_attempts_per_minute: u32,
    /// How long the token the console connects its WebSocket with may wait to be used.
    #[serde(with = "duration")]
    pub token_ttl: Duration,
    /// How often the node pushes the views a console watches (nothing is computed while
    /// no console watches).
    #[serde(with = "duration")]
    pub stats_interval: Duration,
    /// Most channels the channels view lists (those with the most subscribers).
    pub stats_channels: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            password: String::new(),
            secret: String::new(),
            session_ttl: Duration::from_secs(8 * 3600),
            login_attempts_per_minute: 10,
            token_ttl: Duration::from_secs(30),
            stats_interval: Duration::from_secs(2),
            stats_channels: 100,
        }
    }
}

impl AdminConfig {
    fn problems(&self) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.password.is_empty() {
            out.push("admin.enabled needs admin.password (SWITCHBOARD_ADMIN__PASSWORD)".to_owned());
        }
        if self.session_ttl.is_zero() || self.token_ttl.is_zero() {
            out.push("admin.session_ttl and admin.token_ttl must be positive".to_owned());
        }
        if self.stats_interval < Duration::from_millis(100) {
            out.push("admin.stats_interval must be at least 100ms".to_owned());
        }
        if self.login_attempts_per_minute == 0 {
            out.push("admin.login_attempts_per_minute must be at least 1".to_owned());
        }
        out
    }
}

/// The optional transports, each on by default so that the official SDKs' fallbacks
/// and one-way clients work without configuration. Each authenticates like WebSocket
/// (a token, or the connect proxy); turn off what an app does not use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportsConfig {
    /// `POST /connection/http_stream` with `POST /emulation`: centrifuge-js's
    /// `http_stream` fallback, JSON or Protobuf.
    pub http_stream: bool,
    /// `GET /connection/sse` with `POST /emulation`: centrifuge-js's `sse` fallback.
    pub sse: bool,
    /// `GET /connection/uni_websocket`: pushes only, the connect request as the first
    /// message (or in `cf_connect`).
    pub uni_websocket: bool,
    /// `GET /connection/uni_sse` (connect request in `cf_connect`) or `POST` (in the
    /// body): pushes only, as server-sent events.
    pub uni_sse: bool,
    /// `POST /connection/uni_http_stream`: pushes only, newline-delimited JSON.
    pub uni_http_stream: bool,
}

impl Default for TransportsConfig {
    fn default() -> Self {
        Self {
            http_stream: true,
            sse: true,
            uni_websocket: true,
            uni_sse: true,
            uni_http_stream: true,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Which engine carries channels, history and presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In this process: one node.
    #[default]
    Memory,
    /// In Redis: every node on the same Redis and prefix is one gateway.
    Redis,
}

/// The Redis engine's connection and keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL: `redis://[:password@]host:port[/db]`, or `rediss://` for TLS. With
    /// `cluster`, one or more nodes of the cluster separated by commas (seed nodes: the
    /// rest is discovered).
    pub url: String,
    /// `url` names a Redis Cluster: keys are spread over its shards (each channel's
    /// keys on one slot) and channel traffic uses sharded pub/sub (Redis 7).
    pub cluster: bool,
    /// Prefix of every key and pub/sub channel, so several apps can share one Redis.
    pub prefix: String,
    /// Time allowed to open a connection to Redis.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for one Redis command; past it the operation fails as
    /// "engine unavailable".
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// With `rediss://`: a PEM file of the certificate authorities that sign Redis's
    /// certificate (empty: the system's trusted roots).
    pub tls_ca: String,
    /// With `rediss://`: a PEM client certificate, for a Redis that requires one
    /// (`tls-auth-clients yes`); set together with `tls_key`.
    pub tls_cert: String,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: String,
}

/// `scheme://user:password@host...` with the password replaced by [`REDACTED`].
fn hide_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{host}"),
        None => url.to_owned(),
    }
}

impl RedisConfig {
    /// The URLs in `url` (several only with `cluster`).
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let urls = self.urls();
        if urls.is_empty() {
            out.push("redis.url must not be empty".to_owned());
        }
        if urls.len() > 1 && !self.cluster {
            out.push("redis.url lists several nodes: set redis.cluster = true".to_owned());
        }
        // A brace in the prefix would become the hash tag of every key: the whole
        // gateway on one slot of the cluster.
        if self.cluster && self.prefix.contains(['{', '}']) {
            out.push("redis.prefix must not contain { or } with redis.cluster".to_owned());
        }
        let tls_files = !self.tls_ca.is_empty() || !self.tls_cert.is_empty();
        if tls_files && !urls.iter().all(|u| u.starts_with("rediss://")) {
            out.push("redis.tls_ca/tls_cert need rediss:// URLs in redis.url".to_owned());
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            out.push("redis.tls_cert and redis.tls_key go together".to_owned());
        }
        out
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            cluster: false,
            prefix: "switchboard".to_owned(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// Heartbeats and connection timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Interval between server pings.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// Time a client has to answer a ping before it is disconnected (3012).
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// Time allowed between opening the socket and the connect command (3502).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Grace after a connection or subscription token's `exp` before closing with 3005
    /// or 3006: clients refresh right at `ttl`, so closing at `exp` would race them.
    #[serde(with = "duration")]
    pub expired_close_delay: Duration,
}

/// Limits per connection and per user. `0` disables a count limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest frame a client may send, in bytes (3506).
    pub max_message_size: usize,
    /// Channels one connection may hold (error 106, or 3505 on connect).
    pub max_channels_per_connection: usize,
    /// Commands per second per connection, sustained (error 111).
    pub command_rate: u32,
    /// Commands a connection may burst above the rate.
    pub command_burst: u32,
    /// Connections one user may hold at once (3504).
    pub max_connections_per_user: usize,
    /// Frames queued for one connection before it is disconnected as slow (3008).
    pub outbox_size: usize,
    /// Bytes queued for one connection before it is disconnected as slow (3008). One
    /// item is always accepted into an empty outbox, whatever its size.
    pub outbox_max_bytes: usize,
    /// Bytes queued for all connections together; past it, a connection holding more
    /// than 1/16 of `outbox_max_bytes` that is sent more is disconnected (3008), so the
    /// largest backlogs go first and memory stays bounded (0 = no global budget).
    pub outbox_total_bytes: usize,
    /// Protocol errors (malformed, unknown, rate-limited commands) before disconnect (3501).
    pub max_protocol_errors: u32,
    /// Longest channel name, in bytes.
    pub max_channel_length: usize,
    /// Deepest tags filter a subscribe request may carry (a lone comparison is 1);
    /// deeper ones get error 107.
    pub tags_filter_max_depth: usize,
    /// Largest tags filter a subscribe request may carry, in nodes plus `in`/`nin`
    /// values; larger ones get error 107.
    pub tags_filter_max_size: usize,
}

/// The TCP and HTTP front door. `0` disables a count or rate limit.
///
/// Per-IP limits see the proxy's address behind a reverse proxy, so they are off by
/// default; enable them when clients connect directly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Time allowed for a request's headers, counted from when the server starts
    /// waiting for them: it also closes an idle TCP connection that sends no request,
    /// and a keep-alive connection idle between requests.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Time allowed for a request's body after its headers (an API call whose body
    /// stalls is cut).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// How long a socket the server closes keeps reading and discarding input, so a
    /// client still sending gets the close frame or response instead of a reset.
    #[serde(with = "duration")]
    pub close_linger: Duration,
    /// Open TCP connections at most (lingering ones included); more are answered
    /// `503` with `Retry-After` and closed. `0`: the open-files limit minus 64.
    pub max_connections: usize,
    /// New TCP connections per second from one IP address, sustained (0 = unlimited).
    pub connection_rate_per_ip: u32,
    /// New TCP connections one IP address may open at once above the rate.
    pub connection_burst_per_ip: u32,
    /// New WebSocket connections and Socket.IO handshakes per second from one IP
    /// address, sustained (0 = unlimited); more get `503` with `Retry-After`.
    pub handshake_rate_per_ip: u32,
    /// Handshakes one IP address may make at once above the rate.
    pub handshake_burst_per_ip: u32,
    /// Socket.IO sessions that have not joined the namespace with a token yet, at
    /// most, node-wide; more handshakes get `503` (0 = unlimited).
    pub max_pending_sessions: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            close_linger: Duration::from_secs(2),
            max_connections: 0,
            connection_rate_per_ip: 0,
            connection_burst_per_ip: 0,
            handshake_rate_per_ip: 0,
            handshake_burst_per_ip: 0,
            max_pending_sessions: 10_000,
        }
    }
}

/// Serving `https` and `wss` directly with rustls (see [`crate::tls`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first; empty serves plain HTTP.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the two files' modification times are checked: a change reloads
    /// them without a restart (new connections get the new certificate).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

/// Online/offline status of users: queries, and pushes to `status:<user>` channels.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserStatusConfig {
    /// Whether clients may call the `user_status` RPC method.
    pub query: bool,
    /// Namespace into which status changes are published as `<namespace>:<user>`
    /// (only when that namespace is configured, which decides who may watch).
    pub namespace: String,
    /// A channel into which every status change is also published (empty: none): a
    /// global feed for apps that show who comes and goes (`user_online`, `user_offline`).
    pub feed: String,
    /// How long a user must stay without connections before going offline, so a page
    /// reload does not flap offline/online.
    #[serde(with = "duration")]
    pub offline_debounce: Duration,
    /// How long the last-seen time of an offline user is remembered.
    #[serde(with = "duration")]
    pub last_seen_ttl: Duration,
}

impl Default for UserStatusConfig {
    fn default() -> Self {
        Self {
            query: false,
            namespace: "status".to_owned(),
            feed: String::new(),
            offline_debounce: Duration::from_secs(5),
            last_seen_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The connection-wide proxies; an empty `url` leaves one off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionProxies {
    /// Authenticates a client that connects without a token.
    pub connect: ProxyConfig,
    /// Extends (or ends) a connection the connect proxy gave an `expire_at`.
    pub refresh: ProxyConfig,
    /// When the refresh proxy fails, how long until it is asked again (the
    /// connection stays meanwhile).
    #[serde(with = "duration")]
    pub refresh_retry_interval: Duration,
}

impl Default for ConnectionProxies {
    fn default() -> Self {
        Self {
            connect: ProxyConfig::default(),
            refresh: ProxyConfig::default(),
            refresh_retry_interval: Duration::from_secs(10),
        }
    }
}

/// One HTTP endpoint of the app backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// `http://` or `https://` URL the request is POSTed to; empty: off.
    pub url: String,
    /// Longest wait for the whole answer; past it the client gets error 100.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Headers of the client's HTTP request (WebSocket upgrade or Socket.IO
    /// handshake) copied into the proxy request, by name (`Cookie`, `Authorization`).
    pub headers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: Duration::from_secs(1),
            headers: Vec::new(),
        }
    }
}

impl ProxyConfig {
    /// Whether this proxy is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn validate(&self, what: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError(format!(
                "{what}.url must be an http:// or https:// URL"
            )));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError(format!("{what}.timeout must be positive")));
        }
        Ok(())
    }
}

/// Rules and features of one namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Who may subscribe: claim templates the channel must equal (`user:{sub}`,
    /// `tenant:{tenant}`, `role:{roles}`), or `"*"` for any authenticated user.
    /// A valid subscription token for the channel is always accepted.
    pub subscribe: Vec<String>,
    /// Whether subscribers may publish from the client.
    pub publish: bool,
    /// Whether presence is kept for the channel.
    pub presence: bool,
    /// Whether join and leave pushes are sent to subscribers.
    pub join_leave: bool,
    /// Publications kept per channel (0 = no history).
    pub history_size: usize,
    /// How long publications are kept.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// Client publications per second per connection in this namespace (0 = unlimited).
    pub publish_rate: u32,
    /// Join and leave per user rather than per connection: join when a user's first
    /// connection subscribes, leave when the last one leaves. Needs `presence`.
    pub presence_per_user: bool,
    /// Client publications are typing signals: never stored, forwarded at most once per
    /// `typing_interval` per user, and ended by the server after `typing_timeout`.
    pub typing: bool,
    /// Least time between two forwarded typing signals of one user in one channel.
    #[serde(with = "duration")]
    pub typing_interval: Duration,
    /// Time after the last signal at which the server sends `{"typing":false}`.
    #[serde(with = "duration")]
    pub typing_timeout: Duration,
    /// Roles (`roles` claim) admitted to every channel of the namespace.
    pub subscribe_roles: Vec<String>,
    /// Named proxy (`[proxies.NAME]`) asked whether a client may subscribe, when
    /// neither a subscription token nor `subscribe`/`subscribe_roles` admits it.
    pub subscribe_proxy: String,
    /// How long a positive subscribe-proxy answer is reused for the same user and
    /// channel (0: ask every time).
    #[serde(with = "duration")]
    pub subscribe_proxy_cache_ttl: Duration,
    /// Named proxy asked every `sub_refresh_interval` whether a subscription made
    /// through `subscribe_proxy` may go on.
    pub sub_refresh_proxy: String,
    /// Interval of the sub-refresh proxy's checks.
    #[serde(with = "duration")]
    pub sub_refresh_interval: Duration,
    /// Named proxy every client publication goes through first.
    pub publish_proxy: String,
    /// Each subscriber user's delivered and read positions are kept per channel: a
    /// session that subscribes with no position gets what the user has not received
    /// yet (bounded by `history_size` and `history_ttl`, which it needs). See
    /// docs/protocol.md, "Inbox".
    pub inbox: bool,
    /// In an `inbox` namespace: each member's read position is pushed to the
    /// channel's subscribers when it advances, and the server API lists them.
    pub read_receipts: bool,
    /// Subscribers may send a tags filter (`tf`, centrifuge-js `tagsFilter`) and get
    /// only the publications whose tags pass it; without it a filter gets error 107.
    pub allow_tags_filter: bool,
    /// Delta encodings subscribers may negotiate (`["fossil"]`): a subscriber that asks
    /// for one gets publications as deltas of the previous one. Needs history.
    pub allowed_delta_types: Vec<String>,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            subscribe: Vec::new(),
            publish: false,
            presence: false,
            join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            publish_rate: 0,
            presence_per_user: false,
            typing: false,
            typing_interval: Duration::from_secs(1),
            typing_timeout: Duration::from_secs(5),
            subscribe_roles: Vec::new(),
            subscribe_proxy: String::new(),
            subscribe_proxy_cache_ttl: Duration::ZERO,
            sub_refresh_proxy: String::new(),
            sub_refresh_interval: Duration::from_secs(60),
            publish_proxy: String::new(),
            inbox: false,
            read_receipts: false,
            allow_tags_filter: false,
            allowed_delta_types: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "user".to_owned(),
            NamespaceConfig {
                subscribe: vec!["user:{sub}".to_owned()],
                history_size: 100,
                history_ttl: Duration::from_secs(24 * 3600),
                inbox: true,
                ..NamespaceConfig::default()
            },
        );
        Self {
            bind: "127.0.0.1:8000".to_owned(),
            listen_backlog: 4096,
            node_name: String::new(),
            token_hmac_secret: String::new(),
            token_rsa_public_key: String::new(),
            token_ecdsa_public_key: String::new(),
            token_jwks_url: String::new(),
            token_jwks_cache_ttl: Duration::from_secs(3600),
            token_audience: String::new(),
            token_issuer: String::new(),
            token_leeway: Duration::from_secs(5),
            token_revocation_ttl: Duration::from_secs(7 * 24 * 3600),
            api_key: String::new(),
            api_keys: Vec::new(),
            api_max_body_size: 1024 * 1024,
            api_idempotency_window: Duration::from_secs(300),
            allowed_origins: Vec::new(),
            auto_subscribe: vec!["user:{sub}".to_owned()],
            client: ClientConfig::default(),
            limits: LimitsConfig::default(),
            network: NetworkConfig::default(),
            websocket: WebSocketConfig::default(),
            tls: TlsConfig::default(),
            namespaces,
            history_max_bytes: 256 * 1024 * 1024,
            user_status: UserStatusConfig::default(),
            proxy: ConnectionProxies::default(),
            proxies: BTreeMap::new(),
            rpc_proxies: BTreeMap::new(),
            engine: EngineKind::Memory,
            redis: RedisConfig::default(),
            persistence: PersistenceConfig::default(),
            presence_lease: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            socketio: SocketIoConfig::default(),
            pusher: PusherConfig::default(),
            webhooks: WebhooksConfig::default(),
            admin: AdminConfig::default(),
            transports: TransportsConfig::default(),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: 65536,
            max_channels_per_connection: 128,
            command_rate: 100,
            command_burst: 200,
            max_connections_per_user: 64,
            outbox_size: 1024,
            outbox_max_bytes: 4 * 1024 * 1024,
            outbox_total_bytes: 512 * 1024 * 1024,
            max_protocol_errors: 20,
            max_channel_length: 255,
            tags_filter_max_depth: 8,
            tags_filter_max_size: 64,
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (if any), then `SWITCHBOARD_*` variables, then `overrides`.
    ///
    /// Nested keys use `__` in variables: `SWITCHBOARD_LIMITS__OUTBOX_SIZE=256`.
    ///
    /// # Errors
    /// An unreadable file, an unknown key or a value of the wrong type.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!("file {} not found", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        // Every SWITCHBOARD_* variable but a few is configuration; an unknown one fails
        // through the structs' deny_unknown_fields (a typo must not pass silently).
        // `SWITCHBOARD_REDIS_<KEY>` and `SWITCHBOARD_PERSISTENCE_<KEY>` are left to the
        // section providers below, whose deny_unknown_fields refuse a typo there.
        fig = fig.merge(Env::prefixed("SWITCHBOARD_").split("__").filter(|k| {
            let key = k.as_str();
            let section_alias = ALIASED_SECTIONS.iter().any(|section| {
                key.len() > section.len() + 1
                    && key
                        .get(..section.len())
                        .is_some_and(|k| k.eq_ignore_ascii_case(section))
                    && key.as_bytes().get(section.len()) == Some(&b'_')
            });
            !section_alias
                && !NOT_CONFIG_VARIABLES
                    .iter()
                    .any(|v| key.eq_ignore_ascii_case(&v["SWITCHBOARD_".len()..]))
        }));
        // `SWITCHBOARD_REDIS_URL` reads more naturally than `SWITCHBOARD_REDIS__URL`
        // (both work): one underscore after a section's name names one of its keys.
        for section in ALIASED_SECTIONS {
            fig = fig.merge(
                Env::prefixed(&format!("SWITCHBOARD_{}_", section.to_ascii_uppercase()))
                    .filter(|k| !k.as_str().starts_with('_'))
                    .map(move |k| format!("{section}.{k}").into()),
            );
        }
        for (key, value) in overrides {
            fig = fig.merge(Serialized::default(key, value));
        }
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError(diagnose::describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// A copy with every secret replaced by [`REDACTED`], fit to print.
    pub fn redacted(&self) -> Config {
        let hide = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                REDACTED.to_owned()
            }
        };
        Config {
            token_hmac_secret: hide(&self.token_hmac_secret),
            api_key: hide(&self.api_key),
            api_keys: self.api_keys.iter().map(|k| hide(k)).collect(),
            pusher: PusherConfig {
                secret: hide(&self.pusher.secret),
                apps: self
                    .pusher
                    .apps
                    .iter()
                    .map(|(name, app)| {
                        let app = PusherAppConfig {
                            secret: hide(&app.secret),
                            ..app.clone()
                        };
                        (name.clone(), app)
                    })
                    .collect(),
                ..self.pusher.clone()
            },
            webhooks: WebhooksConfig {
                endpoints: self
                    .webhooks
                    .endpoints
                    .iter()
                    .map(|(name, e)| {
                        let e = WebhookEndpointConfig {
                            secret: hide(&e.secret),
                            ..e.clone()
                        };
                        (name.clone(), e)
                    })
                    .collect(),
                ..self.webhooks.clone()
            },
            redis: RedisConfig {
                url: self
                    .redis
                    .urls()
                    .into_iter()
                    .map(hide_url_password)
                    .collect::<Vec<_>>()
                    .join(","),
                ..self.redis.clone()
            },
            admin: AdminConfig {
                password: hide(&self.admin.password),
                secret: hide(&self.admin.secret),
                ..self.admin.clone()
            },
            ..self.clone()
        }
    }

    /// Checks what types alone cannot.
    ///
    /// # Errors
    /// A value that would make the server misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.limits.tags_filter_max_depth == 0 || self.limits.tags_filter_max_size == 0 {
            errors.push(
                "limits.tags_filter_max_depth and limits.tags_filter_max_size must be at least 1"
                    .to_owned(),
            );
        }
        if self.limits.outbox_size == 0 {
            errors.push("limits.outbox_size must be at least 1".to_owned());
        }
        if self.limits.max_message_size < 128 {
            errors.push("limits.max_message_size must be at least 128".to_owned());
        }
        if self.network.header_read_timeout.is_zero() || self.network.body_read_timeout.is_zero() {
            return Err(ConfigError(
                "network.header_read_timeout and network.body_read_timeout must be positive".into(),
            ));
        }
        if self.tls.cert.as_os_str().is_empty() != self.tls.key.as_os_str().is_empty() {
            errors.push("tls.cert and tls.key must be set together".to_owned());
        }
        if self.tls.enabled() && self.tls.reload_interval.is_zero() {
            errors.push("tls.reload_interval must be positive".to_owned());
        }
        if self.api_max_body_size == 0 {
            errors.push("api_max_body_size must be positive".to_owned());
        }
        if self.presence_lease < Duration::from_millis(100) {
            return Err(ConfigError("presence_lease must be at least 100ms".into()));
        }
        if self.engine == EngineKind::Redis && self.redis.prefix.is_empty() {
            return Err(ConfigError("redis.prefix must not be empty".into()));
        }
        if self.engine == EngineKind::Redis {
            errors.extend(self.redis.problems());
        }
        errors.extend(self.persistence.errors());
        errors.extend(self.websocket.errors());
        // The Redis engine keeps histories and last-seen times in Redis already.
        if self.engine == EngineKind::Redis && self.persistence.enabled() {
            errors.push(
                "persistence.dir: only the memory engine persists to disk (engine = \"redis\" keeps its state in Redis)"
                    .to_owned(),
            );
        }
        if self.client.ping_interval.is_zero() {
            errors.push("client.ping_interval must be positive".to_owned());
        }
        for (name, ns) in &self.namespaces {
            if name.is_empty() || !name.bytes().all(crate::channel::is_name_byte) {
                errors.push(format!("namespace name {name:?} is invalid"));
            }
            if ns.presence_per_user && !ns.presence {
                errors.push(format!(
                    "namespaces.{name}: presence_per_user needs presence = true"
                ));
            }
            if ns.typing && ns.typing_timeout.is_zero() {
                errors.push(format!(
                    "namespaces.{name}: typing needs a positive typing_timeout"
                ));
            }
            if ns.history_size > 0 && ns.history_ttl.is_zero() {
                errors.push(format!(
                    "namespaces.{name}: history_size needs a positive history_ttl"
                ));
            }
            if ns.inbox && (ns.history_size == 0 || ns.history_ttl.is_zero()) {
                errors.push(format!(
                    "namespaces.{name}: inbox needs history (history_size and history_ttl)"
                ));
            }
            if let Some(t) = ns
                .allowed_delta_types
                .iter()
                .find(|t| t.as_str() != "fossil")
            {
                errors.push(format!(
                    "namespaces.{name}: allowed_delta_types knows only \"fossil\", not {t:?}"
                ));
            }
            if !ns.allowed_delta_types.is_empty()
                && (ns.history_size == 0 || ns.history_ttl.is_zero())
            {
                errors.push(format!(
                    "namespaces.{name}: allowed_delta_types needs history (history_size and history_ttl)"
                ));
            }
            if ns.read_receipts && !ns.inbox {
                errors.push(format!(
                    "namespaces.{name}: read_receipts needs inbox = true"
                ));
            }
            for t in ns.subscribe.iter().filter(|t| t.as_str() != "*") {
                let key = format!("namespaces.{name}.subscribe");
                errors.extend(self.template_error(&key, t, Some(name)));
            }
            let named = [
                ("subscribe_proxy", &ns.subscribe_proxy),
                ("sub_refresh_proxy", &ns.sub_refresh_proxy),
                ("publish_proxy", &ns.publish_proxy),
            ];
            for (key, proxy) in named {
                if !proxy.is_empty() && !self.proxies.contains_key(proxy) {
                    errors.push(format!(
                        "namespaces.{name}.{key}: no proxy {proxy:?} in [proxies]"
                    ));
                }
            }
            if !ns.sub_refresh_proxy.is_empty() && ns.sub_refresh_interval.is_zero() {
                errors.push(format!(
                    "namespaces.{name}: sub_refresh_proxy needs a positive sub_refresh_interval"
                ));
            }
        }
        if let Err(e) = self.proxy.connect.validate("proxy.connect") {
            errors.push(e.0);
        }
        if let Err(e) = self.proxy.refresh.validate("proxy.refresh") {
            errors.push(e.0);
        }
        for (name, proxy) in &self.proxies {
            if !proxy.enabled() {
                errors.push(format!("proxies.{name}.url is required"));
            }
            if let Err(e) = proxy.validate(&format!("proxies.{name}")) {
                errors.push(e.0);
            }
        }
        for (method, proxy) in &self.rpc_proxies {
            if !self.proxies.contains_key(proxy) {
                errors.push(format!(
                    "rpc_proxies.{method:?}: no proxy {proxy:?} in [proxies]"
                ));
            }
        }
        for t in &self.auto_subscribe {
            errors.extend(self.template_error("auto_subscribe", t, None));
        }
        errors.extend(self.socketio.pushes.errors());
        errors.extend(self.pusher.errors());
        errors.extend(self.webhooks.errors(&self.namespaces));
        // The webhooks' shared view (who is online, which channels are occupied, the
        // queues) uses one Redis connection; on a cluster it would reach one shard only.
        if !self.webhooks.endpoints.is_empty()
            && self.engine == EngineKind::Redis
            && self.redis.cluster
        {
            errors.push(
                "webhooks: not supported yet with redis.cluster = true (one redis-server only)"
                    .to_owned(),
            );
        }
        errors.extend(self.admin.problems());
        if self.namespaces.contains_key(crate::admin::FEED_NAMESPACE) {
            errors.push(format!(
                "namespace {:?} is reserved for the admin console's feed",
                crate::admin::FEED_NAMESPACE
            ));
        }
        let feed = &self.user_status.feed;
        if !feed.is_empty()
            && !self
                .namespaces
                .contains_key(crate::channel::namespace(feed))
        {
            errors.push(format!(
                "user_status.feed: {feed:?} is in no configured namespace"
            ));
        }
        if !self.socketio.recovery_window.is_zero() && self.socketio.recovery_max_publications == 0
        {
            errors.push(
                "socketio.recovery_max_publications: must be at least 1 with a recovery_window"
                    .to_owned(),
            );
        }
        for (i, route) in self.socketio.routes.iter().enumerate() {
            let key = format!("socketio.routes[{i}]");
            errors.extend(crate::transport::socketio::route_errors(&key, route));
            let ns = crate::channel::namespace(&route.channel);
            if route.channel.contains(':') && !ns.contains('{') && !self.namespaces.contains_key(ns)
            {
                errors.push(format!(
                    "{key}.channel: {:?} is in namespace {ns:?}, which is not configured",
                    route.channel
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors.join("\n")))
        }
    }

    /// Why the channel template `t` under `key` can never match what its author meant:
    /// an unknown claim, or a namespace that is not configured (or, in a namespace's
    /// `subscribe`, another namespace than `within`).
    fn template_error(&self, key: &str, t: &str, within: Option<&str>) -> Option<String> {
        if let Err(e) = crate::rules::check_template(t) {
            return Some(format!("{key}: {t:?}: {e}"));
        }
        let ns = crate::channel::namespace(t);
        if ns.contains('{') {
            return None;
        }
        match within {
            Some(within) if ns != within => Some(format!(
                "{key}: {t:?} is in namespace {ns:?}, so it never allows a {within:?} channel"
            )),
            _ if !self.namespaces.contains_key(ns) => {
                let known: Vec<&str> = self.namespaces.keys().map(String::as_str).collect();
                Some(format!(
                    "{key}: {t:?} is in namespace {ns:?}, which is not configured (configured: {})",
                    known.join(", ")
                ))
            }
            _ => None,
        }
    }

    /// All configured API keys.
    pub fn api_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.api_key.as_str())
            .chain(self.api_keys.iter().map(String::as_str))
            .filter(|k| !k.is_empty())
    }

    /// Whether any token verification key is configured.
    pub fn has_token_key(&self) -> bool {
        !(self.token_hmac_secret.is_empty()
            && self.token_rsa_public_key.is_empty()
            && self.token_ecdsa_public_key.is_empty()
            && self.token_jwks_url.is_empty())
    }
}

/// Durations as `"25s"`, `"500ms"`, `"10m"`, `"24h"`, `"7d"` or a number of seconds.
mod duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_millis() != 0 {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        } else {
            s.serialize_str(&format!("{}s", d.as_secs()))
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid duration {t:?}: use a number with ms, s, m, h or d (\"25s\")"
                ))
            }),
        }
    }

    pub(super) fn parse(t: &str) -> Option<Duration> {
        let t = t.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let ms = match unit.trim() {
            "ms" => n,
            "" | "s" => n.checked_mul(1000)?,
            "m" => n.checked_mul(60_000)?,
            "h" => n.checked_mul(3_600_000)?,
            "d" => n.checked_mul(86_400_000)?,
            _ => return None,
        };
        Some(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by every test that loads configuration, since one of them sets
    /// `SWITCHBOARD_*` variables that the others would otherwise read.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn parses_durations() {
        assert_eq!(duration::parse("25s"), Some(Duration::from_secs(25)));
        assert_eq!(duration::parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration::parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(duration::parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(duration::parse("x"), None);
    }

    #[test]
    fn defaults_are_valid_and_safe() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.auto_subscribe, vec!["user:{sub}"]);
        assert_eq!(c.namespaces["user"].subscribe, vec!["user:{sub}"]);
        assert!(!c.namespaces["user"].publish);
    }

    #[test]
    fn file_overrides_defaults_and_keeps_user_namespace() {
        let dir = std::env::temp_dir().join(format!("sb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9\"\n[limits]\noutbox_size = 7\n[namespaces.chat]\nsubscribe = [\"*\"]\npublish = true\nhistory_size = 10\nhistory_ttl = \"1m\"\n",
        )
        .unwrap();
        let _env = env_lock();
        let c = Config::load(Some(&path), &[("bind", "127.0.0.1:10".into())]).unwrap();
        assert_eq!(c.bind, "127.0.0.1:10");
        assert_eq!(c.limits.outbox_size, 7);
        assert_eq!(c.limits.command_rate, 100);
        assert!(c.namespaces["chat"].publish);
        assert_eq!(c.namespaces["chat"].history_ttl, Duration::from_secs(60));
        assert!(c.namespaces.contains_key("user"));
    }

    #[test]
    fn example_file_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../switchboard.example.toml");
        let _env = env_lock();
        let example = Config::load(Some(&path), &[]).unwrap();
        let as_json = |c: &Config| serde_json::to_value(c).unwrap();
        assert_eq!(as_json(&example), as_json(&Config::default()));
    }

    fn load_toml(name: &str, text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sb-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), &[])
    }

    #[test]
    fn a_bad_log_format_lists_the_valid_ones() {
        let err = load_toml("fmt", "log_format = \"jsn\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`log_format`"), "{err}");
        assert!(err.contains("\"text\", \"json\""), "{err}");
        assert!(err.contains("did you mean \"json\""), "{err}");
    }

    #[test]
    fn templates_naming_unknown_claims_or_namespaces_are_errors() {
        let err = load_toml("auto", "auto_subscribe = [\"nope:{sub}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auto_subscribe"), "{err}");
        assert!(err.contains("\"nope\""), "{err}");
        let err = load_toml(
            "claim",
            "[namespaces.chat]\nsubscribe = [\"chat:{bogus}\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("namespaces.chat.subscribe"), "{err}");
        assert!(err.contains("{bogus}"), "{err}");
        let err = load_toml("other", "[namespaces.chat]\nsubscribe = [\"user:{sub}\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("namespaces.chat.subscribe"), "{err}");
        load_toml(
            "fine",
            "auto_subscribe = [\"user:{sub}\", \"role:{roles}\"]\n[namespaces.role]\nsubscribe = [\"role:{roles}\"]\n",
        )
        .unwrap();
    }

    #[test]
    fn an_inbox_needs_history_and_read_receipts_need_an_inbox() {
        let err = load_toml("inbox", "[namespaces.note]\ninbox = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("namespaces.note: inbox needs history"),
            "{err}"
        );
        let err = load_toml("receipts", "[namespaces.note]\nread_receipts = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("read_receipts needs inbox"), "{err}");
        load_toml(
            "inbox-ok",
            "[namespaces.note]\nhistory_size = 5\nhistory_ttl = \"1m\"\ninbox = true\nread_receipts = true\n",
        )
        .unwrap();
        assert!(
            Config::default().namespaces["user"].inbox,
            "the personal channel"
        );
    }

    #[test]
    fn the_admin_console_needs_a_password_and_its_secrets_are_redacted() {
        let mut c = Config::default();
        c.admin.enabled = true;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("admin.password"), "{err}");
        c.admin.password = "pw".into();
        c.admin.secret = "key".into();
        c.validate().unwrap();
        let shown = c.redacted();
        assert_eq!(
            (shown.admin.password.as_str(), shown.admin.secret.as_str()),
            (REDACTED, REDACTED)
        );
        c.admin.login_attempts_per_minute = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.namespaces.insert(
            crate::admin::FEED_NAMESPACE.into(),
            NamespaceConfig::default(),
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
    }

    #[test]
    fn admin_settings_come_from_variables() {
        let _env = env_lock();
        std::env::set_var("SWITCHBOARD_ADMIN__ENABLED", "true");
        std::env::set_var("SWITCHBOARD_ADMIN__PASSWORD", "s3cret");
        std::env::set_var("SWITCHBOARD_ADMIN__LOGIN_ATTEMPTS_PER_MINUTE", "3");
        let c = Config::load(None, &[]);
        std::env::remove_var("SWITCHBOARD_ADMIN__ENABLED");
        std::env::remove_var("SWITCHBOARD_ADMIN__PASSWORD");
        std::env::remove_var("SWITCHBOARD_ADMIN__LOGIN_ATTEMPTS_PER_MINUTE");
        let c = c.unwrap();
        assert!(c.admin.enabled);
        assert_eq!(c.admin.password, "s3cret");
        assert_eq!(c.admin.login_attempts_per_minute, 3);
    }

    #[test]
    fn redacted_hides_every_secret() {
        let c = Config {
            token_hmac_secret: "s".into(),
            api_key: "k".into(),
            api_keys: vec!["k2".into()],
            ..Config::default()
        }
        .redacted();
        assert_eq!(c.token_hmac_secret, REDACTED);
        assert_eq!(c.api_key, REDACTED);
        assert_eq!(c.api_keys, vec![REDACTED]);
        let pusher = Config {
            pusher: PusherConfig {
                app_id: "1".into(),
                key: "k".into(),
                secret: "s".into(),
                apps: [(
                    "shop".to_owned(),
                    PusherAppConfig {
                        secret: "s2".into(),
                        ..PusherAppConfig::default()
                    },
                )]
                .into(),
                ..PusherConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(pusher.redacted().pusher.secret, REDACTED);
        assert_eq!(pusher.redacted().pusher.apps["shop"].secret, REDACTED);
        assert_eq!(pusher.redacted().pusher.key, "k");
        assert_eq!(Config::default().redacted().api_key, "");
    }

    #[test]
    fn redis_tls_files_need_rediss_and_come_in_pairs() {
        let mut c = RedisConfig {
            tls_ca: "/ca.pem".into(),
            ..RedisConfig::default()
        };
        assert!(c.problems()[0].contains("rediss://"), "{:?}", c.problems());
        c.url = "rediss://127.0.0.1:6380".into();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.tls_cert = "/client.pem".into();
        assert!(c.problems()[0].contains("tls_key"), "{:?}", c.problems());
        c.tls_key = "/client.key".into();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    #[test]
    fn redacted_hides_redis_passwords() {
        let mut c = Config::default();
        c.redis.url = "redis://:pw@a:6379/0, rediss://app:pw2@b:7000,redis://c:7000".into();
        let url = c.redacted().redis.url;
        assert_eq!(
            url,
            format!("redis://:{REDACTED}@a:6379/0,rediss://app:{REDACTED}@b:7000,redis://c:7000")
        );
        assert!(!url.contains("pw"));
    }

    #[test]
    fn proxies_must_exist_and_be_http() {
        let mut c = Config::default();
        c.namespaces.get_mut("user").unwrap().subscribe_proxy = "missing".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("subscribe_proxy") && err.contains("missing"),
            "{err}"
        );

        let mut c = Config::default();
        c.rpc_proxies.insert("x:*".into(), "missing".into());
        assert!(c.validate().is_err());

        let mut c = Config::default();
        c.proxy.connect.url = "ftp://app".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("proxy.connect.url"));

        let mut c = Config::default();
        c.proxies.insert("app".into(), ProxyConfig::default());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("proxies.app.url"));
        c.proxies.get_mut("app").unwrap().url = "http://127.0.0.1:1/x".into();
        c.namespaces.get_mut("user").unwrap().subscribe_proxy = "app".into();
        c.validate().unwrap();
        c.proxies.get_mut("app").unwrap().timeout = Duration::ZERO;
        assert!(c.validate().is_err());
    }

    #[test]
    fn engine_and_redis_url_from_the_environment() {
        // The variables users and outside checks set.
        let _env = env_lock();
        std::env::set_var("SWITCHBOARD_ENGINE", "redis");
        std::env::set_var("SWITCHBOARD_REDIS_URL", "redis://10.0.0.1:6380");
        std::env::set_var("SWITCHBOARD_REDIS__PREFIX", "app1");
        let c = Config::load(None, &[]);
        std::env::remove_var("SWITCHBOARD_ENGINE");
        std::env::remove_var("SWITCHBOARD_REDIS_URL");
        std::env::remove_var("SWITCHBOARD_REDIS__PREFIX");
        let c = c.unwrap();
        assert_eq!(c.engine, EngineKind::Redis);
        assert_eq!(c.redis.url, "redis://10.0.0.1:6380");
        assert_eq!(c.redis.prefix, "app1");
        let err = Config::load(None, &[("engine", "redis2".into())]).unwrap_err();
        assert!(err.to_string().contains("redis2"), "{err}");
    }

    #[test]
    fn persistence_from_the_environment_and_its_limits() {
        let _env = env_lock();
        std::env::set_var("SWITCHBOARD_PERSISTENCE_DIR", "/var/lib/switchboard");
        std::env::set_var("SWITCHBOARD_PERSISTENCE__DURABILITY", "sync");
        std::env::set_var("SWITCHBOARD_PERSISTENCE_FLUSH_INTERVAL", "200ms");
        let c = Config::load(None, &[]);
        std::env::remove_var("SWITCHBOARD_PERSISTENCE_DIR");
        std::env::remove_var("SWITCHBOARD_PERSISTENCE__DURABILITY");
        std::env::remove_var("SWITCHBOARD_PERSISTENCE_FLUSH_INTERVAL");
        let mut c = c.unwrap();
        assert!(c.persistence.enabled());
        assert_eq!(c.persistence.dir, Path::new("/var/lib/switchboard"));
        assert_eq!(c.persistence.durability, Durability::Sync);
        assert_eq!(c.persistence.flush_interval, Duration::from_millis(200));
        assert!(!Config::default().persistence.enabled(), "off by default");
        c.persistence.flush_interval = Duration::ZERO;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("flush_interval"));
        c.persistence.flush_interval = Duration::from_secs(1);
        c.persistence.max_pending = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_pending"));
        c.persistence.max_pending = 1;
        c.validate().unwrap();
        c.engine = EngineKind::Redis;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("persistence.dir"));
        let err = Config::load(None, &[("persistence.durability", "fsync".into())]).unwrap_err();
        assert!(err.to_string().contains("\"sync\""), "{err}");
    }

    #[test]
    fn webhook_settings_come_from_variables_and_secrets_are_redacted() {
        let _env = env_lock();
        std::env::set_var("SWITCHBOARD_WEBHOOKS__BATCH_SIZE", "7");
        std::env::set_var("SWITCHBOARD_WEBHOOKS__BATCH_DELAY", "20ms");
        let c = Config::load(None, &[]);
        std::env::remove_var("SWITCHBOARD_WEBHOOKS__BATCH_SIZE");
        std::env::remove_var("SWITCHBOARD_WEBHOOKS__BATCH_DELAY");
        let mut c = c.unwrap();
        assert_eq!(c.webhooks.batch_size, 7);
        assert_eq!(c.webhooks.batch_delay, Duration::from_millis(20));
        c.webhooks.endpoints.insert(
            "app".into(),
            WebhookEndpointConfig {
                secret: "s3cret".into(),
                ..WebhookEndpointConfig::default()
            },
        );
        assert_eq!(c.redacted().webhooks.endpoints["app"].secret, REDACTED);
    }

    #[test]
    fn a_redis_cluster_from_the_environment() {
        let _env = env_lock();
        std::env::set_var("SWITCHBOARD_ENGINE", "redis");
        std::env::set_var("SWITCHBOARD_REDIS_CLUSTER", "true");
        std::env::set_var(
            "SWITCHBOARD_REDIS_URL",
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000",
        );
        let c = Config::load(None, &[]);
        std::env::remove_var("SWITCHBOARD_ENGINE");
        std::env::remove_var("SWITCHBOARD_REDIS_CLUSTER");
        std::env::remove_var("SWITCHBOARD_REDIS_URL");
        let c = c.unwrap();
        assert!(c.redis.cluster);
        assert_eq!(
            c.redis.urls(),
            vec!["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        // Several nodes are a cluster's seeds; without `cluster` they are a mistake.
        let mut c = c;
        c.redis.cluster = false;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis.cluster"), "{err}");
        c.redis.cluster = true;
        c.redis.prefix = "app{1}".into();
        assert!(c.validate().unwrap_err().to_string().contains("prefix"));
        // Webhooks keep their shared view on one redis-server only, for now.
        c.redis.prefix = "app".into();
        c.validate().expect("a valid cluster config");
        c.webhooks.endpoints.insert(
            "app".into(),
            WebhookEndpointConfig {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "s".into(),
                events: vec!["connect".into()],
                ..WebhookEndpointConfig::default()
            },
        );
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis.cluster"), "{err}");
    }

    #[test]
    fn the_pusher_app_comes_from_variables_and_is_set_whole() {
        let _env = env_lock();
        std::env::set_var("SWITCHBOARD_PUSHER__APP_ID", "7");
        std::env::set_var("SWITCHBOARD_PUSHER__KEY", "k");
        std::env::set_var("SWITCHBOARD_PUSHER__SECRET", "s");
        std::env::set_var("SWITCHBOARD_PUSHER__MAX_CLOCK_SKEW", "30s");
        // A second app, by name, as `[pusher.apps.shop]` in a file.
        std::env::set_var("SWITCHBOARD_PUSHER__APPS__SHOP__APP_ID", "8");
        std::env::set_var("SWITCHBOARD_PUSHER__APPS__SHOP__KEY", "k8");
        std::env::set_var("SWITCHBOARD_PUSHER__APPS__SHOP__SECRET", "s8");
        std::env::set_var("SWITCHBOARD_PUSHER__APPS__SHOP__SUBSCRIPTION_COUNT", "true");
        let c = Config::load(None, &[]);
        for v in [
            "APP_ID",
            "KEY",
            "SECRET",
            "MAX_CLOCK_SKEW",
            "APPS__SHOP__APP_ID",
            "APPS__SHOP__KEY",
            "APPS__SHOP__SECRET",
            "APPS__SHOP__SUBSCRIPTION_COUNT",
        ] {
            std::env::remove_var(format!("SWITCHBOARD_PUSHER__{v}"));
        }
        let c = c.unwrap();
        assert!(c.pusher.enabled());
        assert_eq!(
            (c.pusher.app_id.as_str(), c.pusher.secret.as_str()),
            ("7", "s")
        );
        let shop = c.pusher.app_by_key("k8").expect("the second app");
        assert_eq!((shop.id, shop.secret, shop.prefix), ("8", "s8", "shop"));
        assert!(shop.subscription_count);
        assert_eq!(c.pusher.max_clock_skew, Duration::from_secs(30));
        assert!(!Config::default().pusher.enabled(), "off by default");
        let mut half = c.clone();
        half.pusher.secret.clear();
        let err = half.validate().unwrap_err().to_string();
        assert!(err.contains("pusher"), "{err}");
        let mut odd = c.clone();
        odd.pusher.key = "a/b".into();
        assert!(odd.validate().is_err());
        let mut none = c.clone();
        none.pusher.max_batch_events = 0;
        assert!(none.validate().is_err());
        let mut never = c;
        never.pusher.subscription_count_interval = Duration::ZERO;
        assert!(never.validate().is_err());
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = std::env::temp_dir().join(format!("sb-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "bindd = \"x\"\n").unwrap();
        let _env = env_lock();
        let err = Config::load(Some(&path), &[]).unwrap_err();
        assert!(err.to_string().contains("`bindd`"), "{err}");
        assert!(err.to_string().contains("did you mean `bind`?"), "{err}");
    }
}
