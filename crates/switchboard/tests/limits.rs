//! Every limit has a default, a config key and a test; bad input never takes the server down.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn oversized_frame_closes_with_3506_and_others_are_unaffected() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let server = start(cfg).await;
    let mut bystander = Client::connect_user(&server, "bob").await;
    bystander.subscribe("chat:x").await;
    let mut c = Client::connect_user(&server, "ann").await;
    let big = json!({"id": 5, "publish": {"channel": "chat:x", "data": "x".repeat(2000)}});
    c.send_text(&big.to_string()).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, 3506, "{closed:?}");
    let mut other = Client::connect_user(&server, "cid").await;
    other.subscribe("chat:x").await;
    other.publish("chat:x", json!("still fine")).await;
    assert_eq!(
        bystander.next_pub("chat:x").await["data"],
        json!("still fine")
    );
}

#[tokio::test]
async fn channels_per_connection_limit_gives_106() {
    let mut cfg = config();
    cfg.limits.max_channels_per_connection = 3;
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "ann").await; // user:ann is one
    assert!(c.subscribe("chat:1").await.get("subscribe").is_some());
    assert!(c.subscribe("chat:2").await.get("subscribe").is_some());
    assert_eq!(error_code(&c.subscribe("chat:3").await), Some(106));
    c.request(json!({"unsubscribe": {"channel": "chat:1"}}))
        .await;
    assert!(c.subscribe("chat:3").await.get("subscribe").is_some());

    // 0 disables the limit, as for every count limit.
    let mut cfg = config();
    cfg.limits.max_channels_per_connection = 0;
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "ann").await;
    for i in 0..150 {
        assert!(c
            .subscribe(&format!("chat:{i}"))
            .await
            .get("subscribe")
            .is_some());
    }
}

#[tokio::test]
async fn command_rate_limit_then_disconnect_for_persistent_abuse() {
    let mut cfg = config();
    cfg.limits.command_rate = 5;
    cfg.limits.command_burst = 5;
    cfg.limits.max_protocol_errors = 3;
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "ann").await; // connect took one token
    let mut codes = Vec::new();
    for _ in 0..7 {
        let r = c.request(json!({"ping": {}})).await;
        codes.push(error_code(&r));
    }
    assert_eq!(&codes[..4], &[None, None, None, None], "{codes:?}");
    assert_eq!(&codes[4..], &[Some(111), Some(111), Some(111)], "{codes:?}");
    c.send_text(&json!({"id": 100, "ping": {}}).to_string())
        .await;
    assert_eq!(c.closed().await.code, 3013);
}

#[tokio::test]
async fn connections_per_user_limit_closes_with_3504() {
    let mut cfg = config();
    cfg.limits.max_connections_per_user = 2;
    let server = start(cfg).await;
    let _a = Client::connect_user(&server, "ann").await;
    let b = Client::connect_user(&server, "ann").await;
    let mut c = Client::open(&server).await;
    c.send_text(&json!({"id": 1, "connect": {"token": token("ann")}}).to_string())
        .await;
    assert_eq!(c.closed().await.code, 3504);
    // Another user is not affected, and a slot frees when a connection closes.
    let _bob = Client::connect_user(&server, "bob").await;
    b.close().await;
    eventually("ann's closed connection released", || {
        server.node.user_sessions("ann", None).len() == 1
    })
    .await;
    let _again = Client::connect_user(&server, "ann").await;
}

#[tokio::test]
async fn no_connect_in_time_closes_with_3502() {
    let mut cfg = config();
    cfg.client.connect_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut c = Client::open(&server).await;
    assert_eq!(c.closed().await.code, 3502);
}

