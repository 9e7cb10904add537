//! A Pusher protocol client (raw WebSocket JSON, as pusher-js speaks it), the app's
//! signatures as a backend computes them, and signed calls of the Pusher HTTP API.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use switchboard::config::{NamespaceConfig, PusherAppConfig, PusherConfig};
use switchboard::Config;
use tokio_tungstenite::tungstenite::Message;

use super::{next_text, Closed, TestServer, TIMEOUT};

pub const APP_ID: &str = "123";
pub const KEY: &str = "app-key";
pub const APP_SECRET: &str = "app-secret";

/// A Pusher app as its backend knows it.
#[derive(Debug, Clone, Copy)]
pub struct App {
    pub id: &'static str,
    pub key: &'static str,
    pub secret: &'static str,
}

/// The `[pusher]` app of [`config`]: its channels keep their names.
pub const FIRST: App = App {
    id: APP_ID,
    key: KEY,
    secret: APP_SECRET,
};

/// The second app of [`config_with_shop`], `[pusher.apps.shop]`: its channels live in
/// the namespaces `shop`, `shop_private`, `shop_presence` and `shop_user`.
pub const SHOP: App = App {
    id: "456",
    key: "shop-key",
    secret: "shop-secret",
};

impl App {
    /// Lowercase hex HMAC-SHA256 with the app's secret.
    pub fn hmac(&self, message: &str) -> String {
        switchboard::webhooks::delivery::sign(self.secret.as_bytes(), message.as_bytes())
    }

    /// The `auth` the app's auth endpoint returns for `socket_id` on `channel`.
    pub fn channel_auth(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
    ) -> String {
        let message = match channel_data {
            Some(d) => format!("{socket_id}:{channel}:{d}"),
            None => format!("{socket_id}:{channel}"),
        };
        format!("{}:{}", self.key, self.hmac(&message))
    }

    /// The `auth` of a `pusher:signin` for `user_data`.
    pub fn signin_auth(&self, socket_id: &str, user_data: &str) -> String {
        let message = format!("{socket_id}::user::{user_data}");
        format!("{}:{}", self.key, self.hmac(&message))
    }
}

/// The test config with the Pusher app, and the namespaces Pusher channels map to:
/// `default` (public names without `:`), `private` (client events allowed), `presence`
/// (members per user), `quiet` (private, no client publishing).
pub fn config() -> Config {
    let mut c = super::config();
    add_first(&mut c);
    c
}

