//! Proxies to the app backend, against a real HTTP backend (axum on 127.0.0.1:0) that
//! answers as a Centrifugo backend would, and misbehaves on purpose: slow, 500,
//! garbage, unreachable.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::auth::now_secs;
use switchboard::config::{NamespaceConfig, ProxyConfig};
use switchboard::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// One request the backend received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    cookie: Option<String>,
    secret: Option<String>,
    body: Value,
}

/// The app: who is a member of which conversation, and every request it received.
#[derive(Default)]
struct App {
    calls: Mutex<Vec<Call>>,
    /// `(user, channel)` pairs allowed to subscribe.
    members: Mutex<HashSet<(String, String)>>,
    /// What the refresh proxy answers: extend, or end the connection.
    refresh_expired: Mutex<bool>,
}

impl App {
    fn calls(&self, path: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.path == path).cloned().collect()
    }
    fn admit(&self, user: &str, channel: &str) {
        self.members
            .lock()
            .unwrap()
            .insert((user.into(), channel.into()));
    }
    fn remove(&self, user: &str, channel: &str) {
        self.members
            .lock()
            .unwrap()
            .remove(&(user.to_owned(), channel.to_owned()));
    }
    fn is_member(&self, body: &Value) -> bool {
        let user = body["user"].as_str().unwrap_or_default().to_owned();
        let channel = body["channel"].as_str().unwrap_or_default().to_owned();
        self.members.lock().unwrap().contains(&(user, channel))
    }
}

fn record(app: &App, path: &str, headers: &HeaderMap, body: &Value) {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    app.calls.lock().unwrap().push(Call {
        path: path.into(),
        cookie: header("cookie"),
        secret: header("x-secret"),
        body: body.clone(),
    });
}

async fn connect(State(app): State<Arc<App>>, h: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    record(&app, "connect", &h, &b);
    let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
    Json(match cookie {
        "session=alice" => json!({"result": {
            "user": "alice", "info": {"name": "Alice"}, "channels": ["news:alice"],
            "meta": {"plan": "pro"}, "data": {"welcome": "Alice"},
            "subs": {"conversation:lobby": {"info": {"seat": 1}, "data": {"topic": "hi"}}}
        }}),
        // Two seconds, not one: `expire_at` is in whole seconds, and `now + 1` may be a
        // millisecond away when asked at the end of a second.
        "session=expiring" => json!({"result": {"user": "eve", "expire_at": now_secs() + 2}}),
        "session=eve" => json!({"result": {"user": "eve"}}),
        // `{"name":"Bee"}` and `{"via":"b64"}`, as a backend with binary payloads sends them.
        "session=b64" => json!({"result": {
            "user": "bee", "b64info": "eyJuYW1lIjoiQmVlIn0=", "b64data": "eyJ2aWEiOiJiNjQifQ=="
        }}),
        "session=anonymous" => json!({"result": {"user": ""}}),
        "session=banned" => json!({"disconnect": {"code": 4501, "reason": "banned"}}),
        _ if b["data"]["session"] == "bob" => json!({"result": {"user": "bob"}}),
        _ => json!({"error": {"code": 401, "message": "log in first"}}),
    })
}

async fn refresh(State(app): State<Arc<App>>, h: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    record(&app, "refresh", &h, &b);
    let expired = *app.refresh_expired.lock().unwrap();
    let info = json!({"name": "Eve", "refreshed": true});
    Json(json!({"result": {"expired": expired, "expire_at": now_secs() + 2, "info": info}}))
}

async fn subscribe(State(app): State<Arc<App>>, h: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    record(&app, "subscribe", &h, &b);
    Json(
        if b["channel"] == "conversation:quiet" && app.is_member(&b) {
            // Data for the subscriber; its presence hidden, its join and leave sent.
            json!({"result": {
                "data": {"unread": 3},
                "override": {"presence": {"value": false}, "join_leave": {"value": true}}
            }})
        } else if app.is_member(&b) {
            json!({"result": {"info": {"role": "member"}}})
        } else {
            json!({"error": {"code": 103, "message": "not a member"}})
        },
    )
}

