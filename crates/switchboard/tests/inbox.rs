//! The inbox over the real WebSocket: a fresh session (no position) gets what the user
//! missed, once and in order; what is incomplete says so; receipts move read state,
//! which follows the user to their other connections; read receipts in a channel.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use switchboard::config::NamespaceConfig;
use switchboard::node::PublishOptions;

async fn publish(server: &TestServer, channel: &str, data: Value) {
    let raw = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    server
        .node
        .publish(channel, raw.into(), PublishOptions::default())
        .await
        .unwrap();
}

/// Closes `c` and waits until the server has released it: what it received is on
/// record, and nothing more can be handed to it.
async fn close_and_wait(server: &TestServer, c: Client, user: &str) {
    c.close().await;
    eventually("the connection released", || {
        server.node.user_sessions(user, None).is_empty()
    })
    .await;
}

/// The personal channel's entry in a connect reply.
fn personal(c: &Client, user: &str) -> Value {
    c.connect_reply["connect"]["subs"][format!("user:{user}")].clone()
}

fn data_of(publications: &Value) -> Vec<Value> {
    publications
        .as_array()
        .map(|a| a.iter().map(|p| p["data"].clone()).collect())
        .unwrap_or_default()
}

/// Config with an opt-in `conversation` namespace keeping read receipts.
fn receipts_config() -> switchboard::Config {
    let mut c = config();
    c.namespaces.insert(
        "conversation".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            history_size: 100,
            history_ttl: Duration::from_secs(3600),
            inbox: true,
            read_receipts: true,
            ..NamespaceConfig::default()
        },
    );
    c
}

