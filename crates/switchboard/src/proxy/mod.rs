//! The app backend in the loop: HTTP POSTs to the app at named points of a session's
//! life (connect, refresh, subscribe, sub_refresh, publish, rpc), with Centrifugo's
//! proxy JSON ([`wire`]), so the app decides what its database knows.
//!
//! One [`ProxyError`] says how a call went wrong; the session maps it to what the
//! client sees. The HTTP client and header forwarding are meant for webhooks as well.

pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchboard_protocol::{Disconnect, SharedJson};

use crate::config::{Config, ProxyConfig};
use crate::metrics::Metrics;

/// Largest answer read from a backend, in bytes.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The points of a session's life at which a proxy is called, as metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// A client without a token connects.
    Connect,
    /// A proxied connection reaches its `expire_at`.
    Refresh,
    /// A client subscribes.
    Subscribe,
    /// A proxied subscription is checked again.
    SubRefresh,
    /// A client publishes.
    Publish,
    /// A client calls an RPC method.
    Rpc,
}

impl ProxyKind {
    /// Every kind, in the order of [`ProxyKind::index`].
    pub const ALL: [ProxyKind; 6] = [
        Self::Connect,
        Self::Refresh,
        Self::Subscribe,
        Self::SubRefresh,
        Self::Publish,
        Self::Rpc,
    ];

    /// The name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Refresh => "refresh",
            Self::Subscribe => "subscribe",
            Self::SubRefresh => "sub_refresh",
            Self::Publish => "publish",
            Self::Rpc => "rpc",
        }
    }

    /// Position in [`ProxyKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a proxy call ended, when it did not end with a `result`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// No complete answer within the proxy's `timeout`.
    #[error("timed out")]
    Timeout,
    /// The backend could not be reached (connection refused, reset, DNS).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The backend answered with a status other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer was not the expected JSON.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// The backend refused with an `error`.
    #[error("refused with {}", .0.code)]
    Refused(wire::ErrorBody),
    /// The backend asked to close the connection.
    #[error("disconnect {}", .0.code)]
    Disconnect(Disconnect),
}

impl ProxyError {
    /// The outcome's name in metrics (see [`crate::metrics::PROXY_OUTCOMES`]).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Status(_) => "bad_status",
            Self::BadAnswer(_) => "bad_answer",
            Self::Refused(_) => "refused",
            Self::Disconnect(_) => "disconnect",
        }
    }

    /// Whether the backend failed (rather than answered).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Refused(_) | Self::Disconnect(_))
    }
}

/// One configured backend endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Name in config (`connect`, `refresh`, or the key under `[proxies]`).
    pub name: String,
    url: String,
    timeout: Duration,
    /// Lowercase names of the client headers forwarded.
    headers: Vec<HeaderName>,
}

impl Endpoint {
    fn new(name: &str, config: &ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            url: config.url.clone(),
            timeout: config.timeout,
            headers: config
                .headers
                .iter()
                .filter_map(|h| HeaderName::try_from(h.as_str()).ok())
                .collect(),
        })
    }
}

/// What the client's HTTP request said, kept for the proxies of its connection:
/// the transport's name and the headers some proxy forwards.
#[derive(Debug, Clone)]
pub struct ClientOrigin {
    /// `websocket` or `socketio`.
    pub transport: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ClientOrigin {
    /// A WebSocket connection with no forwarded headers.
    pub const fn empty() -> Self {
        Self {
            transport: "websocket",
            headers: Vec::new(),
        }
    }
}

/// The proxies of a node, and the cache of positive subscribe answers.
pub struct Proxies {
    http: reqwest::Client,
    connect: Option<Arc<Endpoint>>,
    refresh: Option<Arc<Endpoint>>,
    named: HashMap<String, Arc<Endpoint>>,
    /// Method patterns, longest first: exact names, or prefixes ending in `*`.
    rpc: Vec<(String, Arc<Endpoint>)>,
    /// Every header some proxy forwards, so a connection keeps only those.
    forwarded: Vec<HeaderName>,
    cache: SubscribeCache,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxies")
            .field("connect", &self.connect.is_some())
            .field("named", &self.named.keys())
            .finish_non_exhaustive()
    }
}

