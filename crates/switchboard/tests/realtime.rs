//! User status, per-user presence and typing signals over the real WebSocket.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use switchboard::auth::MintClaims;
use switchboard::config::NamespaceConfig;
use tokio_tungstenite::tungstenite::Message;

fn cfg() -> switchboard::Config {
    let mut c = config();
    c.user_status.query = true;
    c.user_status.offline_debounce = Duration::from_millis(300);
    c.namespaces.insert(
        "status".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "room".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            presence: true,
            join_leave: true,
            presence_per_user: true,
            ..NamespaceConfig::default()
        },
    );
    c.namespaces.insert(
        "typing".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            publish: true,
            typing: true,
            typing_interval: Duration::from_millis(300),
            typing_timeout: Duration::from_millis(500),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            ..NamespaceConfig::default()
        },
    );
    c
}

#[tokio::test]
async fn user_status_query_and_watch_with_debounce() {
    let server = start(cfg()).await;
    let mut watcher = Client::connect_user(&server, "w").await;
    watcher.subscribe("status:ann").await;
    let ann1 = Client::connect_user(&server, "ann").await;
    let online = watcher.next_pub("status:ann").await;
    assert_eq!(online["data"]["online"], json!(true), "{online}");
    let ann2 = Client::connect_user(&server, "ann").await;

    let q = watcher
        .request(json!({"rpc": {"method": "user_status", "data": {"users": ["ann", "nobody"]}}}))
        .await;
    let st = &q["rpc"]["data"]["statuses"];
    assert_eq!(st[0]["user"], json!("ann"));
    assert_eq!(st[0]["online"], json!(true));
    assert_eq!(st[0]["connections"], json!(2));
    assert_eq!(st[1]["online"], json!(false));
    assert_eq!(st[1]["last_seen"], json!(0));

    // Devices go offline one by one: still online after the first.
    ann1.close().await;
    eventually("ann's first connection released", || {
        server.node.user_sessions("ann", None).len() == 1
    })
    .await;
    let q = watcher
        .request(json!({"rpc": {"method": "user_status", "data": {"users": ["ann"]}}}))
        .await;
    assert_eq!(q["rpc"]["data"]["statuses"][0]["online"], json!(true));
    assert_eq!(q["rpc"]["data"]["statuses"][0]["connections"], json!(1));

    // A reload (close then reconnect within the debounce) does not flap.
    ann2.close().await;
    let ann3 = Client::connect_user(&server, "ann").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = watcher.take_backlog();
    assert!(
        !seen
            .iter()
            .any(|m| m["push"]["pub"]["data"]["online"] == json!(false)),
        "flapped: {seen:?}"
    );

    ann3.close().await;
    let offline = watcher.next_pub("status:ann").await;
    assert_eq!(offline["data"]["online"], json!(false));
    assert!(offline["data"]["last_seen"].as_u64().unwrap() > 0);

    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let r = watcher
        .request(json!({"rpc": {"method": "user_status", "data": {"users": too_many}}}))
        .await;
    assert_eq!(error_code(&r), Some(106));
    assert_eq!(
        error_code(
            &watcher
                .request(json!({"rpc": {"method": "user_status", "data": 5}}))
                .await
        ),
        Some(107)
    );
    assert_eq!(
        error_code(&watcher.request(json!({"rpc": {"method": "nope"}})).await),
        Some(104)
    );
}

#[tokio::test]
async fn user_status_query_is_off_by_default() {
    let server = start_default().await;
    let mut c = Client::connect_user(&server, "ann").await;
    let r = c
        .request(json!({"rpc": {"method": "user_status", "data": {"users": ["ann"]}}}))
        .await;
    assert_eq!(error_code(&r), Some(103));
}