#[tokio::test]
async fn a_fresh_session_gets_exactly_what_the_user_missed_once_in_order() {
    let server = start_default().await;
    let mut a = Client::connect_user(&server, "ann").await;
    let first = personal(&a, "ann");
    assert_eq!(first["recovered"], json!(true), "{first}");
    publish(&server, "user:ann", json!("seen live")).await;
    assert_eq!(a.next_pub("user:ann").await["data"], json!("seen live"));
    close_and_wait(&server, a, "ann").await;

    for i in 0..50 {
        publish(&server, "user:ann", json!(i)).await;
    }
    // A fresh client: no position of its own.
    let mut b = Client::connect_user(&server, "ann").await;
    let s = personal(&b, "ann");
    assert_eq!(s["was_recovering"], json!(true), "{s}");
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert_eq!(
        data_of(&s["publications"]),
        (0..50).map(|i| json!(i)).collect::<Vec<_>>()
    );
    let offsets: Vec<u64> = s["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (2..=51).collect::<Vec<_>>());
    // Live publications follow with no duplicate.
    publish(&server, "user:ann", json!("live")).await;
    let live = b.next_pub("user:ann").await;
    assert_eq!(
        (live["data"].clone(), live["offset"].clone()),
        (json!("live"), json!(52))
    );
    close_and_wait(&server, b, "ann").await;

    // Handed out once: the next fresh session starts after it all.
    let c = Client::connect_user(&server, "ann").await;
    let s = personal(&c, "ann");
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert!(data_of(&s["publications"]).is_empty(), "{s}");
}

#[tokio::test]
async fn a_user_never_seen_gets_what_was_published_before_the_first_connect() {
    let server = start_default().await;
    publish(&server, "user:newbie", json!("welcome")).await;
    let c = Client::connect_user(&server, "newbie").await;
    let s = personal(&c, "newbie");
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert_eq!(data_of(&s["publications"]), vec![json!("welcome")]);
}

#[tokio::test]
async fn more_missed_than_history_size_is_flagged_not_silently_cut() {
    let mut cfg = config();
    cfg.namespaces.get_mut("user").unwrap().history_size = 10;
    let server = start(cfg).await;
    let a = Client::connect_user(&server, "ann").await;
    close_and_wait(&server, a, "ann").await;
    for i in 0..15 {
        publish(&server, "user:ann", json!(i)).await;
    }
    let b = Client::connect_user(&server, "ann").await;
    let s = personal(&b, "ann");
    assert_eq!(s["was_recovering"], json!(true), "{s}");
    assert_eq!(s.get("recovered"), None, "incomplete: {s}");
    // What history still holds comes along; the first 5 are gone.
    assert_eq!(
        data_of(&s["publications"]),
        (5..15).map(|i| json!(i)).collect::<Vec<_>>()
    );
    close_and_wait(&server, b, "ann").await;
    // The client was told: the next session does not report the same gap again.
    let c = Client::connect_user(&server, "ann").await;
    let s = personal(&c, "ann");
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert!(data_of(&s["publications"]).is_empty(), "{s}");
}

#[tokio::test]
async fn publications_past_history_ttl_are_gone_and_flagged() {
    let mut cfg = config();
    cfg.namespaces.get_mut("user").unwrap().history_ttl = Duration::from_millis(300);
    let server = start(cfg).await;
    let a = Client::connect_user(&server, "ann").await;
    close_and_wait(&server, a, "ann").await;
    for i in 0..3 {
        publish(&server, "user:ann", json!(i)).await;
    }
    // Wait out the TTL (on the server's clock, which this test shares).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = Client::connect_user(&server, "ann").await;
    let s = personal(&b, "ann");
    assert_eq!(s["was_recovering"], json!(true), "{s}");
    assert_eq!(s.get("recovered"), None, "expired ones were missed: {s}");
    assert!(data_of(&s["publications"]).is_empty(), "{s}");
}

/// The next `message` push's data.
async fn next_message_push(c: &mut Client) -> Value {
    loop {
        let p = c.next_push().await;
        if let Some(m) = p.get("message") {
            return m["data"].clone();
        }
    }
}

#[tokio::test]
async fn a_read_on_one_device_reaches_the_users_other_devices() {
    let server = start_default().await;
    let mut phone = Client::connect_user(&server, "ann").await;
    let mut laptop = Client::connect_user(&server, "ann").await;
    for i in 1..=3 {
        publish(&server, "user:ann", json!(i)).await;
    }
    assert_eq!(laptop.next_pub("user:ann").await["offset"], json!(1));
    let r = phone
        .request(
            json!({"rpc": {"method": "inbox.read", "data": {"channel": "user:ann", "offset": 2}}}),
        )
        .await;
    let marks = &r["rpc"]["data"];
    assert_eq!(
        (marks["read"].clone(), marks["delivered"].clone()),
        (json!(2), json!(3)),
        "{r}"
    );
    let push = next_message_push(&mut laptop).await;
    assert_eq!(push["type"], json!("inbox.read"), "{push}");
    assert_eq!(push["channel"], json!("user:ann"));
    assert_eq!(push["read"], json!(2));
    assert_eq!(push["epoch"], marks["epoch"]);

    // The server API sees it, and marks read too (every device is told).
    let status = api_call(&server, "inbox_status", json!({"user": "ann"})).await;
    let ch = &status["result"]["channels"][0];
    assert_eq!(ch["channel"], json!("user:ann"), "{status}");
    assert_eq!(
        (
            ch["read"].clone(),
            ch["offset"].clone(),
            ch["unread"].clone()
        ),
        (json!(2), json!(3), json!(1))
    );
    let r = api_call(
        &server,
        "inbox_read",
        json!({"user": "ann", "channel": "user:ann", "offset": 3}),
    )
    .await;
    assert_eq!(r["result"]["read"], json!(3), "{r}");
    assert_eq!(next_message_push(&mut laptop).await["read"], json!(3));
    assert_eq!(next_message_push(&mut phone).await["read"], json!(3));
    let status = api_call(
        &server,
        "inbox_status",
        json!({"user": "ann", "channels": ["user:ann"]}),
    )
    .await;
    assert_eq!(
        status["result"]["channels"][0]["unread"],
        json!(0),
        "{status}"
    );

    // A read that moves nothing is not pushed again.
    let r = phone
        .request(
            json!({"rpc": {"method": "inbox.read", "data": {"channel": "user:ann", "offset": 1}}}),
        )
        .await;
    assert_eq!(r["rpc"]["data"]["read"], json!(3), "never back: {r}");
    laptop.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn receipts_are_checked() {
    let server = start_default().await;
    let mut c = Client::connect_user(&server, "ann").await;
    c.subscribe("chat:1").await;
    let rpc = |data: Value| json!({"rpc": {"method": "inbox.read", "data": data}});
    // History but no inbox.
    let r = c
        .request(rpc(json!({"channel": "chat:1", "offset": 1})))
        .await;
    assert_eq!(error_code(&r), Some(108), "{r}");
    // Not subscribed.
    let r = c
        .request(rpc(json!({"channel": "user:bob", "offset": 1})))
        .await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    // Malformed.
    let r = c.request(rpc(json!({"channel": "user:ann"}))).await;
    assert_eq!(error_code(&r), Some(107), "{r}");
    // An offset of another epoch.
    let r = c
        .request(rpc(
            json!({"channel": "user:ann", "offset": 1, "epoch": "gone"}),
        ))
        .await;
    assert_eq!(error_code(&r), Some(112), "{r}");
    let r = api_call(
        &server,
        "inbox_read",
        json!({"user": "ann", "channel": "chat:1", "offset": 1}),
    )
    .await;
    assert_eq!(error_code(&r), Some(108), "{r}");
    let r = api_call(&server, "inbox_readers", json!({"channel": "user:ann"})).await;
    assert_eq!(error_code(&r), Some(108), "no read_receipts: {r}");
}

#[tokio::test]
async fn read_receipts_tell_a_conversation_who_read_how_far() {
    let server = start(receipts_config()).await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    ann.subscribe("conversation:42").await;
    bob.subscribe("conversation:42").await;
    for i in 1..=2 {
        publish(&server, "conversation:42", json!(i)).await;
    }
    assert_eq!(bob.next_pub("conversation:42").await["offset"], json!(1));
    let r = bob
        .request(json!({"rpc": {"method": "inbox.read", "data": {"channel": "conversation:42", "offset": 2}}}))
        .await;
    assert_eq!(r["rpc"]["data"]["read"], json!(2), "{r}");
    // Ann sees bob's receipt: a publication (not kept in history) tagged with its event.
    let receipt = loop {
        let p = ann.next_pub("conversation:42").await;
        if p["tags"]["event"] == json!("inbox:receipt") {
            break p;
        }
    };
    assert_eq!(
        (
            receipt["data"]["user"].clone(),
            receipt["data"]["read"].clone()
        ),
        (json!("bob"), json!(2)),
        "{receipt}"
    );
    let readers = api_call(
        &server,
        "inbox_readers",
        json!({"channel": "conversation:42"}),
    )
    .await;
    assert_eq!(
        readers["result"]["readers"],
        json!([{"user": "bob", "read": 2}]),
        "{readers}"
    );
    let h = api_call(
        &server,
        "history",
        json!({"channel": "conversation:42", "limit": -1}),
    )
    .await;
    assert_eq!(
        h["result"]["publications"].as_array().unwrap().len(),
        2,
        "receipts are not history: {h}"
    );
}

#[tokio::test]
async fn a_client_side_subscription_without_position_gets_the_missed_ones_in_an_inbox_namespace() {
    let server = start(receipts_config()).await;
    let mut a = Client::connect_user(&server, "ann").await;
    a.subscribe("conversation:7").await;
    close_and_wait(&server, a, "ann").await;
    for i in 0..3 {
        publish(&server, "conversation:7", json!(i)).await;
    }
    let mut b = Client::connect_user(&server, "ann").await;
    let r = b.subscribe("conversation:7").await;
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], json!(true), "{r}");
    assert_eq!(
        data_of(&s["publications"]),
        vec![json!(0), json!(1), json!(2)]
    );
}

