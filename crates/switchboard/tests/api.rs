//! The server HTTP API over real HTTP, with real WebSocket clients watching the effect:
//! every method, every status and error code, keys, limits and idempotency; plus
//! `/metrics`, `/ready`, the OpenAPI document and the CLI.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One HTTP response: status and JSON body (`Null` if the body is not JSON).
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn result(&self) -> &Value {
        assert_eq!(self.status, 200, "{}", self.body);
        assert!(self.body.get("error").is_none(), "{}", self.body);
        &self.body["result"]
    }

    /// The error code; asserts the HTTP status too.
    fn error(&self, status: u16) -> u64 {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(self.body.get("result").is_none(), "{}", self.body);
        let message = self.body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{}", self.body);
        self.body["error"]["code"].as_u64().expect("error code")
    }
}

/// Sends `body` (raw text) to `path` with `headers`.
async fn send(server: &TestServer, path: &str, headers: &[(&str, &str)], body: String) -> Answer {
    let mut req = reqwest::Client::new()
        .post(server.http_url(path))
        .timeout(TIMEOUT)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("http");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// Calls `method` with the test key.
async fn call(server: &TestServer, method: &str, params: Value) -> Answer {
    send(
        server,
        &format!("/api/{method}"),
        &[("X-API-Key", API_KEY)],
        params.to_string(),
    )
    .await
}

async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(server.http_url(path))
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("http");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn client_id(c: &Client) -> String {
    c.connect_reply["connect"]["client"]
        .as_str()
        .expect("client id")
        .to_owned()
}

#[tokio::test]
async fn publish_reaches_subscribers_with_tags_and_returns_the_position() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    assert!(ann.subscribe("chat:1").await.get("subscribe").is_some());

    let a = call(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": {"text": "hi"}, "tags": {"kind": "note"}}),
    )
    .await;
    let r = a.result();
    assert_eq!(r["offset"], json!(1));
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    let p = ann.next_pub("chat:1").await;
    assert_eq!(p["data"], json!({"text": "hi"}));
    assert_eq!(p["tags"], json!({"kind": "note"}));
    assert!(
        p.get("info").is_none(),
        "server publications have no publisher"
    );

    // The personal channel every connection joins (emitToUser).
    call(
        &server,
        "publish",
        json!({"channel": "user:ann", "data": 7}),
    )
    .await
    .result();
    assert_eq!(ann.next_pub("user:ann").await["data"], json!(7));

    // A pretty-printed payload must not split a newline-delimited frame.
    send(
        &server,
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        "{\"channel\": \"chat:1\",\n \"data\": {\n  \"a\": \"x\\ny\"\n }\n}".into(),
    )
    .await
    .result();
    assert_eq!(ann.next_pub("chat:1").await["data"], json!({"a": "x\ny"}));

    // skip_history: delivered, not stored.
    let r = call(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": 3, "skip_history": true}),
    )
    .await;
    assert_eq!(r.result()["offset"], json!(0));
    assert_eq!(ann.next_pub("chat:1").await["data"], json!(3));
    let h = call(&server, "history", json!({"channel": "chat:1"})).await;
    assert_eq!(h.result()["offset"], json!(2));
}

