//! The Protobuf encoding of the client protocol over the real WebSocket: negotiation,
//! every command, channels shared with JSON clients, recovery, pings, bad input.

mod common;

use std::time::Duration;

use common::protobuf::{frame, json_bytes, json_of, ProtoClient};
use common::*;
use serde_json::json;
use switchboard::auth::MintClaims;
use switchboard_protocol::protobuf::wire::{self, Command};
use tokio_tungstenite::tungstenite::Message;

fn subscribe(channel: &str) -> Command {
    Command {
        subscribe: Some(wire::SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn publish(channel: &str, data: &serde_json::Value) -> Command {
    Command {
        publish: Some(wire::PublishRequest {
            channel: channel.into(),
            data: json_bytes(data),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn error_code(reply: &wire::Reply) -> Option<u32> {
    reply.error.as_ref().map(|e| e.code)
}

#[tokio::test]
async fn negotiated_by_query_or_subprotocol() {
    let server = start_default().await;
    let (_, connected) = ProtoClient::connect(&server, &token("ann")).await;
    assert!(!connected.client.is_empty());
    assert!(connected.subs.contains_key("user:ann"), "{connected:?}");
    // centrifuge-js's Protobuf build offers the subprotocol and no query parameter.
    let mut c = ProtoClient::open_subprotocol(&server).await;
    assert_eq!(c.subprotocol.as_deref(), Some("centrifuge-protobuf"));
    let reply = c
        .request(Command {
            connect: Some(wire::ConnectRequest {
                token: token("bob"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(reply.connect.is_some(), "{reply:?}");
    // Without either, the same endpoint still speaks JSON.
    Client::connect_user(&server, "carl").await;
}

#[tokio::test]
async fn channels_are_shared_with_json_clients() {
    let server = start_default().await;
    let (mut ann, _) = ProtoClient::connect(&server, &token("ann")).await;
    let mut bob = Client::connect_user(&server, "bob").await;
    let r = ann.request(subscribe("chat:room")).await;
    assert!(r.subscribe.is_some(), "{r:?}");
    bob.subscribe("chat:room").await;
    // Bob's join reaches the Protobuf subscriber as a push (after Ann's own).
    loop {
        let p = ann.next_push().await;
        let joined = p.join.and_then(|j| j.info).map(|i| i.user);
        if joined.as_deref() == Some("bob") {
            assert_eq!(p.channel, "chat:room");
            break;
        }
    }
    // Ann publishes JSON bytes; Bob reads JSON, Ann gets her own publication back.
    let r = ann
        .request(publish("chat:room", &json!({"text": "hi"})))
        .await;
    assert!(r.publish.is_some(), "{r:?}");
    let p = bob.next_pub("chat:room").await;
    assert_eq!(p["data"], json!({"text": "hi"}));
    assert_eq!(p["info"]["user"], json!("ann"));
    let own = ann.next_pub("chat:room").await;
    assert_eq!(json_of(&own.data), json!({"text": "hi"}));
    assert_eq!(own.info.map(|i| i.user), Some("ann".into()));
    assert_eq!(own.offset, 1);
    // And the other way: a JSON client's and the server API's publications.
    bob.publish("chat:room", json!({"text": "yo"})).await;
    let p = ann.next_pub("chat:room").await;
    assert_eq!((json_of(&p.data), p.offset), (json!({"text": "yo"}), 2));
    api_call(
        &server,
        "publish",
        json!({"channel": "chat:room", "data": {"n": 3}, "tags": {"k": "v"}}),
    )
    .await;
    let p = ann.next_pub("chat:room").await;
    assert_eq!(json_of(&p.data), json!({"n": 3}));
    assert_eq!(p.tags.get("k").map(String::as_str), Some("v"));
}

#[tokio::test]
async fn recovers_missed_publications() {
    let server = start_default().await;
    let (mut ann, _) = ProtoClient::connect(&server, &token("ann")).await;
    let first = ann
        .request(subscribe("chat:r"))
        .await
        .subscribe
        .expect("subscribed");
    assert!(first.recoverable);
    for n in 1..=3 {
        api_call(
            &server,
            "publish",
            json!({"channel": "chat:r", "data": {"n": n}}),
        )
        .await;
    }
    let (mut again, _) = ProtoClient::connect(&server, &token("ann")).await;
    let r = again
        .request(Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "chat:r".into(),
                recover: true,
                offset: 1,
                epoch: first.epoch.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let s = r.subscribe.expect("subscribed");
    assert!(s.recovered && s.was_recovering, "{s:?}");
    let offsets: Vec<u64> = s.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [2, 3]);
    assert_eq!(json_of(&s.publications[1].data), json!({"n": 3}));
    // A wrong epoch is not recovered, as over JSON.
    let r = again
        .request(Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "chat:other".into(),
                recover: true,
                offset: 5,
                epoch: "gone".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(!r.subscribe.expect("subscribed").recovered);
}

#[tokio::test]
async fn every_command_works_with_the_same_codes_and_metrics() {
    let mut cfg = config();
    cfg.user_status.query = true;
    let server = start(cfg).await;
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    c.request(subscribe("chat:all")).await;
    c.request(publish("chat:all", &json!({"x": 1}))).await;

    let r = c
        .request(Command {
            presence: Some(wire::PresenceRequest {
                channel: "chat:all".into(),
            }),
            ..Default::default()
        })
        .await;
    let presence = r.presence.expect("presence").presence;
    assert_eq!(presence.len(), 1);
    assert!(presence.values().all(|i| i.user == "ann"));

    let r = c
        .request(Command {
            presence_stats: Some(wire::PresenceStatsRequest {
                channel: "chat:all".into(),
            }),
            ..Default::default()
        })
        .await;
    let stats = r.presence_stats.expect("stats");
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));

    let r = c
        .request(Command {
            history: Some(wire::HistoryRequest {
                channel: "chat:all".into(),
                limit: 10,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let history = r.history.expect("history");
    assert_eq!(history.publications.len(), 1);
    assert_eq!(json_of(&history.publications[0].data), json!({"x": 1}));

    let r = c
        .request(Command {
            rpc: Some(wire::RpcRequest {
                method: "user_status".into(),
                data: json_bytes(&json!({"users": ["ann"]})),
            }),
            ..Default::default()
        })
        .await;
    let status = json_of(&r.rpc.expect("rpc").data);
    assert_eq!(status["statuses"][0]["user"], json!("ann"), "{status}");

    let r = c
        .request(Command {
            rpc: Some(wire::RpcRequest {
                method: "nope".into(),
                data: json_bytes(&json!({})),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(error_code(&r), Some(104));

    let r = c
        .request(Command {
            refresh: Some(wire::RefreshRequest {
                token: expiring_token("ann", 600),
            }),
            ..Default::default()
        })
        .await;
    let refreshed = r.refresh.expect("refresh");
    assert!(refreshed.expires && refreshed.ttl > 500, "{refreshed:?}");

    let r = c
        .request(Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "observation:1".into(),
                token: sub_token("ann", "observation:1"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(r.subscribe.is_some(), "{r:?}");
    let fresh = token_with(&MintClaims {
        sub: "ann".into(),
        channel: Some("observation:1".into()),
        exp: Some(switchboard::auth::now_secs() + 600),
        ..MintClaims::default()
    });
    let r = c
        .request(Command {
            sub_refresh: Some(wire::SubRefreshRequest {
                channel: "observation:1".into(),
                token: fresh,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(r.sub_refresh.expect("sub_refresh").ttl > 500);

    // `send` gets no reply; the ping after it does.
    c.send_binary(frame(&[Command {
        id: 0,
        send: Some(wire::SendRequest {
            data: json_bytes(&json!({"hello": true})),
        }),
        ..Default::default()
    }]))
    .await;
    let r = c
        .request(Command {
            ping: Some(wire::PingRequest {}),
            ..Default::default()
        })
        .await;
    assert!(r.ping.is_some() && r.error.is_none(), "{r:?}");

    let r = c
        .request(Command {
            unsubscribe: Some(wire::UnsubscribeRequest {
                channel: "chat:all".into(),
            }),
            ..Default::default()
        })
        .await;
    assert!(r.unsubscribe.is_some());

    // Errors carry the JSON protocol's codes.
    assert_eq!(
        error_code(&c.request(subscribe("user:bob")).await),
        Some(103)
    );
    assert_eq!(
        error_code(&c.request(subscribe("nowhere:1")).await),
        Some(102)
    );
    assert_eq!(error_code(&c.request(Command::default()).await), Some(104));

    for (kind, n) in [
        ("presence", 1),
        ("history", 1),
        ("rpc", 2),
        ("sub_refresh", 1),
    ] {
        let ok = metric(
            &server,
            &format!(r#"switchboard_commands_total{{command="{kind}",result="ok"}}"#),
        )
        .await;
        let err = metric(
            &server,
            &format!(r#"switchboard_commands_total{{command="{kind}",result="error"}}"#),
        )
        .await;
        assert_eq!(ok + err, n, "{kind}");
    }
}

#[tokio::test]
async fn a_payload_that_is_not_json_is_a_bad_request() {
    let server = start_default().await;
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    c.request(subscribe("chat:bin")).await;
    let r = c
        .request(Command {
            publish: Some(wire::PublishRequest {
                channel: "chat:bin".into(),
                data: bytes::Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(error_code(&r), Some(107), "{r:?}");
    // The connection stays.
    let r = c
        .request(Command {
            ping: Some(wire::PingRequest {}),
            ..Default::default()
        })
        .await;
    assert!(r.ping.is_some());
}

#[tokio::test]
async fn undecodable_frames_close_with_3501() {
    let server = start_default().await;
    // Before connect: bytes that are no Command stream.
    let mut c = ProtoClient::open(&server).await;
    c.send_binary(vec![0xff, 0xff, 0xff]).await;
    assert_eq!(c.closed().await.code, 3501);
    // After connect: a length prefix past the end of the frame.
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    c.send_binary(vec![10, 8, 1]).await;
    assert_eq!(c.closed().await.code, 3501);
    // A text frame on a Protobuf connection.
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    c.send_message(Message::text(r#"{"id":1,"ping":{}}"#)).await;
    assert_eq!(c.closed().await.code, 3501);
    // And a binary frame on a JSON connection.
    let mut j = Client::connect_user(&server, "bob").await;
    j.send_message(Message::binary(frame(&[Command::default()])))
        .await;
    assert_eq!(j.closed().await.code, 3501);
}

#[tokio::test]
async fn oversized_frames_close_with_3506() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let server = start(cfg).await;
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    let big = json!({"text": "x".repeat(2000)});
    c.send_binary(frame(&[publish("chat:big", &big)])).await;
    assert_eq!(c.closed().await.code, 3506);
}

#[tokio::test]
async fn pings_are_answered_by_pongs_or_the_client_is_closed_with_3012() {
    let mut cfg = config();
    // A pong deadline shorter than the interval: each ping would move a longer one on.
    cfg.client.ping_interval = Duration::from_millis(400);
    cfg.client.pong_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let (mut alive, _) = ProtoClient::connect(&server, &token("alive")).await;
    let (mut dead, _) = ProtoClient::connect(&server, &token("dead")).await;
    // The server's ping is an empty Reply; the pong an empty Command.
    for _ in 0..3 {
        let ping = alive.read().await.expect("a ping");
        assert_eq!(ping, wire::Reply::default());
        alive.send_binary(frame(&[Command::default()])).await;
    }
    // `dead` reads its pings but never answers.
    assert_eq!(dead.closed().await.code, 3012);
    let r = alive
        .request(Command {
            ping: Some(wire::PingRequest {}),
            ..Default::default()
        })
        .await;
    assert!(r.ping.is_some(), "still connected");
}
