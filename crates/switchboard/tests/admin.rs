//! The operator console (`[admin]`): off by default, refused without a password, its
//! login, session cookie, CSRF token, login rate, actions through the server API, and
//! console connections on the client protocol, against the real server.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use reqwest::header::{HeaderMap, HeaderValue, COOKIE, ORIGIN, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use switchboard::Config;

const PASSWORD: &str = "console-test-password";

fn admin_config() -> Config {
    let mut c = config();
    c.admin.enabled = true;
    c.admin.password = PASSWORD.into();
    c
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A logged-in console: its cookie and CSRF token.
struct Console {
    cookie: String,
    csrf: String,
}

impl Console {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&self.cookie).expect("cookie"));
        h.insert(
            "x-csrf-token",
            HeaderValue::from_str(&self.csrf).expect("csrf"),
        );
        h
    }
}

async fn login_attempt(server: &TestServer, password: &str) -> reqwest::Response {
    http()
        .post(server.http_url("/admin/api/login"))
        .json(&json!({ "password": password }))
        .send()
        .await
        .expect("login")
}

async fn login(server: &TestServer) -> Console {
    let resp = login_attempt(server, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp
        .headers()
        .get(SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = resp.json().await.expect("json");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    Console {
        cookie,
        csrf: body["csrf"].as_str().expect("csrf").to_owned(),
    }
}

/// `POST /admin/api/call/<method>` as `console` (none: without a session).
async fn console_call(
    server: &TestServer,
    console: Option<&Console>,
    method: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = http()
        .post(server.http_url(&format!("/admin/api/call/{method}")))
        .json(&body);
    if let Some(c) = console {
        req = req.headers(c.headers());
    }
    let resp = req.send().await.expect("call");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn console_token(server: &TestServer, console: &Console) -> String {
    let resp = http()
        .post(server.http_url("/admin/api/token"))
        .headers(console.headers())
        .json(&json!({}))
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn the_console_is_off_by_default() {
    let server = start_default().await;
    for path in ["/admin/", "/admin/console.js"] {
        let resp = http().get(server.http_url(path)).send().await.expect("get");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        login_attempt(&server, "").await.status(),
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test]
async fn enabled_without_a_password_the_server_refuses_to_start() {
    let mut c = admin_config();
    c.admin.password = String::new();
    let err = switchboard::Server::bind(c)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("admin.password"), "{err}");
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let server = start(admin_config()).await;
    let resp = http()
        .get(server.http_url("/admin"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    let resp = http()
        .get(server.http_url("/admin/"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let page = resp.text().await.expect("text");
    assert!(page.contains("/admin/console.js"));
    assert!(!page.contains("https://"), "nothing loads from elsewhere");
    server.stop().await;
}

#[tokio::test]
async fn login_session_and_logout() {
    let server = start(admin_config()).await;
    let wrong = login_attempt(&server, "not-the-password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let resp = login_attempt(&server, PASSWORD).await;
    let set_cookie = resp.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=28800",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let console = login(&server).await;
    let session = |cookie: Option<String>| {
        let server = &server;
        async move {
            let mut req = http().get(server.http_url("/admin/api/session"));
            if let Some(c) = cookie {
                req = req.header(COOKIE, c);
            }
            req.send().await.expect("session").status()
        }
    };
    assert_eq!(session(Some(console.cookie.clone())).await, StatusCode::OK);
    assert_eq!(session(None).await, StatusCode::UNAUTHORIZED);
    let forged = console.cookie.replacen(".", ".0", 2);
    assert_eq!(session(Some(forged)).await, StatusCode::UNAUTHORIZED);

    // Logging out needs the CSRF token, then ends the session for good.
    let no_csrf = http()
        .post(server.http_url("/admin/api/logout"))
        .header(COOKIE, &console.cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    let out = http()
        .post(server.http_url("/admin/api/logout"))
        .headers(console.headers())
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::OK);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .contains("Max-Age=0"));
    assert_eq!(
        session(Some(console.cookie.clone())).await,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = console_call(&server, Some(&console), "info", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_address() {
    let mut c = admin_config();
    c.admin.login_attempts_per_minute = 2;
    let server = start(c).await;
    for _ in 0..2 {
        let resp = login_attempt(&server, "wrong").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Even the right password waits now.
    let resp = login_attempt(&server, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "60");
    assert!(resp.headers().get(SET_COOKIE).is_none());
    server.stop().await;
}

/// Captures the audit lines of this test binary's server.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn actions_need_a_session_and_its_csrf_token_and_are_audited() {
    // One subscriber for the whole test binary (a thread's own default misses events
    // whose call site another test's thread registered first); lines of this test are
    // told apart by its session id.
    static AUDIT: std::sync::OnceLock<Lines> = std::sync::OnceLock::new();
    let lines = AUDIT
        .get_or_init(|| {
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("switchboard::admin::audit=info")
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            lines
        })
        .clone();

    let server = start(admin_config()).await;
    let mut alice = Client::connect_user(&server, "alice").await;
    assert!(alice.subscribe("chat:1").await.get("subscribe").is_some());
    assert_eq!(
        login_attempt(&server, "wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let console = login(&server).await;
    let publish = json!({"channel": "chat:1", "data": {"text": "from the console"}});

    let (status, _) = console_call(&server, None, "publish", publish.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no session");
    let only_cookie = Console {
        cookie: console.cookie.clone(),
        csrf: "wrong".into(),
    };
    let (status, _) = console_call(&server, Some(&only_cookie), "publish", publish.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    let cross = http()
        .post(server.http_url("/admin/api/call/publish"))
        .headers(console.headers())
        .header(ORIGIN, "http://evil.example")
        .json(&publish)
        .send()
        .await
        .expect("call");
    assert_eq!(cross.status(), StatusCode::FORBIDDEN, "another origin");

    let (status, reply) = console_call(&server, Some(&console), "publish", publish).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(reply["result"]["offset"].as_u64().is_some(), "{reply}");
    assert_eq!(
        alice.next_pub("chat:1").await["data"],
        json!({"text": "from the console"})
    );

    // The server API's checks, unchanged.
    let (status, reply) = console_call(
        &server,
        Some(&console),
        "publish",
        json!({"channel": "nope:1", "data": {}}),
    )
    .await;
    assert_eq!((status, error_code(&reply)), (StatusCode::OK, Some(102)));
    let (status, _) = console_call(&server, Some(&console), "publish", json!({"data": {}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) =
        console_call(&server, Some(&console), "revoke_token", json!({"uid": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not a console method");

    let (status, _) = console_call(
        &server,
        Some(&console),
        "history_remove",
        json!({"channel": "chat:1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = console_call(
        &server,
        Some(&console),
        "unsubscribe",
        json!({"user": "alice", "channel": "chat:1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let push = alice.next_push().await;
    assert_eq!(push["channel"], "chat:1");
    assert!(push.get("unsubscribe").is_some(), "{push}");
    let (status, _) = console_call(
        &server,
        Some(&console),
        "disconnect",
        json!({"user": "alice"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(alice.closed().await.code, 3503);

    let all = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    // The session id's first 8 characters, as the audit lines name the session.
    let id = console.cookie.split('.').nth(1).expect("session id");
    let me = format!("admin=\"{}\"", &id[..8]);
    let audit: String = all
        .lines()
        .filter(|l| l.contains(&me) || l.contains("login failed"))
        .map(|l| format!("{l}\n"))
        .collect();
    let actions: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("admin action"))
        .collect();
    // The refused calls never ran: one line per action that did (the failed publish
    // into an unknown channel included, with its error code).
    assert_eq!(actions.len(), 6, "{audit}");
    assert!(
        actions[0].contains("method=\"publish\"") || actions[0].contains("method=publish"),
        "{audit}"
    );
    assert!(actions[0].contains("channel=chat:1"), "{audit}");
    assert!(actions[1].contains("code=102"), "{audit}");
    assert!(
        actions
            .iter()
            .any(|l| l.contains("user=alice") && l.contains("disconnect")),
        "{audit}"
    );
    assert!(
        !audit.contains("from the console"),
        "no published data in the audit log"
    );
    assert!(
        audit.contains("admin login failed: wrong password"),
        "{audit}"
    );
    assert!(audit.contains("admin logged in"), "{audit}");
    server.stop().await;
}

#[tokio::test]
async fn console_connections_watch_the_feed_and_channels_without_joining() {
    let mut c = admin_config();
    c.admin.stats_interval = std::time::Duration::from_millis(100);
    let server = start(c).await;
    let mut alice = Client::connect_user(&server, "alice").await;
    assert!(alice.subscribe("chat:1").await.get("subscribe").is_some());

    // No session, no token; a forged token is refused like any invalid token.
    let resp = http()
        .post(server.http_url("/admin/api/token"))
        .json(&json!({}))
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let console = login(&server).await;
    let token = console_token(&server, &console).await;
    let mut forged = Client::open(&server).await;
    let mut bad = token.clone();
    let last = bad.pop();
    bad.push(if last == Some('x') { 'y' } else { 'x' });
    forged
        .send_text(&json!({"id": 1, "connect": {"token": bad}}).to_string())
        .await;
    assert_eq!(forged.closed().await.code, 3500);

    // Only console connections may watch the feed.
    let refused = alice.subscribe("_admin:stats").await;
    assert_eq!(error_code(&refused), Some(102), "{refused}");

    let mut watcher = Client::connect(&server, &token).await;
    assert!(watcher
        .subscribe("_admin:stats")
        .await
        .get("subscribe")
        .is_some());
    let stats = watcher.next_pub("_admin:stats").await["data"].clone();
    assert_eq!(stats["nodes"][0]["num_clients"], 1, "{stats}");
    assert_eq!(
        stats["nodes"][0]["num_users"], 1,
        "the console is nobody: {stats}"
    );
    assert_eq!(
        stats["channels"],
        json!([["chat:1", 1], ["user:alice", 1]]),
        "{stats}"
    );

    // Watching a channel: its publications arrive, but the console is not present,
    // not counted, and may not publish.
    assert!(watcher.subscribe("chat:1").await.get("subscribe").is_some());
    assert!(watcher
        .subscribe("_admin:presence:chat:1")
        .await
        .get("subscribe")
        .is_some());
    let presence = watcher.next_pub("_admin:presence:chat:1").await["data"].clone();
    assert_eq!(presence["stats"]["num_clients"], 1, "{presence}");
    let clients: Vec<&Value> = presence["presence"]
        .as_object()
        .expect("presence")
        .values()
        .collect();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["user"], "alice");
    let channels = api_call(&server, "channels", json!({})).await;
    assert_eq!(
        channels["result"]["channels"]["chat:1"]["num_clients"], 1,
        "{channels}"
    );
    let published = watcher.publish("chat:1", json!({"x": 1})).await;
    assert_eq!(error_code(&published), Some(103), "{published}");
    alice.publish("chat:1", json!({"text": "hi"})).await;
    let tail = watcher.next_pub("chat:1").await;
    assert_eq!(tail["data"], json!({"text": "hi"}));
    assert_eq!(tail["info"]["user"], "alice");
    // alice saw her own join and no other before her publication.
    loop {
        let push = alice.next_push().await;
        if let Some(join) = push.get("join") {
            assert_eq!(join["info"]["user"], "alice", "the console joined: {push}");
        }
        if push.get("pub").is_some() {
            assert_eq!(push["pub"]["data"], json!({"text": "hi"}));
            break;
        }
    }

    // A user's view: status on every node, connections here.
    assert!(watcher
        .subscribe("_admin:user:alice")
        .await
        .get("subscribe")
        .is_some());
    let user = watcher.next_pub("_admin:user:alice").await["data"].clone();
    assert_eq!(user["status"]["online"], true, "{user}");
    assert_eq!(
        user["connections"].as_array().map(Vec::len),
        Some(1),
        "{user}"
    );

    // A logged-out session's tokens open nothing.
    let out = http()
        .post(server.http_url("/admin/api/logout"))
        .headers(console.headers())
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::OK);
    let mut late = Client::open(&server).await;
    late.send_text(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    assert_eq!(late.closed().await.code, 3500);
    server.stop().await;
}

#[tokio::test]
async fn with_redis_a_console_sees_every_node_and_a_session_works_on_each() {
    use common::redis::{nodes_with, Redis, Topology};
    let Some(redis) = Redis::start(Topology::Standalone) else {
        return;
    };
    let nodes = nodes_with(&redis, 2, |c| {
        c.admin.enabled = true;
        c.admin.password = PASSWORD.into();
        c.admin.secret = "shared-console-secret".into();
        c.admin.stats_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let _bob = Client::connect_user(&nodes[1], "bob").await;
    let console = login(&nodes[0]).await;
    let token = console_token(&nodes[0], &console).await;
    let mut watcher = Client::connect(&nodes[0], &token).await;
    assert!(watcher
        .subscribe("_admin:stats")
        .await
        .get("subscribe")
        .is_some());
    // Node 1's status reaches node 0 with its next heartbeat.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let stats = watcher.next_pub("_admin:stats").await["data"].clone();
        let mut names: Vec<String> = stats["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        let bob_there = stats["channels"] == json!([["user:bob", 1]]);
        if names == ["node-0", "node-1"] && bob_there {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
    }

    // With one secret, the session is good on every node; a logout on one ends it on all.
    let (status, _) = console_call(&nodes[1], Some(&console), "info", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let out = http()
        .post(nodes[0].http_url("/admin/api/logout"))
        .headers(console.headers())
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::OK);
    let (status, _) = console_call(&nodes[1], Some(&console), "info", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for node in nodes {
        node.stop().await;
    }
}