#[tokio::test]
async fn request_mistakes_get_4xx_and_channel_errors_get_200() {
    let server = start_default().await;
    let unknown = call(&server, "publish", json!({"channel": "nope:1", "data": 1})).await;
    assert_eq!(unknown.error(200), 102);
    let invalid = call(
        &server,
        "publish",
        json!({"channel": "chat:a b", "data": 1}),
    )
    .await;
    assert_eq!(invalid.error(200), 102);

    for bad in [
        json!({"data": 1}),
        json!({"channel": "chat:1"}),
        json!({"channel": "", "data": 1}),
        json!({"channel": 5, "data": 1}),
        json!({"channel": "chat:1", "data": 1, "tags": {"a": 1}}),
        json!({"channel": "chat:1", "data": 1, "skip_history": "yes"}),
        json!({"channel": "chat:1", "data": 1, "idempotency_key": "k".repeat(129)}),
        json!([1, 2]),
        json!("publish"),
    ] {
        let a = call(&server, "publish", bad.clone()).await;
        assert_eq!(a.error(400), 107, "{bad}");
        let message = a.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("bad request: "), "{message}");
    }
    let a = send(
        &server,
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        "{\"channel\":".into(),
    )
    .await;
    assert_eq!(a.error(400), 107);
    let a = send(
        &server,
        "/api/publish",
        &[("X-API-Key", API_KEY)],
        "".into(),
    )
    .await;
    assert_eq!(a.error(400), 107, "an empty body is {{}}: channel missing");

    // Methods whose parameters are all optional accept an empty body.
    let a = send(&server, "/api/info", &[("X-API-Key", API_KEY)], "".into()).await;
    assert!(a.result()["nodes"].is_array());

    let a = call(&server, "no_such_method", json!({})).await;
    assert_eq!(a.error(404), 104);
    let a = call(&server, "broadcast", json!({"channels": [], "data": 1})).await;
    assert_eq!(a.error(400), 107);
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:1", "limit": "2"}),
    )
    .await;
    assert_eq!(a.error(400), 107);
    let a = call(
        &server,
        "subscribe",
        json!({"user": "", "channel": "chat:1"}),
    )
    .await;
    assert_eq!(a.error(400), 107);
    let a = call(&server, "channels", json!({"pattern": "*".repeat(1025)})).await;
    assert_eq!(a.error(400), 107);
    // Integers may be written as 2.0 (JSON Schema agrees), not as 2.5.
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:1", "limit": 2.0}),
    )
    .await;
    assert!(a.result()["publications"].is_array());
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:1", "limit": 2.5}),
    )
    .await;
    assert_eq!(a.error(400), 107);
    // Nested objects must be objects (serde alone would take a struct as an array).
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:1", "since": []}),
    )
    .await;
    assert_eq!(a.error(400), 107);
    let a = call(
        &server,
        "disconnect",
        json!({"user": "u", "disconnect": [4001, "x"]}),
    )
    .await;
    assert_eq!(a.error(400), 107);
    let since = json!({"offset": 9_223_372_036_854_775_808_u64, "epoch": "e"});
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:1", "since": since}),
    )
    .await;
    assert_eq!(a.error(400), 107);

    // GET on a method is not a call.
    let (status, _) = get(&server, "/api/publish").await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn keys_in_either_header_several_keys_and_wrong_keys() {
    let mut config = common::config();
    config.api_keys = vec!["second-key".into(), "third-key".into()];
    let server = start(config).await;
    let info = json!({}).to_string();
    for headers in [
        vec![("X-API-Key", API_KEY)],
        vec![("X-API-Key", "second-key")],
        vec![("Authorization", "apikey third-key")],
        vec![("Authorization", "apikey test-api-key")],
    ] {
        let a = send(&server, "/api/info", &headers, info.clone()).await;
        assert!(a.result()["nodes"].is_array(), "{headers:?}");
    }
    for headers in [
        vec![],
        vec![("X-API-Key", "wrong")],
        vec![("X-API-Key", "test-api-ke")],
        vec![("X-API-Key", "")],
        vec![("Authorization", "Bearer test-api-key")],
        vec![("Authorization", "apikey wrong")],
    ] {
        let a = send(&server, "/api/info", &headers, info.clone()).await;
        assert_eq!(a.error(401), 101, "{headers:?}");
    }
    // No key: 401 before anything else is revealed (method, size, shape).
    let a = send(&server, "/api/no_such_method", &[], "{".into()).await;
    assert_eq!(a.error(401), 101);
    let a = send(&server, "/api", &[], "{".into()).await;
    assert_eq!(a.error(401), 101);

    let metrics = get(&server, "/metrics").await.1;
    assert!(
        metrics.contains("switchboard_auth_failures_total{source=\"api\"} 8"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_configured_key_every_call_is_refused() {
    let mut config = common::config();
    config.api_key = String::new();
    let server = start(config).await;
    let a = send(&server, "/api/info", &[("X-API-Key", "")], "{}".into()).await;
    assert_eq!(a.error(401), 101);
    let a = send(
        &server,
        "/api/info",
        &[("X-API-Key", "anything")],
        "{}".into(),
    )
    .await;
    assert_eq!(a.error(401), 101);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let mut config = common::config();
    config.api_max_body_size = 1024;
    let server = start(config).await;
    let big = json!({"channel": "chat:1", "data": "x".repeat(2000)});
    let a = call(&server, "publish", big).await;
    assert_eq!(a.error(413), 107);
    let small = json!({"channel": "chat:1", "data": "x".repeat(500)});
    call(&server, "publish", small).await.result();
}

#[tokio::test]
async fn the_older_single_endpoint_form_works() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let a = send(
        &server,
        "/api",
        &[("Authorization", &format!("apikey {API_KEY}"))],
        json!({"method": "publish", "params": {"channel": "user:ann", "data": {"v": 4}}})
            .to_string(),
    )
    .await;
    assert_eq!(a.result()["offset"], json!(1));
    assert_eq!(ann.next_pub("user:ann").await["data"], json!({"v": 4}));
    let a = send(
        &server,
        "/api",
        &[("X-API-Key", API_KEY)],
        json!({"method": "info"}).to_string(),
    )
    .await;
    assert_eq!(a.result()["nodes"][0]["num_users"], json!(1));
    let a = send(
        &server,
        "/api",
        &[("X-API-Key", API_KEY)],
        json!({"method": "nope", "params": {}}).to_string(),
    )
    .await;
    assert_eq!(a.error(404), 104);
    let a = send(&server, "/api", &[("X-API-Key", API_KEY)], "{}".into()).await;
    assert_eq!(a.error(400), 107);
}

#[tokio::test]
async fn idempotent_publish_publishes_once_per_key_and_channel() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("chat:1").await;
    let req = json!({"channel": "chat:1", "data": {"n": 1}, "idempotency_key": "order-42"});
    let first = call(&server, "publish", req.clone()).await;
    let again = call(&server, "publish", req.clone()).await;
    assert_eq!(first.result(), again.result());
    assert_eq!(ann.next_pub("chat:1").await["data"], json!({"n": 1}));
    ann.assert_quiet(Duration::from_millis(200)).await;
    let h = call(
        &server,
        "history",
        json!({"channel": "chat:1", "limit": -1}),
    )
    .await;
    assert_eq!(h.result()["publications"].as_array().unwrap().len(), 1);

    // Same key, other channel: another publication.
    let other = call(
        &server,
        "publish",
        json!({"channel": "chat:2", "data": 1, "idempotency_key": "order-42"}),
    )
    .await;
    assert_eq!(other.result()["offset"], json!(1));
    // Without a key, each call publishes.
    let plain = json!({"channel": "chat:1", "data": 2});
    call(&server, "publish", plain.clone()).await.result();
    let r = call(&server, "publish", plain).await;
    assert_eq!(r.result()["offset"], json!(3));

    // Broadcast keys apply per channel too.
    let b = json!({"channels": ["chat:1", "chat:3"], "data": 5, "idempotency_key": "b-1"});
    let first = call(&server, "broadcast", b.clone()).await;
    let again = call(&server, "broadcast", b).await;
    assert_eq!(first.result(), again.result());
    assert_eq!(first.result()["responses"][0]["result"]["offset"], json!(4));
}

#[tokio::test]
async fn broadcast_publishes_into_each_channel_with_one_response_each() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    ann.subscribe("chat:room").await;
    let a = call(
        &server,
        "broadcast",
        json!({"channels": ["chat:room", "user:bob", "nope:1", ""], "data": {"hello": 1}}),
    )
    .await;
    let responses = a.result()["responses"].as_array().unwrap().clone();
    assert_eq!(responses.len(), 4);
    assert_eq!(responses[0]["result"]["offset"], json!(1));
    assert!(responses[1]["result"].is_object(), "{responses:?}");
    assert_eq!(responses[2]["error"]["code"], json!(102));
    assert_eq!(responses[3]["error"]["code"], json!(107));
    assert_eq!(ann.next_pub("chat:room").await["data"], json!({"hello": 1}));
    assert_eq!(bob.next_pub("user:bob").await["data"], json!({"hello": 1}));
}