impl Proxies {
    /// The proxies `config` names; none when nothing is configured.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let endpoint = |name: &str, c: &ProxyConfig| c.enabled().then(|| Endpoint::new(name, c));
        let named: HashMap<String, Arc<Endpoint>> = config
            .proxies
            .iter()
            .map(|(name, c)| (name.clone(), Endpoint::new(name, c)))
            .collect();
        let mut rpc: Vec<(String, Arc<Endpoint>)> = config
            .rpc_proxies
            .iter()
            .filter_map(|(method, proxy)| Some((method.clone(), named.get(proxy)?.clone())))
            .collect();
        // Exact names before patterns, then longer patterns first.
        rpc.sort_by_key(|(m, _)| (m.ends_with('*'), std::cmp::Reverse(m.len())));
        let connect = endpoint("connect", &config.proxy.connect);
        let refresh = endpoint("refresh", &config.proxy.refresh);
        let mut forwarded: Vec<HeaderName> = connect
            .iter()
            .chain(refresh.iter())
            .chain(named.values())
            .flat_map(|e| e.headers.iter().cloned())
            .collect();
        forwarded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        forwarded.dedup();
        Self {
            // Per-call timeouts come from each endpoint; no redirects to other hosts.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            connect,
            refresh,
            named,
            rpc,
            forwarded,
            cache: SubscribeCache::default(),
            metrics,
        }
    }

    /// The connect proxy, if configured.
    pub fn connect(&self) -> Option<&Arc<Endpoint>> {
        self.connect.as_ref()
    }

    /// The refresh proxy, if configured.
    pub fn refresh(&self) -> Option<&Arc<Endpoint>> {
        self.refresh.as_ref()
    }

    /// The named proxy `name` (empty: none).
    pub fn named(&self, name: &str) -> Option<&Arc<Endpoint>> {
        if name.is_empty() {
            return None;
        }
        self.named.get(name)
    }

    /// The proxy RPC `method` goes to, if any.
    pub fn rpc(&self, method: &str) -> Option<&Arc<Endpoint>> {
        self.rpc
            .iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => method.starts_with(prefix),
                None => pattern == method,
            })
            .map(|(_, e)| e)
    }

    /// Keeps what the proxies of a new connection need from its HTTP request.
    pub fn origin(&self, transport: &'static str, headers: &HeaderMap) -> ClientOrigin {
        ClientOrigin {
            transport,
            headers: self
                .forwarded
                .iter()
                .flat_map(|name| {
                    headers
                        .get_all(name)
                        .iter()
                        .map(move |v| (name.clone(), v.clone()))
                })
                .collect(),
        }
    }

    /// The HTTP client of every call to the app backend (webhooks share it).
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The cache of positive subscribe answers.
    pub fn cache(&self) -> &SubscribeCache {
        &self.cache
    }

    /// POSTs `body` to `endpoint` and reads its `result`. A missing `result` reads as
    /// `T::default()` unless `require_result`. Counted in metrics by kind and outcome.
    ///
    /// # Errors
    /// The backend's refusal or disconnect, or why it failed; never waits longer than
    /// the endpoint's `timeout`.
    pub async fn call<T: DeserializeOwned + Default + wire::Payloads>(
        &self,
        kind: ProxyKind,
        endpoint: &Endpoint,
        origin: &ClientOrigin,
        body: &impl Serialize,
        require_result: bool,
    ) -> Result<T, ProxyError> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(endpoint.timeout, self.post(endpoint, origin, body))
            .await
            .unwrap_or(Err(ProxyError::Timeout))
            .and_then(|answer| read_answer(&answer, require_result));
        let name = match &outcome {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics.proxy.record(kind, name);
        if let Err(e) = &outcome {
            if e.is_failure() {
                tracing::warn!(proxy = %endpoint.name, kind = kind.name(), error = %e,
                    elapsed_ms = started.elapsed().as_millis(), "proxy call failed");
            }
        }
        outcome
    }

    async fn post(
        &self,
        endpoint: &Endpoint,
        origin: &ClientOrigin,
        body: &impl Serialize,
    ) -> Result<Vec<u8>, ProxyError> {
        let json = serde_json::to_vec(body).map_err(|e| ProxyError::BadAnswer(e.to_string()))?;
        let mut req = self
            .http
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        for (name, value) in &origin.headers {
            if endpoint.headers.contains(name) {
                req = req.header(name, value);
            }
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| ProxyError::Unreachable(without_url(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ProxyError::Status(resp.status().as_u16()));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ProxyError::Unreachable(without_url(&e)))?
        {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ProxyError::BadAnswer("answer too large".into()));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }
}

