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
    let t = token_with(&MintClaims {
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
    let expired = token_with(&MintClaims {
        sub: "ann".into(),
        exp: Some(switchboard::auth::now_secs() - 3600),
        ..MintClaims::default()
    });
    let reply = c.request(json!({"connect": {"token": expired}})).await;
    assert_eq!(error_code(&reply), Some(109));
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn presence_counts_users_once_and_join_leave_arrive() {
    let server = start_default().await;
    let info = |name: &str| {
        token_with(&MintClaims {
            sub: name.into(),
            info: Some(json!({"name": name})),
            ..MintClaims::default()
        })
    };
    let mut ann1 = Client::connect(&server, &info("ann")).await;
    let mut ann2 = Client::connect(&server, &info("ann")).await;
    let mut bob = Client::connect(&server, &info("bob")).await;
    for c in [&mut ann1, &mut ann2] {
        assert!(c.subscribe("chat:p").await.get("subscribe").is_some());
    }
    assert!(bob.subscribe("chat:p").await.get("subscribe").is_some());
    // ann1 sees bob join, with his public info.
    loop {
        let p = ann1.next_push().await;
        if let Some(j) = p.get("join") {
            if j["info"]["user"] == json!("bob") {
                assert_eq!(j["info"]["conn_info"], json!({"name": "bob"}));
                break;
            }
        }
    }
    let stats = bob
        .request(json!({"presence_stats": {"channel": "chat:p"}}))
        .await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 3, "num_users": 2}),
        "{stats}"
    );
    let presence = bob
        .request(json!({"presence": {"channel": "chat:p"}}))
        .await;
    let clients = presence["presence"]["presence"]
        .as_object()
        .expect("presence map");
    assert_eq!(clients.len(), 3);
    assert!(clients
        .values()
        .any(|c| c["user"] == json!("bob") && c["conn_info"]["name"] == json!("bob")));

    // One of ann's tabs closes: still two users, and a leave for that client.
    let ann2_id = ann2.connect_reply["connect"]["client"].clone();
    ann2.close().await;
    loop {
        let p = bob.next_push().await;
        if let Some(l) = p.get("leave") {
            assert_eq!(l["info"]["client"], ann2_id);
            break;
        }
    }
    let stats = bob
        .request(json!({"presence_stats": {"channel": "chat:p"}}))
        .await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    // Presence of a channel one is not subscribed to is refused.
    assert_eq!(
        error_code(
            &bob.request(json!({"presence": {"channel": "chat:other"}}))
                .await
        ),
        Some(103)
    );
}

#[tokio::test]
async fn presence_off_namespace_is_not_available() {
    let server = start_default().await;
    let mut c = Client::connect_user(&server, "ann").await;
    c.subscribe("news:1").await;
    assert_eq!(
        error_code(&c.request(json!({"presence": {"channel": "news:1"}})).await),
        Some(108)
    );
    assert_eq!(
        error_code(&c.request(json!({"history": {"channel": "news:1"}})).await),
        Some(108)
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = start_default().await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    ann.subscribe("chat:u").await;
    bob.subscribe("chat:u").await;
    let r = ann
        .request(json!({"unsubscribe": {"channel": "chat:u"}}))
        .await;
    assert_eq!(r["unsubscribe"], json!({}));
    bob.publish("chat:u", json!("after")).await;
    // ann's next message is a reply to a fresh ping, not the publication.
    let r = ann.request(json!({"ping": {}})).await;
    assert!(r.get("ping").is_some());
    let seen = ann.take_backlog();
    assert!(
        !seen.iter().any(|m| m["push"].get("pub").is_some()),
        "{seen:?}"
    );
    ann.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn batched_commands_in_one_frame_each_get_a_reply() {
    let server = start_default().await;
    let mut c = Client::connect_user(&server, "ann").await;
    c.send_text(
        "{\"id\":10,\"subscribe\":{\"channel\":\"chat:a\"}}\n{\"id\":11,\"subscribe\":{\"channel\":\"chat:b\"}}\n{\"id\":12,\"publish\":{\"channel\":\"chat:a\",\"data\":{\"x\":1}}}",
    )
    .await;
    assert!(c.reply_to(10).await.get("subscribe").is_some());
    assert!(c.reply_to(11).await.get("subscribe").is_some());
    assert_eq!(c.reply_to(12).await["publish"], json!({}));
    assert_eq!(c.next_pub("chat:a").await["data"], json!({"x": 1}));
}

#[tokio::test]
async fn token_channels_claim_and_auto_subscribe_templates() {
    let mut config = config();
    config.auto_subscribe = vec![
        "user:{sub}".into(),
        "role:{roles}".into(),
        "tenant:{tenant}".into(),
    ];
    let server = start(config).await;
    let t = token_with(&MintClaims {
        sub: "9".into(),
        roles: vec!["admin".into(), "tech".into()],
        tenant: Some("acme".into()),
        channels: vec!["news:all".into(), "nope:x".into()],
        ..MintClaims::default()
    });
    let mut c = Client::connect(&server, &t).await;
    let subs = c.connect_reply["connect"]["subs"]
        .as_object()
        .expect("subs")
        .clone();
    let mut names: Vec<_> = subs.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "news:all",
            "role:admin",
            "role:tech",
            "tenant:acme",
            "user:9"
        ]
    );
    let data = serde_json::value::RawValue::from_string("\"hello techs\"".into()).unwrap();
    server
        .node
        .publish("role:tech", data.into(), Default::default())
        .await
        .unwrap();
    assert_eq!(c.next_pub("role:tech").await["data"], json!("hello techs"));
}