async fn sub_refresh(
    State(app): State<Arc<App>>,
    h: HeaderMap,
    Json(b): Json<Value>,
) -> Json<Value> {
    record(&app, "sub_refresh", &h, &b);
    Json(json!({"result": {"expired": !app.is_member(&b)}}))
}

async fn publish(State(app): State<Arc<App>>, h: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    record(&app, "publish", &h, &b);
    let text = b["data"]["text"].as_str().unwrap_or_default();
    Json(if text == "spam" {
        json!({"error": {"code": 1002, "message": "moderated"}})
    } else {
        json!({"result": {
            "data": {"text": text.to_uppercase(), "id": 7, "by": b["user"]},
            "tags": {"event": "message:new"}
        }})
    })
}

async fn rpc(State(app): State<Arc<App>>, h: HeaderMap, Json(b): Json<Value>) -> Json<Value> {
    record(&app, "rpc", &h, &b);
    Json(match b["method"].as_str() {
        Some("conversation:mark_read") => {
            json!({"result": {"data": {"read": b["data"]["id"], "user": b["user"]}}})
        }
        // `{"via":"b64"}`, then bytes that are not JSON (`not json`).
        Some("conversation:b64") => json!({"result": {"b64data": "eyJ2aWEiOiJiNjQifQ=="}}),
        Some("conversation:b64_bytes") => json!({"result": {"b64data": "bm90IGpzb24="}}),
        _ => json!({"error": {"code": 1404, "message": "no such method"}}),
    })
}

/// Answers only after `SLOW`, past every proxy timeout of these tests.
const SLOW: Duration = Duration::from_secs(3);

async fn slow() -> Json<Value> {
    tokio::time::sleep(SLOW).await;
    Json(json!({"result": {}}))
}

async fn failing() -> (axum::http::StatusCode, &'static str) {
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom")
}

async fn garbage() -> &'static str {
    "<html>not json</html>"
}

async fn start_app(app: Arc<App>) -> SocketAddr {
    let router = Router::new()
        .route("/connect", post(connect))
        .route("/refresh", post(refresh))
        .route("/subscribe", post(subscribe))
        .route("/sub_refresh", post(sub_refresh))
        .route("/publish", post(publish))
        .route("/rpc", post(rpc))
        .route("/slow", post(slow))
        .route("/failing", post(failing))
        .route("/garbage", post(garbage))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// An address nothing listens on: connecting to it is refused.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn endpoint(addr: SocketAddr, path: &str) -> ProxyConfig {
    ProxyConfig {
        url: format!("http://{addr}/{path}"),
        timeout: Duration::from_secs(2),
        headers: vec!["Cookie".into()],
    }
}

/// The test config, with every proxy pointing at the app and a `conversation`
/// namespace whose membership only the app knows.
fn proxied_config(addr: SocketAddr) -> Config {
    let mut c = config();
    c.proxy.connect = endpoint(addr, "connect");
    c.proxy.refresh = endpoint(addr, "refresh");
    for name in ["subscribe", "sub_refresh", "publish", "rpc"] {
        c.proxies.insert(name.into(), endpoint(addr, name));
    }
    c.rpc_proxies.insert("conversation:*".into(), "rpc".into());
    c.namespaces.insert(
        "conversation".into(),
        NamespaceConfig {
            presence: true,
            subscribe_roles: vec!["admin".into()],
            subscribe_proxy: "subscribe".into(),
            sub_refresh_proxy: "sub_refresh".into(),
            sub_refresh_interval: Duration::from_millis(200),
            publish_proxy: "publish".into(),
            ..NamespaceConfig::default()
        },
    );
    c
}