/// Adds the first app and its namespaces (see [`config`]) to `c`.
pub fn add_first(c: &mut Config) {
    c.pusher = PusherConfig {
        app_id: APP_ID.into(),
        key: KEY.into(),
        secret: APP_SECRET.into(),
        ..PusherConfig::default()
    };
    c.namespaces.insert(
        "default".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "private".into(),
        NamespaceConfig {
            publish: true,
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "presence".into(),
        NamespaceConfig {
            publish: true,
            presence: true,
            join_leave: true,
            presence_per_user: true,
            ..NamespaceConfig::default()
        },
    );
}

/// [`config`] with the second app [`SHOP`] and its namespaces, set as the first app's:
/// `shop` (public names), `shop_private`, `shop_presence`, and `shop_user` (its users'
/// channels).
pub fn config_with_shop() -> Config {
    let mut c = config();
    add_shop(&mut c);
    c
}

/// Adds the app [`SHOP`] and its namespaces to `c`, which has the first app's.
pub fn add_shop(c: &mut Config) {
    c.pusher.apps.insert(
        "shop".into(),
        PusherAppConfig {
            app_id: SHOP.id.into(),
            key: SHOP.key.into(),
            secret: SHOP.secret.into(),
            ..PusherAppConfig::default()
        },
    );
    for (ns, like) in [
        ("shop", "default"),
        ("shop_private", "private"),
        ("shop_presence", "presence"),
    ] {
        let same = c.namespaces[like].clone();
        c.namespaces.insert(ns.into(), same);
    }
    c.namespaces
        .insert("shop_user".into(), NamespaceConfig::default());
}

/// The `auth` the first app's auth endpoint returns for `socket_id` on `channel`.
pub fn channel_auth(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    FIRST.channel_auth(socket_id, channel, channel_data)
}

/// The `auth` of the first app's `pusher:signin` for `user_data`.
pub fn signin_auth(socket_id: &str, user_data: &str) -> String {
    FIRST.signin_auth(socket_id, user_data)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A Pusher client of one app: sends events, reads messages (with `data` strings
/// decoded).
pub struct PusherClient {
    ws: Ws,
    pub socket_id: String,
    pub activity_timeout: u64,
    /// Whose signatures it subscribes with.
    pub app: App,
}

/// `data` as JSON: Pusher sends it as a JSON-encoded string, errors as an object.
pub fn data(message: &Value) -> Value {
    match &message["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        other => other.clone(),
    }
}

impl PusherClient {
    /// Opens `/app/<key>?<query>` and returns the socket before anything is read.
    async fn open_raw(server: &TestServer, key: &str, query: &str) -> Ws {
        let url = format!("ws://{}/app/{key}?{query}", server.addr);
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("open timeout")
            .expect("open");
        ws
    }

    /// Opens `/app/<key>?<query>` without reading anything.
    pub async fn open(server: &TestServer, key: &str, query: &str) -> PusherClient {
        PusherClient {
            ws: Self::open_raw(server, key, query).await,
            socket_id: String::new(),
            activity_timeout: 0,
            app: FIRST,
        }
    }

    /// Connects to the first app as pusher-js does and reads
    /// `pusher:connection_established`.
    pub async fn connect(server: &TestServer) -> PusherClient {
        Self::connect_to(server, FIRST).await
    }

    /// Connects to `app` as pusher-js does and reads `pusher:connection_established`.
    pub async fn connect_to(server: &TestServer, app: App) -> PusherClient {
        let query = "protocol=7&client=js&version=8.4.0&flash=false";
        let mut c = Self::open(server, app.key, query).await;
        c.app = app;
        let hello = c.next().await.expect("connection_established");
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        let d = data(&hello);
        c.socket_id = d["socket_id"].as_str().expect("socket_id").to_owned();
        c.activity_timeout = d["activity_timeout"].as_u64().expect("activity_timeout");
        c
    }

    pub async fn send(&mut self, event: &str, channel: Option<&str>, data: Value) {
        let mut m = json!({"event": event, "data": data});
        if let Some(ch) = channel {
            m["channel"] = json!(ch);
        }
        self.ws
            .send(Message::text(m.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next message, or how the socket closed.
    pub async fn next(&mut self) -> Result<Value, Closed> {
        let text = next_text(&mut self.ws).await?;
        Ok(serde_json::from_str(&text).expect("json message"))
    }

    /// Closes the socket, as a client that leaves.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The next message that is not the server's ping.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let m = self
                .next()
                .await
                .unwrap_or_else(|c| panic!("closed waiting for an event: {c:?}"));
            if m["event"] != "pusher:ping" {
                return m;
            }
        }
    }

    /// The next message with this event name, skipping others.
    pub async fn next_named(&mut self, event: &str) -> Value {
        loop {
            let m = self.next_event().await;
            if m["event"] == event {
                return m;
            }
        }
    }

    /// Subscribes; returns the answer (`subscription_succeeded` or an error).
    pub async fn subscribe(
        &mut self,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Value {
        let mut d = json!({"channel": channel});
        if let Some(a) = auth {
            d["auth"] = json!(a);
        }
        if let Some(cd) = channel_data {
            d["channel_data"] = json!(cd);
        }
        self.send("pusher:subscribe", None, d).await;
        self.next_event().await
    }

    /// Subscribes to a private channel with a valid signature; panics unless it works.
    pub async fn subscribe_private(&mut self, channel: &str) {
        let auth = self.app.channel_auth(&self.socket_id, channel, None);
        let m = self.subscribe(channel, Some(&auth), None).await;
        assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
    }

    /// Joins a presence channel as `user_id`; returns the presence data.
    pub async fn join(&mut self, channel: &str, user_id: &str, name: &str) -> Value {
        let cd = json!({"user_id": user_id, "user_info": {"name": name}}).to_string();
        let auth = self.app.channel_auth(&self.socket_id, channel, Some(&cd));
        let m = self.subscribe(channel, Some(&auth), Some(&cd)).await;
        assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
        data(&m)["presence"].clone()
    }

    /// Signs in with the app's signature over `user_data`; returns the answer
    /// (`pusher:signin_success` or `pusher:error`).
    pub async fn signin(&mut self, user_data: &str) -> Value {
        let auth = self.app.signin_auth(&self.socket_id, user_data);
        let d = json!({"auth": auth, "user_data": user_data});
        self.send("pusher:signin", None, d).await;
        self.next_event().await
    }

    /// Waits until the server closes the socket.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(c) = self.next().await {
                return c;
            }
        }
    }

    /// Asserts that nothing but pings arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: Value = serde_json::from_str(t.as_str()).expect("json");
                    assert_eq!(m["event"], "pusher:ping", "unexpected message {m}");
                }
                Ok(other) => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// A signed HTTP API call of the first app, as the Pusher server libraries make it:
/// `path` below `/apps/<app_id>`, `params` in the query, `body` JSON for POST.
pub async fn api(
    server: &TestServer,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String) {
    api_of(server, FIRST, method, path, params, body).await
}

/// A signed HTTP API call of `app`.
pub async fn api_of(
    server: &TestServer,
    app: App,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String) {
    let path = format!("/apps/{}{path}", app.id);
    let now = switchboard::auth::now_secs();
    api_signed(server, method, &path, params, body, now, app).await
}

/// A call with everything chosen: the full path, the timestamp and the app (key and
/// secret) it is signed by.
pub async fn api_signed(
    server: &TestServer,
    method: &str,
    full_path: &str,
    params: &[(&str, &str)],
    body: Option<&Value>,
    timestamp: u64,
    app: App,
) -> (u16, String) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut query: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    query.push(("auth_key".into(), app.key.into()));
    query.push(("auth_timestamp".into(), timestamp.to_string()));
    query.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        let md5: String = Md5::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        query.push(("body_md5".into(), md5));
    }
    query.sort();
    let q = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signature = app.hmac(&format!("{method}\n{full_path}\n{q}"));
    let url = server.http_url(&format!("{full_path}?{q}&auth_signature={signature}"));
    let client = reqwest::Client::new();
    let req = match method {
        "GET" => client.get(url),
        _ => client
            .post(url)
            .header("Content-Type", "application/json")
            .body(body),
    };
    let resp = req.timeout(TIMEOUT).send().await.expect("pusher api");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}