#[tokio::test]
async fn subscribe_and_unsubscribe_change_a_users_subscriptions() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut ann2 = Client::connect_user(&server, "ann").await;

    call(
        &server,
        "subscribe",
        json!({"user": "ann", "channel": "news:1"}),
    )
    .await
    .result();
    for c in [&mut ann, &mut ann2] {
        let push = c.next_push().await;
        assert_eq!(push["channel"], json!("news:1"));
        assert!(push["subscribe"].is_object(), "{push}");
    }
    call(
        &server,
        "publish",
        json!({"channel": "news:1", "data": "n"}),
    )
    .await
    .result();
    assert_eq!(ann.next_pub("news:1").await["data"], json!("n"));
    assert_eq!(ann2.next_pub("news:1").await["data"], json!("n"));

    // Only one of the user's connections.
    let only = client_id(&ann2);
    call(
        &server,
        "subscribe",
        json!({"user": "ann", "channel": "news:2", "client": only}),
    )
    .await
    .result();
    assert_eq!(ann2.next_push().await["channel"], json!("news:2"));
    ann.assert_quiet(Duration::from_millis(200)).await;

    call(
        &server,
        "unsubscribe",
        json!({"user": "ann", "channel": "news:1"}),
    )
    .await
    .result();
    for c in [&mut ann, &mut ann2] {
        let push = c.next_push().await;
        assert_eq!(push["channel"], json!("news:1"));
        assert!(push["unsubscribe"].is_object(), "{push}");
    }
    call(
        &server,
        "publish",
        json!({"channel": "news:1", "data": "gone"}),
    )
    .await
    .result();
    ann.assert_quiet(Duration::from_millis(200)).await;

    let a = call(
        &server,
        "subscribe",
        json!({"user": "ann", "channel": "nope:1"}),
    )
    .await;
    assert_eq!(a.error(200), 102);
    let a = call(
        &server,
        "unsubscribe",
        json!({"user": "ann", "channel": "nope:1"}),
    )
    .await;
    assert_eq!(a.error(200), 102);
    // A user with no connection here: nothing to do, not an error.
    call(
        &server,
        "subscribe",
        json!({"user": "nobody", "channel": "news:1"}),
    )
    .await
    .result();
}

