//! The Pusher protocol 7 and HTTP API with a real WebSocket client and real HTTP calls:
//! handshake and refusals, public, private and presence channels, client events,
//! sign-in, signatures, and channels shared with Centrifugo clients.

mod common;

use std::time::Duration;

use common::pusher::{
    api, api_signed, channel_auth, config, data, signin_auth, App, PusherClient, APP_ID, FIRST, KEY,
};
use common::{api_call, start, Client};
use serde_json::{json, Value};

#[tokio::test]
async fn connection_established_gives_a_socket_id_and_pings_are_answered() {
    let server = start(config()).await;
    let mut c = PusherClient::connect(&server).await;
    let (a, b) = c.socket_id.split_once('.').expect("socket id");
    assert!(
        a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok(),
        "{}",
        c.socket_id
    );
    assert_eq!(c.activity_timeout, 25, "the ping interval");
    c.send("pusher:ping", None, json!({})).await;
    assert_eq!(c.next_event().await["event"], "pusher:pong");
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_key_or_protocol_is_refused_with_pushers_codes() {
    let server = start(config()).await;
    for (key, query, code) in [
        ("other-key", "protocol=7", 4001),
        (KEY, "client=js", 4008),
        (KEY, "protocol=x", 4006),
        (KEY, "protocol=4", 4007),
    ] {
        let mut c = PusherClient::open(&server, key, query).await;
        let error = c.next().await.expect("pusher:error");
        assert_eq!(error["event"], "pusher:error", "{error}");
        assert_eq!(error["data"]["code"], code, "{error}");
        assert_eq!(c.closed().await.code, code);
    }
    server.stop().await;
}

#[tokio::test]
async fn pusher_is_off_without_a_key() {
    let server = start(common::config()).await;
    let resp = reqwest::get(server.http_url(&format!("/app/{KEY}?protocol=7")))
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn public_channels_share_publications_with_centrifugo_clients_both_ways() {
    let server = start(config()).await;
    let mut p = PusherClient::connect(&server).await;
    let ok = p.subscribe("chat:1", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(ok["channel"], "chat:1");

    // A server API publish with an `event` tag is that event; without, "publication".
    let r = api_call(
        &server,
        "publish",
        json!({"channel": "chat:1", "data": {"text": "hi"}, "tags": {"event": "message"}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let m = p.next_event().await;
    assert_eq!(m["event"], "message");
    assert_eq!(m["channel"], "chat:1");
    assert_eq!(m["data"], r#"{"text":"hi"}"#, "data is a JSON string");

    let mut cf = Client::connect_user(&server, "ann").await;
    cf.subscribe("chat:1").await;
    cf.publish("chat:1", json!({"n": 1})).await;
    assert_eq!(
        cf.next_pub("chat:1").await["data"],
        json!({"n": 1}),
        "its own"
    );
    // (The namespace sends joins: Ann's arrived first, as `member_added`.)
    let m = p.next_named("publication").await;
    assert_eq!(m["event"], "publication");
    assert_eq!(data(&m), json!({"n": 1}));

    // The HTTP API's trigger reaches the Centrifugo client as JSON, not a string.
    let (status, body) = api(
        &server,
        "POST",
        "/events",
        &[],
        Some(&json!({"name": "order-shipped", "channels": ["chat:1"], "data": "{\"id\":7}"})),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(cf.next_pub("chat:1").await["data"], json!({"id": 7}));
    let calls = r#"switchboard_api_requests_total{method="pusher_events",status="200"}"#;
    assert_eq!(common::metric(&server, calls).await, 1);
    let m = p.next_named("order-shipped").await;
    assert_eq!(data(&m), json!({"id": 7}));

    // Unsubscribed, nothing more arrives.
    p.send("pusher:unsubscribe", None, json!({"channel": "chat:1"}))
        .await;
    p.send("pusher:ping", None, json!({})).await;
    assert_eq!(p.next_event().await["event"], "pusher:pong");
    api_call(&server, "publish", json!({"channel": "chat:1", "data": {}})).await;
    p.assert_quiet(Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_public_channel_the_rules_refuse_is_a_subscription_error() {
    let server = start(config()).await;
    let mut p = PusherClient::connect(&server).await;
    // `observation` admits nobody by its rules; `nope` is no namespace.
    for (channel, status) in [("observation:1", 403), ("nope:1", 404), ("private:x", 404)] {
        let m = p.subscribe(channel, None, None).await;
        assert_eq!(m["event"], "pusher:subscription_error", "{m}");
        assert_eq!(m["channel"], channel);
        assert_eq!(data(&m)["status"], status, "{m}");
    }
    server.stop().await;
}

#[tokio::test]
async fn private_channels_need_the_apps_signature_for_this_socket() {
    let server = start(config()).await;
    let mut a = PusherClient::connect(&server).await;
    let mut b = PusherClient::connect(&server).await;
    let m = a.subscribe("private-chat.1", None, None).await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(data(&m)["type"], "AuthError");
    // A signature for another socket does not do.
    let stolen = channel_auth(&b.socket_id, "private-chat.1", None);
    let m = a.subscribe("private-chat.1", Some(&stolen), None).await;
    assert_eq!(data(&m)["status"], 403, "{m}");
    a.subscribe_private("private-chat.1").await;
    b.subscribe_private("private-chat.1").await;

    // A client event reaches the others, not its sender.
    a.send("client-typing", Some("private-chat.1"), json!({"who": "a"}))
        .await;
    let m = b.next_event().await;
    assert_eq!(m["event"], "client-typing");
    assert_eq!(m["channel"], "private-chat.1");
    assert_eq!(data(&m), json!({"who": "a"}));
    assert!(
        m.get("user_id").is_none(),
        "only presence channels name the sender"
    );
    a.assert_quiet(Duration::from_millis(200)).await;

    // The HTTP API's socket_id skips that socket.
    let (status, _) = api(
        &server,
        "POST",
        "/events",
        &[],
        Some(&json!({"name": "note", "channel": "private-chat.1", "data": "x", "socket_id": b.socket_id})),
    )
    .await;
    assert_eq!(status, 200);
    let m = a.next_event().await;
    assert_eq!(
        (m["event"].as_str(), m["data"].as_str()),
        (Some("note"), Some("x"))
    );
    b.assert_quiet(Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn client_events_need_a_private_channel_whose_namespace_allows_publishing() {
    let mut c = config();
    c.namespaces.get_mut("private").unwrap().publish = false;
    let server = start(c).await;
    let mut a = PusherClient::connect(&server).await;
    a.subscribe("chat:1", None, None).await;
    a.send("client-x", Some("chat:1"), json!({})).await;
    let m = a.next_event().await;
    assert_eq!(m["event"], "pusher:error", "public channel: {m}");
    assert_eq!(m["data"]["code"], 103);
    a.subscribe_private("private-quiet").await;
    a.send("client-x", Some("private-quiet"), json!({})).await;
    let m = a.next_event().await;
    assert_eq!(
        (m["event"].as_str(), m["data"]["code"].as_u64()),
        (Some("pusher:error"), Some(103)),
        "{m}"
    );
    // Not subscribed at all.
    a.send("client-x", Some("private-other"), json!({})).await;
    assert_eq!(a.next_event().await["data"]["code"], 103);
    server.stop().await;
}

#[tokio::test]
async fn presence_lists_members_once_per_user_and_announces_others() {
    let server = start(config()).await;
    let mut a = PusherClient::connect(&server).await;
    let me = a.join("presence-room.1", "1", "Ann").await;
    assert_eq!(
        me,
        json!({"count": 1, "ids": ["1"], "hash": {"1": {"name": "Ann"}}})
    );
    let mut b = PusherClient::connect(&server).await;
    let both = b.join("presence-room.1", "2", "Bob").await;
    assert_eq!(both["count"], 2);
    assert_eq!(both["ids"], json!(["1", "2"]));
    assert_eq!(both["hash"]["2"], json!({"name": "Bob"}));
    let added = a.next_event().await;
    assert_eq!(added["event"], "pusher_internal:member_added", "{added}");
    assert_eq!(
        data(&added),
        json!({"user_id": "2", "user_info": {"name": "Bob"}})
    );
    // Bob is not told of his own arrival.
    b.assert_quiet(Duration::from_millis(200)).await;

    // A second connection of Bob's is no new member; the members are listed by user.
    let mut b2 = PusherClient::connect(&server).await;
    assert_eq!(b2.join("presence-room.1", "2", "Bob").await["count"], 2);
    let (status, users) = api(&server, "GET", "/channels/presence-room.1/users", &[], None).await;
    assert_eq!(status, 200);
    let users: Value = serde_json::from_str(&users).unwrap();
    assert_eq!(users, json!({"users": [{"id": "1"}, {"id": "2"}]}));

    // Client events in a presence channel name their sender.
    b.send("client-wave", Some("presence-room.1"), json!(1))
        .await;
    let m = a.next_named("client-wave").await;
    assert_eq!(m["user_id"], "2");

    // Bob leaves when his last connection does.
    b.send(
        "pusher:unsubscribe",
        None,
        json!({"channel": "presence-room.1"}),
    )
    .await;
    a.assert_quiet(Duration::from_millis(200)).await;
    drop(b2);
    let removed = a.next_named("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "2"}));
    server.stop().await;
}

#[tokio::test]
async fn presence_channel_data_must_be_the_signed_one() {
    let server = start(config()).await;
    let mut a = PusherClient::connect(&server).await;
    let signed = json!({"user_id": "1"}).to_string();
    let auth = channel_auth(&a.socket_id, "presence-room.1", Some(&signed));
    let forged = json!({"user_id": "admin"}).to_string();
    let m = a
        .subscribe("presence-room.1", Some(&auth), Some(&forged))
        .await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    // Laravel's numeric user ids are members too.
    let numeric = json!({"user_id": 42, "user_info": {"name": "N"}}).to_string();
    let auth = channel_auth(&a.socket_id, "presence-room.2", Some(&numeric));
    let m = a
        .subscribe("presence-room.2", Some(&auth), Some(&numeric))
        .await;
    assert_eq!(data(&m)["presence"]["ids"], json!(["42"]), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn signin_makes_the_connection_the_users_and_terminate_connections_closes_it() {
    let server = start(config()).await;
    let mut c = PusherClient::connect(&server).await;
    let user_data = json!({"id": "u7", "user_info": {"name": "Uma"}}).to_string();
    // The user's own channel needs the sign-in.
    let m = c.subscribe("#server-to-user-u7", None, None).await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    c.send(
        "pusher:signin",
        None,
        json!({"auth": signin_auth(&c.socket_id, "{}"), "user_data": user_data}),
    )
    .await;
    assert_eq!(c.next_event().await["data"]["code"], 103, "bad signature");
    c.send(
        "pusher:signin",
        None,
        json!({"auth": signin_auth(&c.socket_id, &user_data), "user_data": user_data}),
    )
    .await;
    let ok = c.next_event().await;
    assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
    assert_eq!(data(&ok)["user_data"], user_data);
    let m = c.subscribe("#server-to-user-u7", None, None).await;
    assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
    // The user's channel is `user:<id>` for every protocol.
    api_call(
        &server,
        "publish",
        json!({"channel": "user:u7", "data": "ping", "tags": {"event": "notice"}}),
    )
    .await;
    let m = c.next_event().await;
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("#server-to-user-u7"), Some("ping"))
    );

    // The server API's unsubscribe is a `pusher_internal:` event pusher-js ignores.
    api_call(
        &server,
        "unsubscribe",
        json!({"user": "u7", "channel": "user:u7"}),
    )
    .await;
    let m = c.next_event().await;
    assert_eq!(m["event"], "pusher_internal:unsubscribed", "{m}");
    assert_eq!(m["channel"], "#server-to-user-u7");

    let (status, body) = api(
        &server,
        "POST",
        "/users/u7/terminate_connections",
        &[],
        Some(&json!({})),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    let error = c.next_named("pusher:error").await;
    assert_eq!(error["data"]["code"], 4009);
    assert_eq!(c.closed().await.code, 4009);
    server.stop().await;
}

#[tokio::test]
async fn http_api_refuses_unsigned_stale_and_foreign_requests() {
    let server = start(config()).await;
    let body = json!({"name": "e", "channels": ["chat:1"], "data": "{}"});
    let path = format!("/apps/{APP_ID}/events");
    let now = switchboard::auth::now_secs();
    let wrong = App {
        secret: "wrong",
        ..FIRST
    };
    let (status, text) = api_signed(&server, "POST", &path, &[], Some(&body), now, wrong).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("signature"), "{text}");
    // The allowed skew is 600 s either way.
    for ts in [now - 700, now + 700] {
        let (status, text) = api_signed(&server, "POST", &path, &[], Some(&body), ts, FIRST).await;
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("auth_timestamp"), "{text}");
    }
    let (status, _) = api_signed(&server, "POST", &path, &[], Some(&body), now - 500, FIRST).await;
    assert_eq!(status, 200);
    let (status, _) = api_signed(
        &server,
        "POST",
        "/apps/999/events",
        &[],
        Some(&body),
        now,
        FIRST,
    )
    .await;
    assert_eq!(status, 404);
    // Unsigned.
    let resp = reqwest::Client::new()
        .post(server.http_url(&path))
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401);
    // A body that is not the signed one.
    let url = server.http_url(&format!(
        "{path}?auth_key={KEY}&auth_timestamp={now}&auth_version=1.0&body_md5=00&auth_signature=00"
    ));
    let resp = reqwest::Client::new()
        .post(url)
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn http_api_checks_events_and_their_limits() {
    let mut c = config();
    c.pusher.max_event_channels = 2;
    c.pusher.max_batch_events = 2;
    let server = start(c).await;
    let ev =
        |name: &str, channels: Value| json!({"name": name, "channels": channels, "data": "{}"});
    for (body, why) in [
        (ev("e", json!(["a", "b", "c"])), "channels"),
        (ev("pusher:error", json!(["a"])), "event name"),
        (ev("e", json!(["nope:1"])), "nope:1"),
        (ev("e", json!(["private:x"])), "invalid channel"),
        (
            json!({"name": "e", "channel": "a", "data": "{}", "socket_id": "abc"}),
            "socket_id",
        ),
    ] {
        let (status, text) = api(&server, "POST", "/events", &[], Some(&body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }
    let mut p = PusherClient::connect(&server).await;
    p.subscribe("news:1", None, None).await;
    let item = |n: u32| json!({"channel": "news:1", "name": "n", "data": n.to_string()});
    let (status, _) = api(
        &server,
        "POST",
        "/batch_events",
        &[],
        Some(&json!({"batch": [item(1), item(2), item(3)]})),
    )
    .await;
    assert_eq!(status, 400, "over max_batch_events");
    let (status, _) = api(
        &server,
        "POST",
        "/batch_events",
        &[],
        Some(&json!({"batch": [item(1), item(2)]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(p.next_event().await["data"], "1");
    assert_eq!(p.next_event().await["data"], "2");
    server.stop().await;
}

#[tokio::test]
async fn http_api_lists_channels_with_their_counts() {
    let server = start(config()).await;
    let mut a = PusherClient::connect(&server).await;
    let mut b = PusherClient::connect(&server).await;
    a.join("presence-room.1", "1", "Ann").await;
    b.join("presence-room.1", "1", "Ann").await;
    b.subscribe("chat:1", None, None).await;
    let get = |path: &'static str, params: &'static [(&'static str, &'static str)]| {
        let server = &server;
        async move {
            let (status, body) = api(server, "GET", path, params, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            serde_json::from_str::<Value>(&body).expect("json")
        }
    };
    let all = get("/channels", &[("info", "subscription_count")]).await;
    assert_eq!(all["channels"]["chat:1"], json!({"subscription_count": 1}));
    assert_eq!(
        all["channels"]["presence-room.1"],
        json!({"subscription_count": 2})
    );
    let presence = get(
        "/channels",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
    )
    .await;
    assert_eq!(
        presence,
        json!({"channels": {"presence-room.1": {"user_count": 1}}})
    );
    let (status, _) = api(&server, "GET", "/channels", &[("info", "user_count")], None).await;
    assert_eq!(status, 400, "user_count needs the presence- prefix");
    let one = get(
        "/channels/presence-room.1",
        &[("info", "user_count,subscription_count")],
    )
    .await;
    assert_eq!(
        one,
        json!({"occupied": true, "user_count": 1, "subscription_count": 2})
    );
    let empty = get("/channels/chat:2", &[]).await;
    assert_eq!(empty, json!({"occupied": false}));
    let (status, _) = api(&server, "GET", "/channels/chat:1/users", &[], None).await;
    assert_eq!(status, 400, "users of a presence channel only");
    server.stop().await;
}

#[tokio::test]
async fn a_public_channel_goes_through_the_subscribe_proxy_when_the_rules_refuse() {
    use axum::routing::post;
    use axum::Json;
    async fn decide(Json(b): Json<Value>) -> Json<Value> {
        Json(if b["channel"] == "lobby:open" {
            json!({"result": {}})
        } else {
            json!({"error": {"code": 103, "message": "members only"}})
        })
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/subscribe", post(decide));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut c = config();
    c.proxies.insert(
        "subscribe".into(),
        switchboard::config::ProxyConfig {
            url: format!("http://{backend}/subscribe"),
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "lobby".into(),
        switchboard::config::NamespaceConfig {
            subscribe_proxy: "subscribe".into(),
            ..Default::default()
        },
    );
    let server = start(c).await;
    let mut p = PusherClient::connect(&server).await;
    let ok = p.subscribe("lobby:open", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let no = p.subscribe("lobby:closed", None, None).await;
    assert_eq!(no["event"], "pusher:subscription_error", "{no}");
    assert_eq!(data(&no)["error"], "members only");
    server.stop().await;
}

#[tokio::test]
async fn a_server_disconnect_and_shutdown_close_with_pushers_codes() {
    let server = start(config()).await;
    let mut c = PusherClient::connect(&server).await;
    let user_data = json!({"id": "u1"}).to_string();
    c.send(
        "pusher:signin",
        None,
        json!({"auth": signin_auth(&c.socket_id, &user_data), "user_data": user_data}),
    )
    .await;
    c.next_named("pusher:signin_success").await;
    let mut other = PusherClient::connect(&server).await;
    // The server API's disconnect with its default code: closed for good.
    api_call(&server, "disconnect", json!({"user": "u1"})).await;
    assert_eq!(c.closed().await.code, 4009);
    // Shutdown: reconnect at once.
    let stop = tokio::spawn(server.stop());
    let error = other.next_named("pusher:error").await;
    assert_eq!(error["data"]["code"], 4200);
    assert_eq!(other.closed().await.code, 4200);
    stop.await.unwrap();
}

#[tokio::test]
async fn binary_and_malformed_messages_count_as_protocol_errors() {
    let mut c = config();
    c.limits.max_protocol_errors = 2;
    let server = start(c).await;
    let mut p = PusherClient::connect(&server).await;
    p.send_text("not json").await;
    assert_eq!(p.next_event().await["data"]["code"], 107);
    p.send("pusher:unknown", None, json!({})).await;
    assert_eq!(p.next_event().await["data"]["code"], 107);
    p.send_text("{").await;
    let closed = p.closed().await;
    assert_eq!(closed.code, 4009, "bad request, for good");
    server.stop().await;
}

#[tokio::test]
async fn cache_channels_send_the_last_event_on_subscribe_or_a_cache_miss() {
    let mut cfg = config();
    for ns in ["default", "private"] {
        let ns = cfg.namespaces.get_mut(ns).expect("namespace");
        ns.history_size = 1;
        ns.history_ttl = Duration::from_secs(60);
    }
    let server = start(cfg).await;
    let mut a = PusherClient::connect(&server).await;
    let ok = a.subscribe("cache-prices", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let miss = a.next_event().await;
    assert_eq!(miss["event"], "pusher:cache_miss", "{miss}");
    assert_eq!(miss["channel"], "cache-prices", "{miss}");

    // Two events: the subscriber gets both, a later subscriber the last one only.
    for price in ["1", "2"] {
        let event = json!({"name": "price", "channel": "cache-prices", "data": price});
        let (status, _) = api(&server, "POST", "/events", &[], Some(&event)).await;
        assert_eq!(status, 200);
        assert_eq!(a.next_event().await["data"], price);
    }
    let mut b = PusherClient::connect(&server).await;
    let ok = b.subscribe("cache-prices", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let last = b.next_event().await;
    assert_eq!(last["event"], "price", "{last}");
    assert_eq!(last["channel"], "cache-prices", "{last}");
    assert_eq!(last["data"], "2", "{last}");
    b.assert_quiet(Duration::from_millis(100)).await;

    // A private cache channel: the same, once the signature admits the subscriber.
    let auth = channel_auth(&b.socket_id, "private-cache-x", None);
    let ok = b.subscribe("private-cache-x", Some(&auth), None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(b.next_event().await["event"], "pusher:cache_miss");

    // Without history in its namespace, a cache channel can not keep its last event.
    let cd = json!({"user_id": "ann"}).to_string();
    let auth = channel_auth(&b.socket_id, "presence-cache-room", Some(&cd));
    let m = b
        .subscribe("presence-cache-room", Some(&auth), Some(&cd))
        .await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(data(&m)["status"], 400, "{m}");
    server.stop().await;
}