#[tokio::test]
async fn what_a_tags_filter_keeps_from_the_user_is_not_owed_to_them_later() {
    let mut config = config();
    config.namespaces.insert(
        "feed".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            history_size: 100,
            history_ttl: Duration::from_secs(3600),
            inbox: true,
            allow_tags_filter: true,
            ..NamespaceConfig::default()
        },
    );
    let server = start(config).await;
    let mut a = Client::connect_user(&server, "ann").await;
    let r = a
        .request(json!({"subscribe": {
            "channel": "feed:1", "tf": {"key": "kind", "cmp": "eq", "val": "alert"},
        }}))
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    for kind in ["alert", "chatter"] {
        let tags = BTreeMap::from([("kind".to_owned(), kind.to_owned())]);
        let raw = serde_json::value::RawValue::from_string(json!(kind).to_string()).unwrap();
        let options = PublishOptions {
            tags: Some(Arc::new(tags)),
            ..PublishOptions::default()
        };
        server
            .node
            .publish("feed:1", raw.into(), options)
            .await
            .unwrap();
    }
    assert_eq!(a.next_pub("feed:1").await["data"], json!("alert"));
    close_and_wait(&server, a, "ann").await;

    // The chatter (offset 2) was never meant for the session: it counts as delivered,
    // and a fresh session, which filters nothing, is not handed it.
    let status = api_call(
        &server,
        "inbox_status",
        json!({"user": "ann", "channels": ["feed:1"]}),
    )
    .await;
    let ch = &status["result"]["channels"][0];
    assert_eq!(
        (ch["offset"].clone(), ch["delivered"].clone()),
        (json!(2), json!(2)),
        "{status}"
    );
    let mut b = Client::connect_user(&server, "ann").await;
    let r = b.subscribe("feed:1").await;
    assert_eq!(r["subscribe"]["recovered"], json!(true), "{r}");
    assert!(data_of(&r["subscribe"]["publications"]).is_empty(), "{r}");
}