#[tokio::test]
async fn disconnect_closes_with_the_default_or_a_custom_code() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    call(&server, "disconnect", json!({"user": "ann"}))
        .await
        .result();
    let closed = ann.closed().await;
    assert_eq!(closed.code, 3503, "{closed:?}");

    let mut bob = Client::connect_user(&server, "bob").await;
    call(
        &server,
        "disconnect",
        json!({"user": "bob", "disconnect": {"code": 4001, "reason": "kicked by admin"}}),
    )
    .await
    .result();
    let closed = bob.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4001, "kicked by admin")
    );

    // `client` picks one connection; `whitelist` keeps some.
    let mut c1 = Client::connect_user(&server, "cy").await;
    let mut c2 = Client::connect_user(&server, "cy").await;
    let mut c3 = Client::connect_user(&server, "cy").await;
    call(
        &server,
        "disconnect",
        json!({"user": "cy", "client": client_id(&c1)}),
    )
    .await
    .result();
    assert_eq!(c1.closed().await.code, 3503);
    call(
        &server,
        "disconnect",
        json!({"user": "cy", "whitelist": [client_id(&c3)]}),
    )
    .await
    .result();
    assert_eq!(c2.closed().await.code, 3503);
    assert!(c3.request(json!({"ping": {}})).await.get("ping").is_some());

    for code in [0, 3000, 3503, 5000] {
        let a = call(
            &server,
            "disconnect",
            json!({"user": "cy", "disconnect": {"code": code, "reason": "x"}}),
        )
        .await;
        assert_eq!(a.error(400), 107, "{code}");
    }
    let a = call(&server, "disconnect", json!({"client": "x"})).await;
    assert_eq!(a.error(400), 107);
}