/// A reqwest error's message without the URL (which may carry credentials).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

fn read_answer<T: DeserializeOwned + Default + wire::Payloads>(
    answer: &[u8],
    require_result: bool,
) -> Result<T, ProxyError> {
    let answer: wire::Answer<T> =
        serde_json::from_slice(answer).map_err(|e| ProxyError::BadAnswer(e.to_string()))?;
    if let Some(d) = answer.disconnect {
        let code = u16::try_from(d.code)
            .ok()
            .filter(|c| (3000..=4999).contains(c))
            .ok_or_else(|| ProxyError::BadAnswer(format!("disconnect code {}", d.code)))?;
        return Err(ProxyError::Disconnect(Disconnect {
            code,
            reason: crate::api::intern_reason(&d.reason),
        }));
    }
    if let Some(e) = answer.error {
        return Err(ProxyError::Refused(e));
    }
    match answer.result {
        Some(mut r) => {
            r.decode_b64().map_err(ProxyError::BadAnswer)?;
            Ok(r)
        }
        None if require_result => Err(ProxyError::BadAnswer("no result".into())),
        None => Ok(T::default()),
    }
}

/// Most entries the subscribe cache holds; past it, it is emptied.
const MAX_CACHED: usize = 100_000;

/// A user and a channel.
type UserChannel = (Arc<str>, Arc<str>);

/// Positive subscribe answers by (user, channel), each for its namespace's
/// `subscribe_proxy_cache_ttl`.
#[derive(Default)]
pub struct SubscribeCache {
    /// Short sections only: look up, insert.
    entries: Mutex<HashMap<UserChannel, Cached>>,
}

/// What a positive subscribe answer gives the subscriber.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// The subscriber's channel info.
    pub info: Option<SharedJson>,
    /// Sent to the client in the subscribe reply's `data`.
    pub data: Option<SharedJson>,
    /// Namespace options changed for this subscriber.
    pub overrides: wire::SubscribeOverride,
}

/// A positive subscribe answer.
#[derive(Clone)]
pub struct Cached {
    /// Until when it may be reused.
    until: Instant,
    /// What the backend gave.
    pub answer: Admitted,
}