#[tokio::test]
async fn per_user_presence_joins_on_first_tab_and_leaves_on_last() {
    let server = start(cfg()).await;
    let mut bob = Client::connect_user(&server, "bob").await;
    bob.subscribe("room:1").await;
    let mut tab1 = Client::connect_user(&server, "ann").await;
    tab1.subscribe("room:1").await;
    let mut tab2 = Client::connect_user(&server, "ann").await;
    tab2.subscribe("room:1").await;
    let mut joins = Vec::new();
    while joins.len() < 2 {
        let p = bob.next_push().await;
        if let Some(j) = p.get("join") {
            joins.push(j["info"]["user"].clone());
        }
    }
    assert_eq!(
        joins,
        vec![json!("bob"), json!("ann")],
        "one join for ann's two tabs"
    );
    tab1.close().await;
    // No leave yet: a ping round-trip proves nothing else is queued.
    bob.request(json!({"ping": {}})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    bob.request(json!({"ping": {}})).await;
    let seen = bob.take_backlog();
    assert!(
        !seen
            .iter()
            .any(|m| m["push"].get("join").is_some() || m["push"].get("leave").is_some()),
        "{seen:?}"
    );
    tab2.close().await;
    let l = bob.next_push().await;
    assert_eq!(l["leave"]["info"]["user"], json!("ann"), "{l}");
}

#[tokio::test]
async fn typing_is_throttled_ephemeral_and_stopped_by_the_server() {
    let server = start(cfg()).await;
    let mut bob = Client::connect_user(&server, "bob").await;
    bob.subscribe("typing:42").await;
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("typing:42").await;
    for _ in 0..5 {
        assert_eq!(
            ann.publish("typing:42", json!({"typing": true})).await["publish"],
            json!({})
        );
    }
    let first = bob.next_pub("typing:42").await;
    assert_eq!(first["data"], json!({"typing": true}));
    assert_eq!(first["info"]["user"], json!("ann"));
    // The next thing bob sees is the server's stop, not the four throttled signals.
    let stop = bob.next_pub("typing:42").await;
    assert_eq!(stop["data"], json!({"typing": false}), "{stop}");
    assert_eq!(stop["info"]["user"], json!("ann"));
    // Never stored.
    let h = bob
        .request(json!({"history": {"channel": "typing:42", "limit": -1}}))
        .await;
    assert!(
        h["history"]
            .get("publications")
            .is_none_or(|p| p.as_array().unwrap().is_empty()),
        "{h}"
    );
    // Disconnecting while typing also stops.
    ann.publish("typing:42", json!({"typing": true})).await;
    assert_eq!(
        bob.next_pub("typing:42").await["data"],
        json!({"typing": true})
    );
    ann.close().await;
    let stop = bob.next_pub("typing:42").await;
    assert_eq!(stop["data"], json!({"typing": false}));
}

/// Whoever leaves a presence channel, on whichever WebSocket transport runs its reader
/// and writer in one task, leaves it once: one leave, and nothing of them left in
/// presence or the open connections' gauge.
#[tokio::test]
async fn a_closed_connection_leaves_presence_once_on_every_websocket_transport() {
    const CH: &str = "presence:left";
    let server = start(common::pusher::config()).await;
    // Subscribed at connect: the token's `channels` claim.
    let subscribed = |user: &str| {
        token_with(&MintClaims {
            sub: user.into(),
            channels: vec![CH.into()],
            ..MintClaims::default()
        })
    };
    let mut w = Client::connect(&server, &subscribed("w")).await;
    // The watcher stays open.
    let websocket = (r#"transport="websocket",encoding="json""#, 1);

    let ann = Client::connect(&server, &subscribed("ann")).await;
    joined(&mut w, "ann").await;
    ann.close().await;
    left_once(&mut w, &server, "ann", websocket).await;

    let (bob, _) = common::protobuf::ProtoClient::connect(&server, &subscribed("bob")).await;
    joined(&mut w, "bob").await;
    bob.close().await;
    let protobuf = (r#"transport="websocket",encoding="protobuf""#, 0);
    left_once(&mut w, &server, "bob", protobuf).await;

    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let (mut cat, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("open");
    let connect = json!({"token": subscribed("cat")}).to_string();
    cat.send(Message::text(connect)).await.expect("send");
    joined(&mut w, "cat").await;
    cat.close(None).await.expect("close");
    let uni = (r#"transport="uni_websocket",encoding="json""#, 0);
    left_once(&mut w, &server, "cat", uni).await;

    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut dan, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("open");
    let open = next_text(&mut dan).await.expect("open packet");
    assert!(open.starts_with('0'), "{open}");
    let connect = format!("40{}", json!({"token": subscribed("dan")}));
    dan.send(Message::text(connect)).await.expect("send");
    joined(&mut w, "dan").await;
    dan.close(None).await.expect("close");
    let socketio = (r#"transport="socketio_websocket",encoding="json""#, 0);
    left_once(&mut w, &server, "dan", socketio).await;

    // A Pusher member is the user its signed channel data names.
    let mut eve = common::pusher::PusherClient::connect(&server).await;
    eve.join("presence-left", "eve", "Eve").await;
    joined(&mut w, "eve").await;
    eve.close().await;
    let pusher = (r#"transport="pusher",encoding="json""#, 0);
    left_once(&mut w, &server, "eve", pusher).await;
    server.stop().await;
}

/// Waits for `user`'s join of `presence:left`.
async fn joined(w: &mut Client, user: &str) {
    loop {
        let p = w.next_push().await;
        if p["join"]["info"]["user"] == json!(user) {
            return;
        }
    }
}

/// Waits for `user`'s leave of `presence:left`, then for their connection to end (the
/// open connections' gauge of its transport, `labels`, down to `open`, not below);
/// then a publication is the next push, and presence holds only the watcher: one
/// leave, no ghost.
async fn left_once(w: &mut Client, server: &TestServer, user: &str, (labels, open): (&str, i64)) {
    const CH: &str = "presence:left";
    loop {
        let p = w.next_push().await;
        assert!(p.get("join").is_none(), "{p}");
        if p["leave"]["info"]["user"] == json!(user) {
            break;
        }
    }
    let gauge = format!("switchboard_connections{{{labels}}}");
    let gauge = gauge.as_str();
    eventually_value(|| async move { (signed_metric(server, gauge).await == open).then_some(()) })
        .await;
    let mark = json!({"after": user});
    api_call(server, "publish", json!({"channel": CH, "data": mark})).await;
    let next = w.next_push().await;
    assert_eq!(next["pub"]["data"], mark, "one leave only: {next}");
    let stats = api_call(server, "presence_stats", json!({"channel": CH})).await;
    assert_eq!(
        stats["result"],
        json!({"num_clients": 1, "num_users": 1}),
        "{stats}"
    );
}
