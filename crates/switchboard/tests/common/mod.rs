//! Shared fixture: the real server on 127.0.0.1:0 and a real WebSocket client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::auth::{mint_token, now_secs, MintClaims};
use switchboard::config::NamespaceConfig;
use switchboard::node::Node;
use switchboard::{Config, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod deflate;
pub mod nginx;
pub mod process;
pub mod protobuf;
pub mod pusher;
pub mod redis;
pub mod streaming;

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";
/// Every receive waits at most this long, so a bug fails fast instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A config with namespaces for every rule the tests exercise.
pub fn config() -> Config {
    let mut c = Config {
        bind: "127.0.0.1:0".into(),
        token_hmac_secret: SECRET.into(),
        api_key: API_KEY.into(),
        ..Config::default()
    };
    let ns = |subscribe: &[&str]| NamespaceConfig {
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        ..NamespaceConfig::default()
    };
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            publish: true,
            presence: true,
            join_leave: true,
            history_size: 100,
            history_ttl: Duration::from_secs(3600),
            ..ns(&["*"])
        },
    );
    c.namespaces.insert("news".into(), ns(&["*"]));
    c.namespaces.insert("role".into(), ns(&["role:{roles}"]));
    c.namespaces
        .insert("tenant".into(), ns(&["tenant:{tenant}"]));
    c.namespaces.insert(
        "observation".into(),
        NamespaceConfig {
            presence: true,
            ..ns(&[])
        },
    );
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    /// Graceful shutdown, waiting for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), h).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub async fn start(config: Config) -> TestServer {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let node = server.node().clone();
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .expect("server run");
    });
    TestServer {
        addr,
        node,
        stop: Some(tx),
        handle: Some(handle),
    }
}

pub async fn start_default() -> TestServer {
    start(config()).await
}

pub fn token(user: &str) -> String {
    token_with(&MintClaims {
        sub: user.into(),
        ..MintClaims::default()
    })
}

pub fn token_with(claims: &MintClaims) -> String {
    mint_token(SECRET, claims).expect("mint")
}

pub fn expiring_token(user: &str, secs: u64) -> String {
    token_with(&MintClaims {
        sub: user.into(),
        exp: Some(now_secs() + secs),
        ..MintClaims::default()
    })
}

