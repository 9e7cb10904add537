//! History and recovery over the real WebSocket.

mod common;

use common::*;
use serde_json::{json, Value};
use switchboard::node::PublishOptions;

async fn publish(server: &TestServer, channel: &str, data: Value) {
    let raw = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    server
        .node
        .publish(channel, raw.into(), PublishOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn history_pages_with_limit_since_and_reverse() {
    let server = start_default().await;
    let mut c = Client::connect_user(&server, "ann").await;
    c.subscribe("chat:h").await;
    for i in 1..=10 {
        publish(&server, "chat:h", json!(i)).await;
    }
    let all = c
        .request(json!({"history": {"channel": "chat:h", "limit": -1}}))
        .await;
    let pubs = all["history"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 10);
    assert_eq!(all["history"]["offset"], json!(10));
    let epoch = all["history"]["epoch"].clone();
    let page = c
        .request(json!({"history": {"channel": "chat:h", "limit": 3, "since": {"offset": 4, "epoch": epoch}}}))
        .await;
    let offs: Vec<_> = page["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offs, vec![json!(5), json!(6), json!(7)]);
    let last = c
        .request(json!({"history": {"channel": "chat:h", "limit": 2, "reverse": true}}))
        .await;
    let data: Vec<_> = last["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, vec![json!(10), json!(9)]);
    let pos = c
        .request(json!({"history": {"channel": "chat:h", "limit": 0}}))
        .await;
    assert!(pos["history"]
        .get("publications")
        .is_none_or(|p| p.as_array().unwrap().is_empty()));
    assert_eq!(pos["history"]["offset"], json!(10));
}

#[tokio::test]
async fn recovery_delivers_exactly_the_missed_publications_in_order() {
    let server = start_default().await;
    let mut c = Client::connect_user(&server, "ann").await;
    let sub = c.subscribe("chat:r").await;
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    publish(&server, "chat:r", json!("seen")).await;
    let seen = c.next_pub("chat:r").await;
    assert_eq!(seen["offset"], json!(1));
    c.close().await;
    for i in 0..100 {
        publish(&server, "chat:r", json!(i)).await;
    }
    let mut c = Client::connect_user(&server, "ann").await;
    let r = c
        .request(json!({"subscribe": {"channel": "chat:r", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], json!(true), "{r}");
    assert_eq!(s["was_recovering"], json!(true));
    let pubs = s["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 100);
    for (i, p) in pubs.iter().enumerate() {
        assert_eq!(p["data"], json!(i));
        assert_eq!(p["offset"], json!(i + 2));
    }
    // Live publications continue right after, with no duplicate.
    publish(&server, "chat:r", json!("live")).await;
    let live = c.next_pub("chat:r").await;
    assert_eq!(live["offset"], json!(102));
}

#[tokio::test]
async fn recovery_fails_cleanly_when_history_is_too_short_or_epoch_changed() {
    let mut cfg = config();
    cfg.namespaces.get_mut("chat").unwrap().history_size = 5;
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "ann").await;
    let epoch = c.subscribe("chat:g").await["subscribe"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..20 {
        publish(&server, "chat:g", json!(i)).await;
    }
    let mut d = Client::connect_user(&server, "ann").await;
    let r = d
        .request(json!({"subscribe": {"channel": "chat:g", "recover": true, "offset": 2, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"].get("recovered"), None, "not recovered: {r}");
    assert_eq!(r["subscribe"]["offset"], json!(20));
    let mut e = Client::connect_user(&server, "ann").await;
    let r = e
        .request(json!({"subscribe": {"channel": "chat:g", "recover": true, "offset": 20, "epoch": "other"}}))
        .await;
    assert_eq!(r["subscribe"].get("recovered"), None, "epoch changed: {r}");
    // Up to date: recovered with nothing to deliver.
    let mut f = Client::connect_user(&server, "ann").await;
    let r = f
        .request(json!({"subscribe": {"channel": "chat:g", "recover": true, "offset": 20, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["recovered"], json!(true), "{r}");
}

#[tokio::test]
async fn server_side_personal_channel_recovers_on_reconnect() {
    let server = start_default().await;
    let c = Client::connect_user(&server, "ann").await;
    let sub = c.connect_reply["connect"]["subs"]["user:ann"].clone();
    assert_eq!(sub["recoverable"], json!(true), "{sub}");
    let epoch = sub["epoch"].clone();
    let offset = sub["offset"].as_u64().unwrap_or(0);
    c.close().await;
    publish(&server, "user:ann", json!({"note": "while offline 1"})).await;
    publish(&server, "user:ann", json!({"note": "while offline 2"})).await;
    let mut c = Client::open(&server).await;
    let r = c
        .request(json!({"connect": {"token": token("ann"), "subs": {"user:ann": {"recover": true, "offset": offset, "epoch": epoch}}}}))
        .await;
    let s = &r["connect"]["subs"]["user:ann"];
    assert_eq!(s["recovered"], json!(true), "{r}");
    let notes: Vec<_> = s["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["note"].clone())
        .collect();
    assert_eq!(
        notes,
        vec![json!("while offline 1"), json!("while offline 2")]
    );
}
