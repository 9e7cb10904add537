//! The gateway core over the real WebSocket: connect, subscribe, publish, presence, rules.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::auth::MintClaims;

#[tokio::test]
async fn connect_subscribe_publish_roundtrip() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let connect = &ann.connect_reply["connect"];
    assert!(connect["client"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(connect["ping"], json!(25));
    assert_eq!(connect["pong"], json!(true));
    assert!(
        connect["subs"]["user:ann"].is_object(),
        "personal channel auto-subscribed: {connect}"
    );

    let mut bob = Client::connect_user(&server, "bob").await;
    assert!(ann.subscribe("chat:1").await.get("subscribe").is_some());
    assert!(bob.subscribe("chat:1").await.get("subscribe").is_some());
    let reply = bob.publish("chat:1", json!({"text": "hi"})).await;
    assert_eq!(reply["publish"], json!({}), "{reply}");
    let p = ann.next_pub("chat:1").await;
    assert_eq!(p["data"], json!({"text": "hi"}));
    assert_eq!(p["info"]["user"], json!("bob"));
    assert_eq!(p["offset"], json!(1));
    server.stop().await;
}

#[tokio::test]
async fn personal_channel_receives_server_publication() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let data = serde_json::value::RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
    server
        .node
        .publish("user:ann", data.into(), Default::default())
        .await
        .unwrap();
    assert_eq!(ann.next_pub("user:ann").await["data"], json!({"n": 1}));
}

#[tokio::test]
async fn forbidden_and_unknown_channels_get_errors_and_connection_survives() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    assert_eq!(error_code(&ann.subscribe("user:bob").await), Some(103));
    assert_eq!(error_code(&ann.subscribe("secret:1").await), Some(102));
    assert_eq!(error_code(&ann.subscribe("chat:bad name").await), Some(102));
    assert_eq!(error_code(&ann.subscribe("").await), Some(102));
    assert_eq!(error_code(&ann.subscribe("user:ann").await), Some(105));
    assert_eq!(
        error_code(&ann.publish("news:1", json!(1)).await),
        Some(103)
    );
    // Still alive.
    assert!(ann.subscribe("chat:ok").await.get("subscribe").is_some());
}

#[tokio::test]
async fn role_tenant_and_token_rules() {
    let server = start_default().await;
    let t = token_with(MintClaims {
        sub: "7".into(),
        roles: vec!["tech".into()],
        tenant: Some("acme".into()),
        ..MintClaims::default()
    });
    let mut c = Client::connect(&server, &t).await;
    assert!(c.subscribe("role:tech").await.get("subscribe").is_some());
    assert_eq!(error_code(&c.subscribe("role:admin").await), Some(103));
    assert!(c.subscribe("tenant:acme").await.get("subscribe").is_some());
    assert_eq!(error_code(&c.subscribe("tenant:globex").await), Some(103));
    assert_eq!(error_code(&c.subscribe("observation:9").await), Some(103));
    let ok = c
        .request(json!({"subscribe": {"channel": "observation:9", "token": sub_token("7", "observation:9")}}))
        .await;
    assert!(ok.get("subscribe").is_some(), "{ok}");
    let other_user = c
        .request(json!({"subscribe": {"channel": "observation:10", "token": sub_token("8", "observation:10")}}))
        .await;
    assert_eq!(error_code(&other_user), Some(103));
}

#[tokio::test]
async fn invalid_token_disconnects_with_3500_and_expired_gets_109() {
    let server = start_default().await;
    let mut c = Client::open(&server).await;
    c.send_text(&json!({"id": 1, "connect": {"token": "nope"}}).to_string())
        .await;
    assert_eq!(c.closed().await.code, 3500);

    let mut c = Client::open(&server).await;
    let expired = token_with(MintClaims {
        sub: "ann".into(),
        exp: Some(switchboard::auth::now_secs() - 5),
        ..MintClaims::default()
    });
    let reply = c.request(json!({"connect": {"token": expired}})).await;
    assert_eq!(error_code(&reply), Some(109));
    let _ = Duration::ZERO;
}