#[tokio::test]
async fn malformed_and_unknown_commands_get_errors_then_disconnect() {
    let mut cfg = config();
    cfg.limits.max_protocol_errors = 3;
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "ann").await;
    c.send_text("{\"id\":7,\"subscribe\":{\"channel\":5}}")
        .await;
    let r = c.reply_to(7).await;
    assert_eq!(error_code(&r), Some(107), "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("bad request"));
    c.send_text("{\"id\":8,\"frobnicate\":{}}").await;
    assert_eq!(error_code(&c.reply_to(8).await), Some(104));
    c.send_text("not json at all").await;
    // Still connected after three errors.
    assert!(c.request(json!({"ping": {}})).await.get("ping").is_some());
    c.send_text("{{{").await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn commands_before_connect_and_binary_frames_close_with_3501() {
    let server = start_default().await;
    let mut c = Client::open(&server).await;
    c.send_text(&json!({"id": 1, "subscribe": {"channel": "chat:1"}}).to_string())
        .await;
    assert_eq!(c.closed().await.code, 3501);
    let mut c = Client::open(&server).await;
    c.send_text("garbage").await;
    assert_eq!(c.closed().await.code, 3501);
}

#[tokio::test]
async fn slow_consumer_is_disconnected_without_blocking_others() {
    let mut cfg = config();
    cfg.limits.outbox_size = 16;
    let server = start(cfg).await;
    // The slow client subscribes and then never reads again.
    let mut slow = Client::connect_user(&server, "slow").await;
    slow.subscribe("chat:firehose").await;
    let mut fast = Client::connect_user(&server, "fast").await;
    fast.subscribe("chat:firehose").await;
    let payload =
        serde_json::value::RawValue::from_string(format!("\"{}\"", "y".repeat(64 * 1024))).unwrap();
    let payload: std::sync::Arc<serde_json::value::RawValue> = payload.into();
    let reader = tokio::spawn(async move {
        for _ in 0..1500 {
            fast.next_pub("chat:firehose").await;
        }
    });
    for _ in 0..1500 {
        server
            .node
            .publish(
                "chat:firehose",
                payload.clone(),
                switchboard::node::PublishOptions {
                    skip_history: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("fast reader got everything")
        .unwrap();
    assert!(
        server.node.metrics.slow_disconnects.get() >= 1,
        "slow client not disconnected"
    );
    eventually("slow session released", || {
        server.node.user_sessions("slow", None).is_empty()
    })
    .await;
    drop(slow);
}

#[tokio::test]
async fn missing_pong_disconnects_with_3012_and_cleans_presence() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_millis(400);
    cfg.client.pong_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut alive = Client::connect_user(&server, "alive").await;
    alive.subscribe("chat:hb").await;
    let mut dead = Client::connect_user(&server, "dead").await;
    dead.subscribe("chat:hb").await;
    // `dead` stops reading and answering; `alive` answers each ping.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    let mut pings = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(100), alive.read()).await {
            if m.as_object().is_some_and(|o| o.is_empty()) {
                pings += 1;
                alive.send_text("{}").await;
            }
        }
    }
    assert!(pings >= 3, "pings {pings}");
    let stats = alive
        .request(json!({"presence_stats": {"channel": "chat:hb"}}))
        .await;
    assert_eq!(stats["presence_stats"]["num_clients"], json!(1), "{stats}");
    let closed = dead.closed().await;
    assert_eq!(closed.code, 3012, "{closed:?}");
}

#[tokio::test]
async fn a_silent_client_is_closed_with_3012_when_pong_timeout_exceeds_ping_interval() {
    // The pong deadline runs from the first unanswered ping: later pings, due before
    // it, must not push it back.
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_millis(200);
    cfg.client.pong_timeout = Duration::from_millis(700);
    let server = start(cfg).await;
    let mut silent = Client::connect_user(&server, "silent").await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read().await {
                Ok(_) => {}
                Err(closed) => return closed,
            }
        }
    })
    .await
    .expect("a client that never answers pings is closed");
    assert_eq!(closed.code, 3012, "{closed:?}");
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_with_3001() {
    let server = start_default().await;
    let mut a = Client::connect_user(&server, "ann").await;
    let mut b = Client::connect_user(&server, "bob").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(a.closed().await.code, 3001);
    assert_eq!(b.closed().await.code, 3001);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("drained")
        .unwrap();
}

#[tokio::test]
async fn long_channel_names_are_refused() {
    let mut cfg = config();
    cfg.limits.max_channel_length = 16;
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "ann").await;
    assert!(c
        .subscribe("chat:0123456789")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(
        error_code(&c.subscribe("chat:01234567890123").await),
        Some(102)
    );
}