#[tokio::test]
async fn refresh_expires_connections_or_moves_their_deadline() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let later = switchboard::auth::now_secs() + 3600;
    call(
        &server,
        "refresh",
        json!({"user": "ann", "expire_at": later}),
    )
    .await
    .result();
    let sessions = server.node.user_sessions("ann", None);
    assert_eq!(sessions[0].expires_at(), Some(later));
    let push = ann.next_push().await;
    assert_eq!(push["refresh"]["expires"], json!(true), "{push}");
    assert!(push["refresh"]["ttl"].as_u64().unwrap() > 3500, "{push}");
    call(&server, "refresh", json!({"user": "ann", "expire_at": 0}))
        .await
        .result();
    assert_eq!(sessions[0].expires_at(), None);
    drop(sessions);

    call(&server, "refresh", json!({"user": "ann", "expired": true}))
        .await
        .result();
    assert_eq!(ann.closed().await.code, 3005);

    let mut bob = Client::connect_user(&server, "bob").await;
    call(&server, "refresh", json!({"user": "bob", "expire_at": 1}))
        .await
        .result();
    assert_eq!(bob.closed().await.code, 3005, "a deadline in the past");

    // A deadline moved into the near future applies at once, not at the next ping.
    let mut cfg = config();
    cfg.client.expired_close_delay = std::time::Duration::ZERO;
    let server = start(cfg).await;
    let mut cid = Client::connect_user(&server, "cid").await;
    let soon = switchboard::auth::now_secs() + 1;
    call(
        &server,
        "refresh",
        json!({"user": "cid", "expire_at": soon}),
    )
    .await
    .result();
    assert_eq!(
        cid.closed().await.code,
        3005,
        "closed within the read timeout"
    );
}

#[tokio::test]
async fn presence_and_presence_stats() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut ann2 = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    for c in [&mut ann, &mut ann2, &mut bob] {
        c.subscribe("chat:1").await;
    }
    let a = call(&server, "presence", json!({"channel": "chat:1"})).await;
    let presence = a.result()["presence"].as_object().unwrap().clone();
    assert_eq!(presence.len(), 3);
    let entry = &presence[&client_id(&bob)];
    assert_eq!(entry["user"], json!("bob"));
    assert_eq!(entry["client"], json!(client_id(&bob)));

    let a = call(&server, "presence_stats", json!({"channel": "chat:1"})).await;
    assert_eq!(a.result(), &json!({"num_clients": 3, "num_users": 2}));
    let a = call(&server, "presence_stats", json!({"channel": "chat:empty"})).await;
    assert_eq!(a.result(), &json!({"num_clients": 0, "num_users": 0}));

    let a = call(&server, "presence", json!({"channel": "news:1"})).await;
    assert_eq!(a.error(200), 108);
    let a = call(&server, "presence_stats", json!({"channel": "news:1"})).await;
    assert_eq!(a.error(200), 108);
    let a = call(&server, "presence", json!({"channel": "nope:1"})).await;
    assert_eq!(a.error(200), 102);
    let a = call(&server, "presence", json!({})).await;
    assert_eq!(a.error(400), 107);
}

#[tokio::test]
async fn user_status_of_online_and_unknown_users() {
    let server = start_default().await;
    let _a = Client::connect_user(&server, "ann").await;
    let _b = Client::connect_user(&server, "ann").await;
    let a = call(&server, "user_status", json!({"users": ["ann", "ghost"]})).await;
    let st = a.result()["statuses"].as_array().unwrap().clone();
    assert_eq!(st[0]["user"], json!("ann"));
    assert_eq!(st[0]["online"], json!(true));
    assert_eq!(st[0]["connections"], json!(2));
    assert!(st[0]["last_seen"].as_u64().unwrap() > 0);
    assert_eq!(
        st[1],
        json!({"user": "ghost", "online": false, "connections": 0, "last_seen": 0})
    );
    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    assert_eq!(
        call(&server, "user_status", json!({"users": many}))
            .await
            .error(400),
        107
    );
    assert_eq!(
        call(&server, "user_status", json!({})).await.error(400),
        107
    );
}