#[tokio::test]
async fn refresh_extends_and_wrong_user_is_refused() {
    let server = start_default().await;
    let mut c = Client::connect(&server, &expiring_token("ann", 60)).await;
    assert_eq!(c.connect_reply["connect"]["expires"], json!(true));
    let ttl = c.connect_reply["connect"]["ttl"].as_u64().unwrap();
    assert!((55..=60).contains(&ttl), "ttl {ttl}");
    let r = c
        .request(json!({"refresh": {"token": expiring_token("ann", 600)}}))
        .await;
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 500, "{r}");
    c.send_text(
        &json!({"id": 99, "refresh": {"token": expiring_token("mallory", 600)}}).to_string(),
    )
    .await;
    assert_eq!(c.closed().await.code, 3500);
}

#[tokio::test]
async fn refresh_at_expiry_is_accepted_within_the_grace_delay() {
    let mut cfg = config();
    cfg.client.expired_close_delay = Duration::from_secs(4);
    // The token below is already expired when it connects; the leeway lets it in, so
    // the test does not depend on where in the second it starts.
    cfg.token_leeway = Duration::from_secs(3600);
    let server = start(cfg).await;
    let exp = switchboard::auth::now_secs() - 1;
    let expired = token_with(&MintClaims {
        sub: "ann".into(),
        exp: Some(exp),
        ..MintClaims::default()
    });
    let mut c = Client::connect(&server, &expired).await;
    // Refresh after exp passed, as clients that refresh at `ttl` do.
    let r = c
        .request(json!({"refresh": {"token": expiring_token("ann", 600)}}))
        .await;
    assert!(r.get("refresh").is_some(), "{r}");
    // Past the old deadline (exp + grace), the connection is still there.
    wait_until_unix(exp + 4 + 1).await;
    assert!(c.request(json!({"ping": {}})).await.get("ping").is_some());
}

/// Sleeps until the wall clock reaches `unix` (whole seconds).
async fn wait_until_unix(unix: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let target = Duration::from_secs(unix);
    if target > now {
        tokio::time::sleep(target - now).await;
    }
}

#[tokio::test]
async fn subscription_token_expiry_is_announced_and_refreshable() {
    let mut cfg = config();
    cfg.client.expired_close_delay = Duration::from_secs(4);
    // Tokens below expire within the second they are made; the leeway lets them in
    // wherever in the second the test starts.
    cfg.token_leeway = Duration::from_secs(3600);
    let server = start(cfg).await;
    let mut c = Client::connect_user(&server, "7").await;
    let exp = switchboard::auth::now_secs();
    let t = token_with(&MintClaims {
        sub: "7".into(),
        channel: Some("observation:1".into()),
        exp: Some(exp),
        ..MintClaims::default()
    });
    let r = c
        .request(json!({"subscribe": {"channel": "observation:1", "token": t}}))
        .await;
    assert_eq!(r["subscribe"]["expires"], json!(true), "{r}");
    assert_eq!(r["subscribe"]["ttl"].as_u64().unwrap_or(0), 0, "{r}");
    let fresh = token_with(&MintClaims {
        sub: "7".into(),
        channel: Some("observation:1".into()),
        exp: Some(switchboard::auth::now_secs() + 600),
        ..MintClaims::default()
    });
    let r = c
        .request(json!({"sub_refresh": {"channel": "observation:1", "token": fresh}}))
        .await;
    assert!(r["sub_refresh"]["ttl"].as_u64().unwrap() > 500, "{r}");
    wait_until_unix(exp + 4 + 1).await;
    assert!(
        c.request(json!({"ping": {}})).await.get("ping").is_some(),
        "still connected"
    );
    // Without a refresh the connection is closed with 3006.
    let mut d = Client::connect_user(&server, "7").await;
    let t = token_with(&MintClaims {
        sub: "7".into(),
        channel: Some("observation:2".into()),
        exp: Some(switchboard::auth::now_secs()),
        ..MintClaims::default()
    });
    let r = d
        .request(json!({"subscribe": {"channel": "observation:2", "token": t}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(d.closed().await.code, 3006);
}

#[tokio::test]
async fn unrefreshed_connection_expires_with_3005() {
    let mut cfg = config();
    cfg.client.expired_close_delay = Duration::ZERO;
    // The token may already be past `exp` when the connect arrives (a second boundary
    // between minting and checking); the leeway admits it and the close still follows.
    cfg.token_leeway = Duration::from_secs(3600);
    let server = start(cfg).await;
    let mut c = Client::connect(&server, &expiring_token("ann", 1)).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, 3005, "{closed:?}");
    assert_eq!(closed.reason, "connection expired");
}

#[tokio::test]
async fn expiry_closes_come_from_their_own_deadlines_not_other_timers() {
    let mut cfg = config();
    // Every other timer is far beyond the receive timeout.
    cfg.client.connect_timeout = Duration::from_secs(600);
    cfg.client.ping_interval = Duration::from_secs(600);
    cfg.client.expired_close_delay = Duration::ZERO;
    cfg.token_leeway = Duration::from_secs(3600);
    let server = start(cfg).await;
    let mut c = Client::connect(&server, &expiring_token("ann", 1)).await;
    assert_eq!(c.closed().await.code, 3005);

    let mut d = Client::connect_user(&server, "7").await;
    let t = token_with(&MintClaims {
        sub: "7".into(),
        channel: Some("observation:1".into()),
        exp: Some(switchboard::auth::now_secs() + 1),
        ..MintClaims::default()
    });
    let r = d
        .request(json!({"subscribe": {"channel": "observation:1", "token": t}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    assert_eq!(d.closed().await.code, 3006);
}