// ---------------------------------------------------------------------------------------
// Across nodes (Redis engine: one redis-server and a 3-master Redis Cluster)

mod standalone {
    #[tokio::test]
    async fn the_inbox_and_read_state_span_nodes() {
        super::the_inbox_and_read_state_span_nodes(super::Topology::Standalone).await;
    }
}

mod cluster {
    #[tokio::test]
    async fn the_inbox_and_read_state_span_nodes() {
        super::the_inbox_and_read_state_span_nodes(super::Topology::Cluster).await;
    }
}

use common::redis::{nodes, Redis, Topology};

async fn the_inbox_and_read_state_span_nodes(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let first = Client::connect_user(a, "ann").await;
    close_and_wait(a, first, "ann").await;
    // Missed while away, published through node A.
    for i in 0..5 {
        let r = api_call(a, "publish", json!({"channel": "user:ann", "data": i})).await;
        assert!(r.get("error").is_none(), "{r}");
    }
    // A fresh client on node B gets them, once, in order.
    let mut laptop = Client::connect_user(b, "ann").await;
    let s = personal(&laptop, "ann");
    assert_eq!(s["recovered"], json!(true), "{s}");
    assert_eq!(
        data_of(&s["publications"]),
        (0..5).map(|i| json!(i)).collect::<Vec<_>>()
    );

    // Read on a device on node A: the device on node B is told.
    let mut phone = Client::connect_user(a, "ann").await;
    assert!(
        data_of(&personal(&phone, "ann")["publications"]).is_empty(),
        "delivered already"
    );
    let r = phone
        .request(
            json!({"rpc": {"method": "inbox.read", "data": {"channel": "user:ann", "offset": 4}}}),
        )
        .await;
    assert_eq!(r["rpc"]["data"]["read"], json!(4), "{r}");
    let push = next_message_push(&mut laptop).await;
    assert_eq!(
        (push["channel"].clone(), push["read"].clone()),
        (json!("user:ann"), json!(4)),
        "{push}"
    );
    // Every node's API reads the same state.
    for node in &nodes {
        let status = api_call(node, "inbox_status", json!({"user": "ann"})).await;
        let ch = &status["result"]["channels"][0];
        assert_eq!(
            (ch["read"].clone(), ch["unread"].clone()),
            (json!(4), json!(1)),
            "{status}"
        );
    }
}