#[tokio::test]
async fn history_pages_and_history_remove() {
    let server = start_default().await;
    for n in 1..=3 {
        call(&server, "publish", json!({"channel": "chat:h", "data": n}))
            .await
            .result();
    }
    let a = call(&server, "history", json!({"channel": "chat:h"})).await;
    let r = a.result().clone();
    assert_eq!(r["offset"], json!(3));
    assert_eq!(r["publications"], json!([]), "no limit: position only");
    let epoch = r["epoch"].as_str().unwrap().to_owned();

    let a = call(&server, "history", json!({"channel": "chat:h", "limit": 2})).await;
    let pubs = a.result()["publications"].clone();
    assert_eq!(pubs[0]["data"], json!(1));
    assert_eq!(pubs[1]["offset"], json!(2));
    assert_eq!(pubs.as_array().unwrap().len(), 2);

    let a = call(
        &server,
        "history",
        json!({"channel": "chat:h", "limit": 10, "reverse": true}),
    )
    .await;
    assert_eq!(a.result()["publications"][0]["data"], json!(3));

    let since = json!({"offset": 2, "epoch": epoch});
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:h", "limit": 10, "since": since}),
    )
    .await;
    assert_eq!(
        a.result()["publications"],
        json!([{"data": 3, "offset": 3}])
    );

    let stale = json!({"offset": 2, "epoch": "not-this-one"});
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:h", "limit": 10, "since": stale}),
    )
    .await;
    assert_eq!(a.error(200), 112);

    let a = call(&server, "history", json!({"channel": "news:1"})).await;
    assert_eq!(a.error(200), 108);
    let a = call(&server, "history", json!({"channel": "nope:1"})).await;
    assert_eq!(a.error(200), 102);

    call(&server, "history_remove", json!({"channel": "chat:h"}))
        .await
        .result();
    let a = call(
        &server,
        "history",
        json!({"channel": "chat:h", "limit": -1}),
    )
    .await;
    assert_eq!(a.result()["publications"], json!([]));
    let a = call(&server, "history_remove", json!({"channel": "nope:1"})).await;
    assert_eq!(a.error(200), 102);
}

#[tokio::test]
async fn channels_with_a_pattern_and_info() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    ann.subscribe("chat:1").await;
    bob.subscribe("chat:1").await;
    bob.subscribe("chat:2").await;

    let a = call(&server, "channels", json!({"pattern": "chat:*"})).await;
    assert_eq!(
        a.result()["channels"],
        json!({"chat:1": {"num_clients": 2}, "chat:2": {"num_clients": 1}})
    );
    let a = call(&server, "channels", json!({})).await;
    let all = a.result()["channels"].as_object().unwrap().clone();
    assert!(
        all.contains_key("user:ann") && all.contains_key("chat:2"),
        "{all:?}"
    );
    let a = call(&server, "channels", json!({"pattern": "user:?nn"})).await;
    assert_eq!(
        a.result()["channels"],
        json!({"user:ann": {"num_clients": 1}})
    );

    let a = call(&server, "info", json!({})).await;
    let node = a.result()["nodes"][0].clone();
    assert_eq!(node["name"], json!(server.node.name));
    assert_eq!(node["version"], json!(switchboard::VERSION));
    assert_eq!(node["num_clients"], json!(2));
    assert_eq!(node["num_users"], json!(2));
    assert_eq!(node["num_channels"], json!(4));
    assert_eq!(node["num_subs"], json!(5));
    assert!(node["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(node["uptime"].is_u64());
}

#[tokio::test]
async fn batch_runs_commands_in_order_with_one_reply_each() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let a = call(
        &server,
        "batch",
        json!({"commands": [
            {"publish": {"channel": "user:ann", "data": 1}},
            {"publish": {"channel": "nope:1", "data": 2}},
            {"presence_stats": {"channel": "chat:1"}},
            {"history": {"channel": "news:1"}},
            {"info": {}},
        ], "parallel": false}),
    )
    .await;
    assert_eq!(a.status, 200);
    let replies = a.body["replies"].as_array().expect("replies").clone();
    assert_eq!(replies.len(), 5);
    assert_eq!(replies[0]["publish"]["offset"], json!(1));
    assert_eq!(replies[1]["error"]["code"], json!(102));
    assert_eq!(
        replies[2]["presence_stats"],
        json!({"num_clients": 0, "num_users": 0})
    );
    assert_eq!(replies[3]["error"]["code"], json!(108));
    assert!(replies[4]["info"]["nodes"].is_array());
    assert_eq!(ann.next_pub("user:ann").await["data"], json!(1));

    for bad in [
        json!({"commands": [{"nope": {}}]}),
        json!({"commands": [{"publish": {"channel": 1, "data": 1}}]}),
        json!({"commands": [{"batch": {"commands": []}}]}),
        // One command breaking its schema refuses the whole batch: nothing runs.
        json!({"commands": [{"publish": {"channel": "user:ann", "data": 9}}, {"publish": {"channel": "", "data": 3}}]}),
        json!({"commands": {}}),
        json!({"commands": [{"publish": ["user:ann", 9]}]}),
        json!({"commands": [{"info": {}, "channels": {}}]}),
        json!({"commands": [{}]}),
        json!({}),
    ] {
        let a = call(&server, "batch", bad.clone()).await;
        assert_eq!(a.error(400), 107, "{bad}");
    }
    ann.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn metrics_ready_health_and_openapi() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("chat:1").await;
    call(&server, "publish", json!({"channel": "chat:1", "data": 1}))
        .await
        .result();
    ann.next_pub("chat:1").await;
    call(&server, "publish", json!({"channel": "nope:1", "data": 1})).await;
    call(&server, "nope", json!({})).await;

    let resp = reqwest::get(server.http_url("/metrics")).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.unwrap();
    for line in [
        "switchboard_connections{transport=\"websocket\",encoding=\"json\"} 1",
        "switchboard_users 1",
        "switchboard_subscriptions 2",
        "switchboard_commands_total{command=\"connect\",result=\"ok\"} 1",
        "switchboard_commands_total{command=\"subscribe\",result=\"ok\"} 1",
        "switchboard_publications_total{namespace=\"chat\"} 1",
        // Ann's own join, then the publication.
        "switchboard_deliveries_total{namespace=\"chat\"} 2",
        "switchboard_api_requests_total{method=\"publish\",status=\"200\"} 2",
        "switchboard_api_requests_total{method=\"unknown\",status=\"404\"} 1",
        "switchboard_api_errors_total{method=\"publish\",code=\"102\"} 1",
        "switchboard_api_request_duration_seconds_count 3",
        "switchboard_outbox_drops_total 0",
        "switchboard_slow_disconnects_total 0",
        "switchboard_auth_failures_total{source=\"connect\"} 0",
        "# TYPE switchboard_delivery_latency_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    // One latency sample per write batch: at least the publication's.
    let samples: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_delivery_latency_seconds_count "))
        .and_then(|v| v.parse().ok())
        .expect("latency count");
    assert!((1..=2).contains(&samples), "{samples}");

    assert_eq!(get(&server, "/health").await.0, 200);
    let (status, body) = get(&server, "/ready").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));

    let (status, doc) = get(&server, "/api/openapi.json").await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/api/publish"]["post"].is_object());
}