impl SubscribeCache {
    /// A still valid answer for `user` in `channel`.
    pub fn get(&self, user: &Arc<str>, channel: &Arc<str>) -> Option<Cached> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(user.clone(), channel.clone()))
            .filter(|c| c.until > Instant::now())
            .cloned()
    }

    /// Remembers a positive answer for `ttl`.
    pub fn put(&self, user: Arc<str>, channel: Arc<str>, answer: Admitted, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, c| c.until > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(
            (user, channel),
            Cached {
                until: now + ttl,
                answer,
            },
        );
    }

    /// Forgets every answer for `user` (revocation).
    pub fn forget_user(&self, user: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(u, _), _| &**u != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_payloads_of_every_result_are_decoded_json_text() {
        // eyJhIjoxfQ== is `{"a":1}`; bm90IGpzb24= is `not json`.
        let json = |o: &Option<wire::RawJson>| {
            o.as_deref()
                .map(serde_json::value::RawValue::get)
                .map(str::to_owned)
        };
        let a = Some(r#"{"a":1}"#.to_owned());
        let r: wire::ConnectResult = read_answer(
            br#"{"result":{"user":"5","b64info":"eyJhIjoxfQ==","b64data":"eyJhIjoxfQ==",
                "subs":{"c:1":{"b64info":"eyJhIjoxfQ==","b64data":"eyJhIjoxfQ=="}}}}"#,
            true,
        )
        .unwrap();
        assert_eq!((json(&r.info), json(&r.data)), (a.clone(), a.clone()));
        assert_eq!(json(&r.subs["c:1"].info), a);
        assert_eq!(json(&r.subs["c:1"].data), a);
        let r: wire::RefreshResult =
            read_answer(br#"{"result":{"b64info":"eyJhIjoxfQ=="}}"#, false).unwrap();
        assert_eq!(json(&r.info), a);
        let r: wire::SubscribeResult = read_answer(
            br#"{"result":{"b64info":"eyJhIjoxfQ==","b64data":"eyJhIjoxfQ=="}}"#,
            false,
        )
        .unwrap();
        assert_eq!((json(&r.info), json(&r.data)), (a.clone(), a.clone()));
        let r: wire::PublishResult =
            read_answer(br#"{"result":{"b64data":"eyJhIjoxfQ=="}}"#, false).unwrap();
        assert_eq!(json(&r.data), a);
        for bad in [
            &br#"{"result":{"b64data":"bm90IGpzb24="}}"#[..],
            br#"{"result":{"b64data":"%%%"}}"#,
        ] {
            assert!(matches!(
                read_answer::<wire::PublishResult>(bad, false),
                Err(ProxyError::BadAnswer(_))
            ));
        }
        assert!(matches!(
            read_answer::<wire::ConnectResult>(
                br#"{"result":{"subs":{"c:1":{"b64info":"bm90IGpzb24="}}}}"#,
                true
            ),
            Err(ProxyError::BadAnswer(_))
        ));
    }

    #[test]
    fn answers_read_as_centrifugo_defines_them() {
        let r: wire::ConnectResult = read_answer(
            br#"{"result":{"user":"5","expire_at":7,"channels":["a:1"]}}"#,
            true,
        )
        .unwrap();
        assert_eq!((r.user.as_str(), r.expire_at), ("5", 7));
        assert!(matches!(
            read_answer::<wire::ConnectResult>(b"{}", true),
            Err(ProxyError::BadAnswer(_))
        ));
        assert!(read_answer::<wire::RpcResult>(b"{}", false).is_ok());
        let e = read_answer::<wire::RpcResult>(br#"{"error":{"code":1000,"message":"no"}}"#, false);
        assert!(matches!(e, Err(ProxyError::Refused(b)) if b.code == 1000));
        let d = read_answer::<wire::RpcResult>(
            br#"{"error":{"code":1},"disconnect":{"code":4501,"reason":"banned"}}"#,
            false,
        );
        assert!(
            matches!(d, Err(ProxyError::Disconnect(d)) if d.code == 4501 && d.reason == "banned")
        );
        let bad = read_answer::<wire::RpcResult>(br#"{"disconnect":{"code":1000}}"#, false);
        assert!(matches!(bad, Err(ProxyError::BadAnswer(_))));
        assert!(matches!(
            read_answer::<wire::RpcResult>(b"<html>", false),
            Err(ProxyError::BadAnswer(_))
        ));
    }

    #[test]
    fn rpc_methods_match_exact_names_then_longest_prefix() {
        let mut c = Config::default();
        for name in ["a", "b", "c"] {
            c.proxies.insert(
                name.into(),
                ProxyConfig {
                    url: format!("http://127.0.0.1:1/{name}"),
                    ..ProxyConfig::default()
                },
            );
        }
        c.rpc_proxies.insert("*".into(), "a".into());
        c.rpc_proxies.insert("conv:*".into(), "b".into());
        c.rpc_proxies.insert("conv:read".into(), "c".into());
        let p = Proxies::new(&c, Arc::default());
        let name = |m: &str| p.rpc(m).map(|e| e.name.clone());
        assert_eq!(name("conv:read").as_deref(), Some("c"));
        assert_eq!(name("conv:join").as_deref(), Some("b"));
        assert_eq!(name("other").as_deref(), Some("a"));
        c.rpc_proxies.remove("*");
        let p = Proxies::new(&c, Arc::default());
        assert!(p.rpc("other").is_none());
    }
}