pub fn sub_token(user: &str, channel: &str) -> String {
    token_with(&MintClaims {
        sub: user.into(),
        channel: Some(channel.into()),
        ..MintClaims::default()
    })
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw protocol client: sends JSON commands, reads replies and pushes.
pub struct Client {
    ws: Ws,
    next_id: u32,
    /// Messages read while waiting for something else.
    backlog: std::collections::VecDeque<Value>,
    /// Lines of a multi-line frame not yet returned by `read`.
    incoming: std::collections::VecDeque<Value>,
    pub connect_reply: Value,
}

/// How the server closed a connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Closed {
    /// What a close frame says; none at all reads as 1005 (no status).
    pub fn from_frame(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Self {
        frame
            .map(|f| Closed {
                code: u16::from(f.code),
                reason: f.reason.to_string(),
            })
            .unwrap_or(Closed {
                code: u16::from(CloseCode::Status),
                reason: String::new(),
            })
    }
}

impl Client {
    /// Opens a socket without sending connect.
    pub async fn open(server: &TestServer) -> Client {
        Client::open_url(&server.ws_url()).await
    }

    /// Opens a socket to the WebSocket endpoint `url` without sending connect.
    pub async fn open_url(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("open timeout")
            .expect("open");
        Client {
            ws,
            next_id: 0,
            backlog: Default::default(),
            incoming: Default::default(),
            connect_reply: Value::Null,
        }
    }

    /// Opens a socket whose upgrade request carries `headers` (a `Cookie`, say),
    /// without sending connect.
    pub async fn open_with_headers(server: &TestServer, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = server.ws_url().into_client_request().expect("request");
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name");
            req.headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("open timeout")
            .expect("open");
        Client {
            ws,
            next_id: 0,
            backlog: Default::default(),
            incoming: Default::default(),
            connect_reply: Value::Null,
        }
    }

    /// Opens a socket and connects with `token`; panics unless the connect succeeds.
    pub async fn connect(server: &TestServer, token: &str) -> Client {
        Client::connect_url(&server.ws_url(), token).await
    }

    /// As [`Client::connect`], to the WebSocket endpoint `url`.
    pub async fn connect_url(url: &str, token: &str) -> Client {
        let mut c = Client::open_url(url).await;
        let reply = c
            .request(json!({"connect": {"token": token, "name": "test"}}))
            .await;
        assert!(reply.get("connect").is_some(), "connect failed: {reply}");
        c.connect_reply = reply;
        c
    }

    pub async fn connect_user(server: &TestServer, user: &str) -> Client {
        Client::connect(server, &token(user)).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    pub async fn send_message(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a command with a fresh id and returns the reply with that id, keeping
    /// pushes that arrive meanwhile in the backlog.
    pub async fn request(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        self.send_text(&cmd.to_string()).await;
        self.reply_to(id).await
    }

    pub async fn reply_to(&mut self, id: u32) -> Value {
        if let Some(pos) = self.backlog.iter().position(|m| m["id"] == json!(id)) {
            return self.backlog.remove(pos).expect("present");
        }
        loop {
            let m = self
                .read()
                .await
                .unwrap_or_else(|c| panic!("closed waiting for reply {id}: {c:?}"));
            if m["id"] == json!(id) {
                return m;
            }
            self.backlog.push_back(m);
        }
    }

    /// Reads the next message (one line of a frame), or how the socket was closed.
    pub async fn read(&mut self) -> Result<Value, Closed> {
        if let Some(v) = self.incoming.pop_front() {
            return Ok(v);
        }
        loop {
            let text = next_text(&mut self.ws).await?;
            for l in text.split('\n').filter(|l| !l.trim().is_empty()) {
                self.incoming
                    .push_back(serde_json::from_str(l).expect("json line"));
            }
            if let Some(v) = self.incoming.pop_front() {
                return Ok(v);
            }
        }
    }

    /// Next message that is not a server ping (`{}`), from the backlog first.
    pub async fn next_message(&mut self) -> Result<Value, Closed> {
        loop {
            let m = match self.backlog.pop_front() {
                Some(m) => m,
                None => self.read().await?,
            };
            if m.as_object().is_some_and(|o| o.is_empty()) {
                continue;
            }
            return Ok(m);
        }
    }

    /// Next push (skipping pings and replies).
    pub async fn next_push(&mut self) -> Value {
        loop {
            let m = self
                .next_message()
                .await
                .unwrap_or_else(|c| panic!("closed waiting for push: {c:?}"));
            if let Some(p) = m.get("push") {
                return p.clone();
            }
        }
    }

    /// Next publication push's data in `channel`, skipping other pushes.
    pub async fn next_pub(&mut self, channel: &str) -> Value {
        loop {
            let p = self.next_push().await;
            if p["channel"] == json!(channel) && p.get("pub").is_some() {
                return p["pub"].clone();
            }
        }
    }

    /// Waits until the server closes the socket; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match self.read().await {
                Ok(_) => continue,
                Err(c) => return c,
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.request(json!({"subscribe": {"channel": channel}}))
            .await
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.request(json!({"publish": {"channel": channel, "data": data}}))
            .await
    }

    /// Takes everything received but not yet consumed.
    pub fn take_backlog(&mut self) -> Vec<Value> {
        self.backlog
            .drain(..)
            .chain(self.incoming.drain(..))
            .collect()
    }

    /// Asserts nothing but pings arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(m) = self
            .backlog
            .iter()
            .find(|m| m.as_object().is_some_and(|o| !o.is_empty()))
        {
            panic!("unexpected message: {m}");
        }
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(wait, self.ws.next()).await {
            assert_eq!(t.as_str().trim(), "{}", "unexpected message");
        }
    }

    /// Keeps sending `frame` (as fast as the socket takes it) while reading, until the
    /// server closes the connection; returns how.
    pub async fn keep_sending_until_closed(self, frame: Message) -> Closed {
        self.start_sending(frame).until_closed().await
    }

    /// Starts sending `frame` over and over, reading nothing until
    /// [`Sending::until_closed`]. The sending stops only when the client has seen the
    /// server's close frame (or the socket failed).
    pub fn start_sending(self, frame: Message) -> Sending {
        let (mut sink, stream) = self.ws.split();
        let sender = tokio::spawn(async move {
            let mut sent = 0u64;
            while sink.send(frame.clone()).await.is_ok() {
                sent += 1;
            }
            sent
        });
        Sending { stream, sender }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Waits until `done` holds, checking every 10 ms, for at most [`TIMEOUT`]: for effects
/// the server applies after the client's part is over (a closed connection released),
/// where a fixed sleep would race a loaded machine.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As [`eventually`] for a check that needs the network: polls `probe` every 25 ms
/// until it returns `Some`, for at most [`TIMEOUT`].
pub async fn eventually_value<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for a value"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A client sending all the time (see [`Client::start_sending`]).
pub struct Sending {
    stream: futures_util::stream::SplitStream<Ws>,
    sender: tokio::task::JoinHandle<u64>,
}

impl Sending {
    /// Reads until the server closes the connection; returns how.
    pub async fn until_closed(self) -> Closed {
        self.until_closed_slowly(Duration::ZERO).await
    }

    /// Reads until the server closes the connection, pausing `pause` after each
    /// message, as a client on a slow link would; returns how.
    pub async fn until_closed_slowly(mut self, pause: Duration) -> Closed {
        let closed = loop {
            match next_text(&mut self.stream).await {
                Ok(_) if pause.is_zero() => continue,
                Ok(_) => tokio::time::sleep(pause).await,
                Err(c) => break c,
            }
        };
        let sent = tokio::time::timeout(TIMEOUT, self.sender)
            .await
            .expect("sender stops after the close")
            .expect("sender task");
        assert!(sent > 0, "nothing was sent");
        closed
    }
}

/// Calls server API `method` at `base` (`http://host:port`) with the test key; returns
/// the whole answer (`result` or `error`).
pub async fn api_at(base: &str, method: &str, params: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/{method}"))
        .header("X-API-Key", API_KEY)
        .timeout(TIMEOUT)
        .body(params.to_string())
        .send()
        .await
        .expect("api");
    resp.json().await.expect("api json")
}

/// The error code in a reply, if any.
pub fn error_code(reply: &Value) -> Option<u64> {
    reply.get("error").and_then(|e| e["code"].as_u64())
}

/// The next text message off `ws` (other frames are skipped), or how the socket closed.
/// Waits at most [`TIMEOUT`].
pub async fn next_text<S>(ws: &mut S) -> Result<String, Closed>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("read timeout");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => return Err(Closed::from_frame(frame)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                return Err(Closed {
                    code: 0,
                    reason: e.to_string(),
                })
            }
            None => {
                return Err(Closed {
                    code: 0,
                    reason: "eof".into(),
                })
            }
        }
    }
}

/// Calls the server API method `method` and returns the whole answer.
pub async fn api_call(server: &TestServer, method: &str, params: Value) -> Value {
    api_at(&server.http_url(""), method, params).await
}

/// The value of the Prometheus sample `name{labels}` at `/metrics` (0 when absent).
pub async fn metric(server: &TestServer, sample: &str) -> u64 {
    sample_value(server, sample).await.unwrap_or(0)
}

/// [`metric`] of a gauge, which a bug could take below zero (a connection counted
/// closed twice).
pub async fn signed_metric(server: &TestServer, sample: &str) -> i64 {
    sample_value(server, sample).await.unwrap_or(0)
}

async fn sample_value<T: std::str::FromStr>(server: &TestServer, sample: &str) -> Option<T> {
    let text = reqwest::Client::new()
        .get(server.http_url("/metrics"))
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