#[tokio::test]
async fn ready_fails_once_shutdown_begins() {
    let server = start_default().await;
    server.node.begin_shutdown();
    // The listener may already be closing; either a 503 or a refused connection is right.
    if let Ok(resp) = reqwest::get(server.http_url("/ready")).await {
        assert_eq!(resp.status().as_u16(), 503);
    }
}

/// Runs the real binary with `args` (off the runtime: it blocks); returns whether it
/// succeeded, its stdout and its stderr.
async fn cli(server: &TestServer, key: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    // Every SWITCHBOARD_* variable is a config key to the binary: pass only ours.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .env("SWITCHBOARD_URL", server.http_url(""))
        .env("SWITCHBOARD_API_KEY", key);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run switchboard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_publishes_and_reads_info_and_presence() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("chat:1").await;

    let (ok, out, err) = cli(
        &server,
        API_KEY,
        &["publish", "chat:1", r#"{"from":"cli"}"#],
    )
    .await;
    assert!(ok, "{err}");
    let result: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["offset"], json!(1));
    assert_eq!(ann.next_pub("chat:1").await["data"], json!({"from": "cli"}));

    let url = server.http_url("");
    let (ok, out, err) = cli(&server, API_KEY, &["info", "--url", &url]).await;
    assert!(ok, "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["nodes"][0]["num_users"], json!(1));

    let (ok, out, err) = cli(&server, API_KEY, &["presence", "chat:1"]).await;
    assert!(ok, "{err}");
    let presence: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(presence["presence"].as_object().unwrap().len(), 1);

    let (ok, _, err) = cli(&server, API_KEY, &["presence", "nope:1"]).await;
    assert!(!ok && err.contains("API error 102"), "{err}");
    let (ok, _, err) = cli(&server, "wrong", &["info"]).await;
    assert!(!ok && err.contains("HTTP 401"), "{err}");
    let (ok, _, err) = cli(&server, API_KEY, &["publish", "chat:1", "{not json"]).await;
    assert!(!ok && err.contains("DATA must be JSON"), "{err}");
}