async fn setup() -> (Arc<App>, TestServer) {
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let server = start(proxied_config(addr)).await;
    (app, server)
}

async fn connect_with_cookie(server: &TestServer, cookie: &str) -> (Client, Value) {
    let mut c =
        Client::open_with_headers(server, &[("Cookie", cookie), ("X-Secret", "not forwarded")])
            .await;
    let reply = c.request(json!({"connect": {"name": "test"}})).await;
    (c, reply)
}

// ---------------------------------------------------------------------------------------
// connect

#[tokio::test]
async fn connect_proxy_authenticates_a_cookie_session_and_subscribes_its_channels() {
    let (app, server) = setup().await;
    let (mut alice, reply) = connect_with_cookie(&server, "session=alice").await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert!(
        reply["connect"]["subs"]["news:alice"].is_object(),
        "{reply}"
    );
    // A proxied connection's expiry is refreshed server-side: the client is not told.
    assert!(reply["connect"].get("expires").is_none(), "{reply}");
    assert_eq!(reply["connect"]["data"], json!({"welcome": "Alice"}));
    // `subs`: a server-side subscription the subscribe proxy is not asked about,
    // with the backend's data and channel info.
    let lobby = &reply["connect"]["subs"]["conversation:lobby"];
    assert_eq!(lobby["data"], json!({"topic": "hi"}), "{reply}");
    let presence = alice
        .request(json!({"presence": {"channel": "conversation:lobby"}}))
        .await;
    let info = presence["presence"]["presence"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .expect("one client present");
    assert_eq!(info["chan_info"], json!({"seat": 1}));

    let call = &app.calls("connect")[0];
    assert_eq!(call.cookie.as_deref(), Some("session=alice"));
    assert_eq!(call.secret, None, "only listed headers are forwarded");
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["protocol"], "json");
    assert_eq!(call.body["encoding"], "json");
    assert_eq!(call.body["name"], "test");
    assert_eq!(call.body["client"], reply["connect"]["client"]);

    // The server-side channel works, and the user and info are the backend's.
    api_call(
        &server,
        "publish",
        json!({"channel": "news:alice", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(alice.next_pub("news:alice").await["data"], json!({"n": 1}));
    app.admit("alice", "conversation:1");
    assert!(alice
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    let presence = alice
        .request(json!({"presence": {"channel": "conversation:1"}}))
        .await;
    let info = presence["presence"]["presence"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .expect("one client present");
    assert_eq!(info["user"], "alice");
    assert_eq!(info["conn_info"], json!({"name": "Alice"}));
    assert_eq!(info["chan_info"], json!({"role": "member"}));
    // Later proxy requests carry the user and the connection's meta.
    let sub = &app.calls("subscribe")[0];
    assert_eq!(sub.body["user"], "alice");
    assert_eq!(sub.body["meta"], json!({"plan": "pro"}));
    assert_eq!(sub.cookie.as_deref(), Some("session=alice"));
}

#[tokio::test]
async fn connect_proxy_refusal_is_an_error_reply_and_its_disconnect_closes() {
    let (_app, server) = setup().await;
    let (mut c, reply) = connect_with_cookie(&server, "session=nobody").await;
    assert_eq!(
        reply["error"],
        json!({"code": 401, "message": "log in first"})
    );
    // The same socket may try again; the connect data reaches the backend.
    let reply = c
        .request(json!({"connect": {"data": {"session": "bob"}}}))
        .await;
    assert!(reply.get("connect").is_some(), "{reply}");

    let (mut banned, _) = {
        let mut c = Client::open_with_headers(&server, &[("Cookie", "session=banned")]).await;
        c.send_text(r#"{"id":1,"connect":{}}"#).await;
        (c, ())
    };
    let closed = banned.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (4501, "banned"));
}

#[tokio::test]
async fn a_token_still_connects_and_anonymous_only_when_the_backend_says_so() {
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let mut config = proxied_config(addr);
    // Anonymous connections are nobody's: the per-user limit does not count them.
    config.limits.max_connections_per_user = 1;
    let server = start(config).await;
    let _jwt = Client::connect(&server, &token("carol")).await;
    assert!(app.calls("connect").is_empty(), "a token needs no backend");

    let (_anon, reply) = connect_with_cookie(&server, "session=anonymous").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    let (_anon2, reply) = connect_with_cookie(&server, "session=anonymous").await;
    assert!(reply.get("connect").is_some(), "{reply}");

    // Without the connect proxy, no token is no connection.
    let plain = start_default().await;
    let mut c = Client::open(&plain).await;
    c.send_text(r#"{"id":1,"connect":{}}"#).await;
    assert_eq!(c.closed().await.code, 3500);
}

#[tokio::test]
async fn socketio_handshake_cookie_and_auth_object_reach_the_connect_proxy() {
    let (app, server) = setup().await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", "session=alice".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("open timeout")
        .expect("open");
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    ws.send(Message::text(r#"40{"room":"lobby"}"#))
        .await
        .unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("40{"));
    let connected = next_text(&mut ws).await.unwrap();
    assert!(connected.starts_with(r#"42["connected""#), "{connected}");
    assert!(connected.contains("news:alice"), "{connected}");
    let connected: Value = serde_json::from_str(&connected[2..]).unwrap();
    assert_eq!(connected[1]["data"], json!({"welcome": "Alice"}));

    let call = &app.calls("connect")[0];
    assert_eq!(call.body["transport"], "socketio");
    assert_eq!(call.body["data"], json!({"room": "lobby"}));
    assert_eq!(call.cookie.as_deref(), Some("session=alice"));

    // RPC as an event with an acknowledgement.
    ws.send(Message::text(
        r#"421["rpc",{"method":"conversation:mark_read","data":{"id":9}}]"#,
    ))
    .await
    .unwrap();
    let ack = loop {
        let t = next_text(&mut ws).await.unwrap();
        if let Some(rest) = t.strip_prefix("431") {
            break rest.to_owned();
        }
    };
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(
        ack[0]["result"]["data"],
        json!({"read": 9, "user": "alice"})
    );
    // Without a session the backend's error arrives as `connect_error`.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("open timeout")
        .expect("open");
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    ws.send(Message::text("40")).await.unwrap();
    let refused = next_text(&mut ws).await.unwrap();
    let refused: Value = serde_json::from_str(refused.strip_prefix("44").expect("44")).unwrap();
    assert_eq!(refused["message"], "log in first");
    assert_eq!(refused["data"]["code"], 401);
}

/// A Socket.IO app's own event with a callback (`socket.emit("notification:read", {id},
/// cb)`), routed to the RPC proxy: the callback gets the backend's answer as is.
#[tokio::test]
async fn a_socketio_rpc_route_answers_with_the_backends_data() {
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let mut config = proxied_config(addr);
    config.socketio.routes = vec![switchboard::config::RouteConfig {
        event: "notification:read".into(),
        action: switchboard::config::RouteAction::Rpc,
        method: "conversation:mark_read".into(),
        ..Default::default()
    }];
    let server = start(config).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", "session=alice".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("open timeout")
        .expect("open");
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("40{"));
    ws.send(Message::text(r#"427["notification:read",{"id":9}]"#))
        .await
        .unwrap();
    let ack = loop {
        let t = next_text(&mut ws).await.unwrap();
        if let Some(rest) = t.strip_prefix("437") {
            break rest.to_owned();
        }
    };
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(ack[0], json!({"read": 9, "user": "alice"}));
    assert_eq!(app.calls("rpc")[0].body["data"], json!({"id": 9}));
}

#[tokio::test]
async fn socketio_polling_handshake_headers_reach_the_connect_proxy() {
    let (app, server) = setup().await;
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let base = format!("http://{}/socket.io/?EIO=4&transport=polling", server.addr);
    let open = http
        .get(&base)
        .header("Cookie", "session=alice")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("open")).unwrap();
    let url = format!("{base}&sid={}", handshake["sid"].as_str().unwrap());
    // Later requests of the session carry no cookie: the handshake's is what counts.
    let posted = http.post(&url).body("40").send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let mut polled = String::new();
    for _ in 0..10 {
        polled.push_str(&http.get(&url).send().await.unwrap().text().await.unwrap());
        if polled.contains("connected") {
            break;
        }
    }
    assert!(polled.contains("news:alice"), "{polled}");
    let call = &app.calls("connect")[0];
    assert_eq!(call.cookie.as_deref(), Some("session=alice"));
    assert_eq!(call.body["transport"], "socketio");
}

// ---------------------------------------------------------------------------------------
// refresh

#[tokio::test]
async fn refresh_proxy_extends_a_proxied_connection_then_ends_it() {
    let (app, server) = setup().await;
    let (mut eve, reply) = connect_with_cookie(&server, "session=expiring").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    // Each answer extends by one to two seconds; wait for two extensions.
    for _ in 0..100 {
        if app.calls("refresh").len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.calls("refresh").len() >= 2, "refreshed twice");
    assert_eq!(app.calls("refresh")[0].body["user"], "eve");
    // The refresh answer's info replaced the connection's: presence shows it.
    app.admit("eve", "conversation:1");
    assert!(eve
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    let presence = eve
        .request(json!({"presence": {"channel": "conversation:1"}}))
        .await;
    let info = presence["presence"]["presence"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .expect("one client present");
    assert_eq!(info["conn_info"], json!({"name": "Eve", "refreshed": true}));
    *app.refresh_expired.lock().unwrap() = true;
    let closed = eve.closed().await;
    assert_eq!(closed.code, 3005);
}

#[tokio::test]
async fn invalidate_user_tokens_ends_proxied_connections_asked_for_before_its_time() {
    let (app, server) = setup().await;
    // A connection the connect proxy authenticated counts as issued when the proxy
    // was asked; each refresh through the proxy renews that time.
    let (mut stale, reply) = connect_with_cookie(&server, "session=eve").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    let cutoff = now_secs() + 1;
    let (mut refreshed, reply) = connect_with_cookie(&server, "session=expiring").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    // The second refresh is asked for only once the first one was applied; the first
    // is asked for a second or more after the connect, so at `cutoff` or later.
    eventually("two refreshes", || app.calls("refresh").len() >= 2).await;

    let r = api_call(
        &server,
        "invalidate_user_tokens",
        json!({"user": "eve", "issued_before": cutoff}),
    )
    .await;
    assert_eq!(r, json!({"result": {}}));
    let closed = stale.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3500, "token revoked")
    );
    let pong = refreshed.request(json!({"ping": {}})).await;
    assert!(
        pong.get("ping").is_some(),
        "refreshed after the cut-off: {pong}"
    );
    // A new connect through the proxy is newer than the cut-off.
    let (_again, reply) = connect_with_cookie(&server, "session=eve").await;
    assert!(reply.get("connect").is_some(), "{reply}");

    // A cut-off in the future refuses proxied connects until then, like tokens.
    api_call(
        &server,
        "invalidate_user_tokens",
        json!({"user": "eve", "issued_before": now_secs() + 60}),
    )
    .await;
    assert_eq!(refreshed.closed().await.code, 3500);
    let mut refused = Client::open_with_headers(&server, &[("Cookie", "session=eve")]).await;
    refused
        .send_text(&json!({"id": 1, "connect": {}}).to_string())
        .await;
    assert_eq!(refused.closed().await.code, 3500);
}

// ---------------------------------------------------------------------------------------
// subscribe, sub_refresh

#[tokio::test]
async fn subscribe_proxy_decides_membership_and_caches_positive_answers() {
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let mut config = proxied_config(addr);
    let ns = config.namespaces.get_mut("conversation").unwrap();
    ns.subscribe_proxy_cache_ttl = Duration::from_secs(60);
    ns.sub_refresh_proxy = String::new();
    let server = start(config).await;

    let mut alice = Client::connect_user(&server, "alice").await;
    let refused = alice.subscribe("conversation:1").await;
    assert_eq!(refused["error"]["code"], 103, "{refused}");
    assert_eq!(refused["error"]["message"], "not a member");

    app.admit("alice", "conversation:1");
    assert!(alice
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    let asked = app.calls("subscribe").len();
    alice
        .request(json!({"unsubscribe": {"channel": "conversation:1"}}))
        .await;
    // Within the cache TTL the positive answer is reused: no second request.
    assert!(alice
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(app.calls("subscribe").len(), asked);

    // A role the namespace admits needs no backend at all.
    let admin = token_with(&switchboard::auth::MintClaims {
        sub: "root".into(),
        roles: vec!["admin".into()],
        ..Default::default()
    });
    let mut root = Client::connect(&server, &admin).await;
    assert!(root
        .subscribe("conversation:77")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(app.calls("subscribe").len(), asked);
}

#[tokio::test]
async fn subscribe_proxy_data_reaches_the_client_and_overrides_apply_to_the_subscriber() {
    let (app, server) = setup().await;
    let mut alice = Client::connect_user(&server, "alice").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    app.admit("alice", "conversation:1");
    app.admit("alice", "conversation:quiet");
    app.admit("bob", "conversation:quiet");
    let plain = alice.subscribe("conversation:1").await;
    assert!(plain["subscribe"].get("data").is_none(), "{plain}");
    let quiet = alice.subscribe("conversation:quiet").await;
    assert_eq!(quiet["subscribe"]["data"], json!({"unread": 3}), "{quiet}");
    // `join_leave: true` in a namespace without join_leave: her own join, then bob's,
    // reach alice.
    let push = alice.next_push().await;
    assert_eq!(push["join"]["info"]["user"], "alice", "{push}");
    assert!(bob
        .subscribe("conversation:quiet")
        .await
        .get("subscribe")
        .is_some());
    let push = alice.next_push().await;
    assert_eq!(push["channel"], "conversation:quiet", "{push}");
    assert_eq!(push["join"]["info"]["user"], "bob", "{push}");
    // `presence: false`: neither is in the channel's presence.
    let presence = alice
        .request(json!({"presence": {"channel": "conversation:quiet"}}))
        .await;
    assert_eq!(presence["presence"]["presence"], json!({}), "{presence}");
}

#[tokio::test]
async fn base64_payloads_are_decoded_and_bytes_that_are_not_json_are_a_bad_answer() {
    let (app, server) = setup().await;
    let (mut bee, reply) = connect_with_cookie(&server, "session=b64").await;
    assert_eq!(reply["connect"]["data"], json!({"via": "b64"}), "{reply}");
    // The decoded `b64info` is the connection's info.
    app.admit("bee", "conversation:1");
    assert!(bee
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    let presence = bee
        .request(json!({"presence": {"channel": "conversation:1"}}))
        .await;
    let info = presence["presence"]["presence"]
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .expect("one client present");
    assert_eq!(info["conn_info"], json!({"name": "Bee"}));

    let rpc = bee
        .request(json!({"rpc": {"method": "conversation:b64"}}))
        .await;
    assert_eq!(rpc["rpc"]["data"], json!({"via": "b64"}), "{rpc}");
    let bad = bee
        .request(json!({"rpc": {"method": "conversation:b64_bytes"}}))
        .await;
    assert_temporary(&bad);
    let bad_answers = r#"switchboard_proxy_requests_total{proxy="rpc",result="bad_answer"}"#;
    assert_eq!(metric(&server, bad_answers).await, 1);
}

#[tokio::test]
async fn a_member_removed_in_the_app_loses_the_subscription_at_the_next_sub_refresh() {
    let (app, server) = setup().await;
    app.admit("alice", "conversation:1");
    let mut alice = Client::connect_user(&server, "alice").await;
    assert!(alice
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    app.remove("alice", "conversation:1");
    let push = loop {
        let p = alice.next_push().await;
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(push["channel"], "conversation:1");
    assert_eq!(push["unsubscribe"]["code"], 2501);
    // No longer subscribed: publishing from the API does not reach her.
    api_call(
        &server,
        "publish",
        json!({"channel": "conversation:1", "data": {}}),
    )
    .await;
    alice.assert_quiet(Duration::from_millis(300)).await;
    assert_eq!(
        app.calls("sub_refresh")[0].body["channel"],
        "conversation:1"
    );
}

#[tokio::test]
async fn a_failing_sub_refresh_keeps_the_subscription_and_a_refusal_ends_it() {
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let mut config = proxied_config(addr);
    config
        .proxies
        .insert("sub_refresh".into(), endpoint(addr, "failing"));
    let server = start(config).await;
    app.admit("alice", "conversation:1");
    let mut alice = Client::connect_user(&server, "alice").await;
    assert!(alice
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    let failed = r#"switchboard_proxy_requests_total{proxy="sub_refresh",result="bad_status"}"#;
    for _ in 0..50 {
        if metric(&server, failed).await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&server, failed).await >= 2, "checked twice");
    // Still subscribed: an API publication arrives.
    api_call(
        &server,
        "publish",
        json!({"channel": "conversation:1", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(
        alice.next_pub("conversation:1").await["data"],
        json!({"n": 1})
    );
    alice.assert_quiet(Duration::from_millis(100)).await;

    // A backend answering sub_refresh with an error ends the subscription.
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let mut config = proxied_config(addr);
    config
        .proxies
        .insert("sub_refresh".into(), endpoint(addr, "subscribe"));
    let server = start(config).await;
    app.admit("bob", "conversation:2");
    let mut bob = Client::connect_user(&server, "bob").await;
    assert!(bob
        .subscribe("conversation:2")
        .await
        .get("subscribe")
        .is_some());
    app.remove("bob", "conversation:2");
    let push = loop {
        let p = bob.next_push().await;
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(push["unsubscribe"]["code"], 2501);
}

#[tokio::test]
async fn a_failing_refresh_proxy_keeps_the_connection_and_asks_again() {
    let app = Arc::new(App::default());
    let addr = start_app(app.clone()).await;
    let mut config = proxied_config(addr);
    config.proxy.refresh = endpoint(addr, "failing");
    config.proxy.refresh_retry_interval = Duration::from_secs(1);
    let server = start(config).await;
    let (mut eve, reply) = connect_with_cookie(&server, "session=expiring").await;
    assert!(reply.get("connect").is_some(), "{reply}");
    let failed = r#"switchboard_proxy_requests_total{proxy="refresh",result="bad_status"}"#;
    for _ in 0..60 {
        if metric(&server, failed).await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metric(&server, failed).await >= 2,
        "asked again after a failure"
    );
    assert!(eve.request(json!({"ping": {}})).await.get("ping").is_some());
}

// ---------------------------------------------------------------------------------------
// publish, rpc

#[tokio::test]
async fn publish_proxy_rejects_replaces_data_and_sets_tags() {
    let (app, server) = setup().await;
    app.admit("alice", "conversation:1");
    app.admit("bob", "conversation:1");
    let mut alice = Client::connect_user(&server, "alice").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    assert!(alice
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());
    assert!(bob
        .subscribe("conversation:1")
        .await
        .get("subscribe")
        .is_some());

    let refused = alice
        .publish("conversation:1", json!({"text": "spam"}))
        .await;
    assert_eq!(
        refused["error"],
        json!({"code": 1002, "message": "moderated"})
    );

    let ok = alice.publish("conversation:1", json!({"text": "hi"})).await;
    assert!(ok.get("publish").is_some(), "{ok}");
    let publication = bob.next_pub("conversation:1").await;
    assert_eq!(
        publication["data"],
        json!({"text": "HI", "id": 7, "by": "alice"})
    );
    assert_eq!(publication["tags"], json!({"event": "message:new"}));
    assert_eq!(publication["info"]["user"], "alice");
    assert_eq!(
        app.calls("publish")[0].body["data"],
        json!({"text": "spam"})
    );
}

#[tokio::test]
async fn rpc_methods_go_to_their_proxy_and_others_are_not_found() {
    let (app, server) = setup().await;
    let mut alice = Client::connect_user(&server, "alice").await;
    let reply = alice
        .request(json!({"rpc": {"method": "conversation:mark_read", "data": {"id": 3}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"read": 3, "user": "alice"}));
    let refused = alice
        .request(json!({"rpc": {"method": "conversation:nope"}}))
        .await;
    assert_eq!(refused["error"]["code"], 1404);
    let unknown = alice.request(json!({"rpc": {"method": "other"}})).await;
    assert_eq!(unknown["error"]["code"], 104);
    assert_eq!(app.calls("rpc").len(), 2);
}

// ---------------------------------------------------------------------------------------
// failures: a temporary error 100, never a hang, counted by kind and outcome

async fn failing_server(path: &str, unreachable: bool) -> TestServer {
    let app = Arc::new(App::default());
    let addr = if unreachable {
        closed_port().await
    } else {
        start_app(app).await
    };
    let mut config = proxied_config(addr);
    let mut p = endpoint(addr, path);
    p.timeout = Duration::from_millis(300);
    config.proxy.connect = p.clone();
    for name in ["subscribe", "publish", "rpc"] {
        config.proxies.insert(name.into(), p.clone());
    }
    start(config).await
}

fn assert_temporary(reply: &Value) {
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");
}

#[tokio::test]
async fn a_slow_backend_times_out_as_a_temporary_error() {
    let server = failing_server("slow", false).await;
    let mut c = Client::connect_user(&server, "alice").await;
    let started = std::time::Instant::now();
    assert_temporary(&c.subscribe("conversation:1").await);
    assert!(started.elapsed() < SLOW, "answered before the backend");
    let sample = r#"switchboard_proxy_requests_total{proxy="subscribe",result="timeout"}"#;
    assert_eq!(metric(&server, sample).await, 1);
}

#[tokio::test]
async fn an_unreachable_backend_is_a_temporary_error() {
    let server = failing_server("connect", true).await;
    let (_c, reply) = connect_with_cookie(&server, "session=alice").await;
    assert_temporary(&reply);
    let sample = r#"switchboard_proxy_requests_total{proxy="connect",result="unreachable"}"#;
    assert_eq!(metric(&server, sample).await, 1);
}

#[tokio::test]
async fn a_backend_answering_500_is_a_temporary_error() {
    let server = failing_server("failing", false).await;
    let mut c = Client::connect_user(&server, "alice").await;
    let reply = c
        .request(json!({"rpc": {"method": "conversation:x", "data": {}}}))
        .await;
    assert_temporary(&reply);
    let sample = r#"switchboard_proxy_requests_total{proxy="rpc",result="bad_status"}"#;
    assert_eq!(metric(&server, sample).await, 1);
}

#[tokio::test]
async fn a_backend_answering_garbage_is_a_temporary_error() {
    let server = failing_server("garbage", false).await;
    let mut c = Client::connect_user(&server, "alice").await;
    // A publication needs no subscription when a publish proxy decides.
    assert_temporary(&c.publish("conversation:1", json!({"text": "hi"})).await);
    let sample = r#"switchboard_proxy_requests_total{proxy="publish",result="bad_answer"}"#;
    assert_eq!(metric(&server, sample).await, 1);
}
