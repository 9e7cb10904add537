//! The streaming transports against the real server with reqwest: `http_stream` (JSON
//! and Protobuf) and `sse` with their `/emulation` requests, and the unidirectional
//! `uni_sse`, `uni_http_stream` and `uni_websocket`; their errors and limits.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::protobuf::{frame, json_bytes, json_of};
use common::streaming::{connect, emulate, emulate_raw, http, http_stream, Stream};
use common::*;
use futures_util::SinkExt;
use prost::Message as _;
use serde_json::{json, Value};
use switchboard_protocol::protobuf::wire;
use tokio_tungstenite::tungstenite::Message;

/// The connect reply's session and node.
fn emulation_ids(reply: &Value) -> (String, String) {
    let r = &reply["connect"];
    let session = r["session"].as_str().expect("session").to_owned();
    let node = r["node"].as_str().expect("node").to_owned();
    assert!(!session.is_empty());
    assert_ne!(
        Some(session.as_str()),
        r["client"].as_str(),
        "the session id is not the public client id"
    );
    (session, node)
}

/// The next publication push, skipping the rest (the subscriber's own join).
async fn next_pub<F>(stream: &mut Stream, next: F) -> Value
where
    F: AsyncFn(&mut Stream) -> Option<Value>,
{
    loop {
        let m = next(stream).await.expect("publication");
        if m["push"]["pub"].is_object() {
            return m;
        }
    }
}

#[tokio::test]
async fn http_stream_carries_replies_and_pushes_and_takes_commands_by_emulation() {
    let server = start_default().await;
    let mut stream = http_stream(&server, &connect(&token("ann"))).await;
    assert_eq!(stream.header("x-accel-buffering"), "no");
    assert!(stream.header("cache-control").contains("no-store"));
    let reply = stream.message().await.expect("connect reply");
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["connect"]["subs"]["user:ann"].is_object(), "{reply}");
    let (session, node) = emulation_ids(&reply);

    let sub = json!({"id": 2, "subscribe": {"channel": "chat:s"}});
    assert_eq!(emulate(&server, &node, &session, &[sub]).await, 204);
    let reply = stream.message().await.expect("subscribe reply");
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply["subscribe"].is_object(), "{reply}");

    api_call(
        &server,
        "publish",
        json!({"channel": "chat:s", "data": {"n": 1}}),
    )
    .await;
    let push = next_pub(&mut stream, Stream::message).await;
    assert_eq!(push["push"]["channel"], "chat:s", "{push}");
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));

    // Two commands in one request, answered in order.
    let cmds = [
        json!({"id": 3, "publish": {"channel": "chat:s", "data": {"n": 2}}}),
        json!({"id": 4, "presence_stats": {"channel": "chat:s"}}),
    ];
    assert_eq!(emulate(&server, &node, &session, &cmds).await, 204);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(stream.message().await.expect("message"));
    }
    assert!(
        seen.iter()
            .any(|m| m["id"] == 3 && m["publish"].is_object()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|m| m["push"]["pub"]["data"] == json!({"n": 2})),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|m| m["id"] == 4 && m["presence_stats"]["num_clients"] == 1),
        "{seen:?}"
    );
    let open = r#"switchboard_connections{transport="http_stream",encoding="json"}"#;
    assert_eq!(metric(&server, open).await, 1);

    // The server ends the connection: a disconnect push, then the end of the stream.
    api_call(&server, "disconnect", json!({"user": "ann"})).await;
    let last = stream.message().await.expect("disconnect push");
    assert_eq!(last["push"]["disconnect"]["code"], 3503, "{last}");
    stream.until_end().await;
    // The session is gone from the node: its commands are answered 204 and dropped.
    let ping = json!({"id": 5, "ping": {}});
    assert_eq!(emulate(&server, &node, &session, &[ping]).await, 204);
    eventually("connection released", || {
        server.node.user_sessions("ann", None).is_empty()
    })
    .await;
}

#[tokio::test]
async fn emulation_refuses_unknown_nodes_malformed_and_oversized_requests() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let server = start(cfg).await;
    let mut stream = http_stream(&server, &connect(&token("ann"))).await;
    let (session, node) = emulation_ids(&stream.message().await.expect("connect reply"));
    let ping = json!({"id": 2, "ping": {}});
    // A session this node does not know: gone, the client's stream has ended.
    assert_eq!(
        emulate(
            &server,
            &node,
            "no-such-session",
            std::slice::from_ref(&ping)
        )
        .await,
        204
    );
    // Another node's session: 404, so the client reconnects.
    assert_eq!(
        emulate(&server, "other-node", &session, std::slice::from_ref(&ping)).await,
        404
    );
    assert_eq!(
        emulate_raw(&server, "application/json", b"{not json".to_vec()).await,
        400
    );
    let big = json!({"node": node, "session": session, "data": "x".repeat(2000)});
    assert_eq!(
        emulate_raw(&server, "application/json", big.to_string().into_bytes()).await,
        413
    );
    assert_eq!(
        emulate_raw(&server, "application/octet-stream", vec![0xff; 8]).await,
        400
    );
    // The session still works.
    assert_eq!(emulate(&server, &node, &session, &[ping]).await, 204);
    let reply = stream.message().await.expect("ping reply");
    assert_eq!(reply["id"], 2, "{reply}");

    // An oversized connect request: 413 before any stream.
    let resp = http()
        .post(server.http_url("/connection/http_stream"))
        .body("x".repeat(2000))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn a_bad_connect_over_http_stream_ends_the_stream_with_its_code() {
    let server = start_default().await;
    let mut stream = http_stream(&server, &connect("not-a-token")).await;
    let last = stream.message().await.expect("disconnect push");
    assert_eq!(last["push"]["disconnect"]["code"], 3500, "{last}");
    stream.until_end().await;
    // A first command that is not a connect: 3501.
    let mut stream = http_stream(&server, &json!({"id": 1, "ping": {}})).await;
    let last = stream.message().await.expect("disconnect push");
    assert_eq!(last["push"]["disconnect"]["code"], 3501, "{last}");
    stream.until_end().await;
}

#[tokio::test]
async fn http_stream_speaks_protobuf_when_the_body_is_octet_stream() {
    let server = start_default().await;
    let connect = wire::Command {
        id: 1,
        connect: Some(wire::ConnectRequest {
            token: token("ann"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = http()
        .post(server.http_url("/connection/http_stream"))
        .header("Content-Type", "application/octet-stream")
        .body(frame(&[connect]))
        .send()
        .await
        .expect("send");
    let mut stream = Stream::new(resp);
    assert_eq!(stream.header("content-type"), "application/octet-stream");
    let reply = stream.reply().await.expect("connect reply");
    let result = reply.connect.expect("connect result");
    assert!(result.subs.contains_key("user:ann"));
    assert!(!result.session.is_empty());

    let subscribe = wire::Command {
        id: 2,
        subscribe: Some(wire::SubscribeRequest {
            channel: "chat:pb".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = wire::EmulationRequest {
        node: result.node.clone(),
        session: result.session.clone(),
        data: Bytes::from(frame(&[subscribe])),
    };
    let status = emulate_raw(&server, "application/octet-stream", req.encode_to_vec()).await;
    assert_eq!(status, 204);
    let reply = stream.reply().await.expect("subscribe reply");
    assert_eq!(reply.id, 2);
    assert!(reply.subscribe.is_some(), "{reply:?}");

    api_call(
        &server,
        "publish",
        json!({"channel": "chat:pb", "data": {"n": 1}}),
    )
    .await;
    // The subscriber's own join comes first (the namespace has join/leave).
    let push = loop {
        let r = stream.reply().await.expect("publication");
        if let Some(p) = r.push.filter(|p| p.r#pub.is_some()) {
            break p;
        }
    };
    assert_eq!(push.channel, "chat:pb");
    assert_eq!(json_of(&push.r#pub.expect("pub").data), json!({"n": 1}));

    let publish = wire::Command {
        id: 3,
        publish: Some(wire::PublishRequest {
            channel: "chat:pb".into(),
            data: json_bytes(&json!({"n": 2})),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = wire::EmulationRequest {
        node: result.node,
        session: result.session,
        data: Bytes::from(frame(&[publish])),
    };
    let status = emulate_raw(&server, "application/octet-stream", req.encode_to_vec()).await;
    assert_eq!(status, 204);
    let reply = loop {
        let r = stream.reply().await.expect("publish reply");
        if r.id == 3 {
            break r;
        }
    };
    assert!(reply.publish.is_some(), "{reply:?}");
    let history = api_call(
        &server,
        "history",
        json!({"channel": "chat:pb", "limit": 10}),
    )
    .await;
    let n = history["result"]["publications"].as_array().map(Vec::len);
    assert_eq!(n, Some(2), "{history}");
}

#[tokio::test]
async fn sse_connects_from_the_query_and_sends_events() {
    let server = start_default().await;
    let cf_connect = connect(&token("ann")).to_string();
    let resp = http()
        .get(server.http_url("/connection/sse"))
        .query(&[("cf_connect", cf_connect.as_str())])
        .send()
        .await
        .expect("send");
    let mut stream = Stream::new(resp);
    assert!(stream
        .header("content-type")
        .starts_with("text/event-stream"));
    let reply = stream.event_message().await.expect("connect reply");
    let (session, node) = emulation_ids(&reply);
    let sub = json!({"id": 2, "subscribe": {"channel": "chat:sse"}});
    assert_eq!(emulate(&server, &node, &session, &[sub]).await, 204);
    assert_eq!(stream.event_message().await.expect("reply")["id"], 2);
    api_call(
        &server,
        "publish",
        json!({"channel": "chat:sse", "data": {"n": 1}}),
    )
    .await;
    let push = next_pub(&mut stream, Stream::event_message).await;
    assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}), "{push}");

    // No connect command at all: 400.
    let resp = http()
        .get(server.http_url("/connection/sse"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn streams_are_pinged_and_a_silent_emulated_client_is_closed_with_3012() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_millis(200);
    cfg.client.pong_timeout = Duration::from_millis(300);
    let server = start(cfg).await;
    let mut stream = http_stream(&server, &connect(&token("ann"))).await;
    stream.message().await.expect("connect reply");
    let ping = stream.json().await.expect("ping");
    assert_eq!(ping, json!({}));
    loop {
        let m = stream.json().await.expect("disconnect push before the end");
        if m != json!({}) {
            assert_eq!(m["push"]["disconnect"]["code"], 3012, "{m}");
            break;
        }
    }
    stream.until_end().await;
}

#[tokio::test]
async fn a_client_that_goes_away_releases_its_session() {
    let server = start_default().await;
    let mut stream = http_stream(&server, &connect(&token("ann"))).await;
    stream.message().await.expect("connect reply");
    assert_eq!(server.node.user_sessions("ann", None).len(), 1);
    drop(stream);
    eventually("session released", || {
        server.node.user_sessions("ann", None).is_empty()
    })
    .await;
}

/// `GET /connection/uni_sse` connecting as `user` with `cf_connect`.
async fn uni_sse(server: &TestServer, user: &str) -> Stream {
    let cf_connect = json!({"token": token(user)}).to_string();
    let resp = http()
        .get(server.http_url("/connection/uni_sse"))
        .query(&[("cf_connect", cf_connect.as_str())])
        .send()
        .await
        .expect("uni_sse");
    Stream::new(resp)
}

#[tokio::test]
async fn uni_sse_pushes_the_connect_and_server_side_channels() {
    let server = start_default().await;
    let mut stream = uni_sse(&server, "ann").await;
    let first = stream.event_message().await.expect("connect push");
    assert!(first["connect"]["client"].is_string(), "{first}");
    assert!(first["connect"]["subs"]["user:ann"].is_object(), "{first}");
    assert!(
        first["connect"].get("pong").is_none(),
        "no pongs expected: {first}"
    );
    api_call(
        &server,
        "publish",
        json!({"channel": "user:ann", "data": {"note": 1}}),
    )
    .await;
    let push = stream.event_message().await.expect("publication");
    assert_eq!(push["channel"], "user:ann", "{push}");
    assert_eq!(push["pub"]["data"], json!({"note": 1}));

    // The connect request as a POST body works the same.
    let resp = http()
        .post(server.http_url("/connection/uni_sse"))
        .body(json!({"token": token("bob")}).to_string())
        .send()
        .await
        .expect("send");
    let mut stream = Stream::new(resp);
    let first = stream.event_message().await.expect("connect push");
    assert!(first["connect"]["subs"]["user:bob"].is_object(), "{first}");

    // No connect request: an empty one, which without a token (or a connect proxy) is
    // refused.
    let resp = http()
        .get(server.http_url("/connection/uni_sse"))
        .send()
        .await
        .expect("send");
    let mut stream = Stream::new(resp);
    let last = stream.event_message().await.expect("disconnect push");
    assert_eq!(last["disconnect"]["code"], 3500, "{last}");
    stream.until_end().await;

    let resp = http()
        .get(server.http_url("/connection/uni_sse"))
        .query(&[("cf_connect", "{not json")])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);

    // A refused connect: a disconnect push, then the end.
    let cf_connect = json!({"token": "bad"}).to_string();
    let resp = http()
        .get(server.http_url("/connection/uni_sse"))
        .query(&[("cf_connect", cf_connect.as_str())])
        .send()
        .await
        .expect("send");
    let mut stream = Stream::new(resp);
    let last = stream.event_message().await.expect("disconnect push");
    assert_eq!(last["disconnect"]["code"], 3500, "{last}");
    stream.until_end().await;
}

#[tokio::test]
async fn uni_streams_are_pinged_without_expecting_pongs() {
    let mut cfg = config();
    cfg.client.ping_interval = Duration::from_millis(150);
    cfg.client.pong_timeout = Duration::from_millis(100);
    let server = start(cfg).await;
    let resp = http()
        .post(server.http_url("/connection/uni_http_stream"))
        .body(json!({"token": token("ann")}).to_string())
        .send()
        .await
        .expect("send");
    let mut stream = Stream::new(resp);
    let first = stream.message().await.expect("connect push");
    assert!(first["connect"]["subs"]["user:ann"].is_object(), "{first}");
    // Well past several pong timeouts, the connection is still pinged, never closed.
    for _ in 0..6 {
        assert_eq!(stream.json().await.expect("ping"), json!({}));
    }
    api_call(
        &server,
        "publish",
        json!({"channel": "user:ann", "data": {"n": 1}}),
    )
    .await;
    let push = stream.message().await.expect("publication");
    assert_eq!(push["pub"]["data"], json!({"n": 1}), "{push}");

    let resp = http()
        .post(server.http_url("/connection/uni_http_stream"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn uni_websocket_connects_with_its_first_message() {
    let server = start_default().await;
    let url = format!("ws://{}/connection/uni_websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("open");
    let req = json!({"token": token("ann")}).to_string();
    ws.send(Message::Text(req.into())).await.expect("send");
    let first: Value =
        serde_json::from_str(&next_text(&mut ws).await.expect("connect push")).expect("json");
    assert!(first["connect"]["subs"]["user:ann"].is_object(), "{first}");
    // Later messages are ignored.
    ws.send(Message::Text(
        r#"{"id":2,"subscribe":{"channel":"chat:x"}}"#.into(),
    ))
    .await
    .expect("send");
    api_call(
        &server,
        "publish",
        json!({"channel": "user:ann", "data": {"n": 1}}),
    )
    .await;
    let push: Value = serde_json::from_str(&next_text(&mut ws).await.expect("push")).expect("json");
    assert_eq!(push["channel"], "user:ann", "{push}");
    assert_eq!(push["pub"]["data"], json!({"n": 1}));
    api_call(&server, "disconnect", json!({"user": "ann"})).await;
    let last: Value =
        serde_json::from_str(&next_text(&mut ws).await.expect("disconnect")).expect("json");
    assert_eq!(last["disconnect"]["code"], 3503, "{last}");
    assert_eq!(next_text(&mut ws).await.expect_err("closed").code, 3503);

    // A first message that is not a connect request: 3501.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("open");
    ws.send(Message::Text("not json".into()))
        .await
        .expect("send");
    loop {
        match next_text(&mut ws).await {
            Ok(_) => {}
            Err(closed) => {
                assert_eq!(closed.code, 3501, "{closed:?}");
                break;
            }
        }
    }
}

#[tokio::test]
async fn transports_can_be_turned_off() {
    let mut cfg = config();
    cfg.transports.http_stream = false;
    cfg.transports.sse = false;
    cfg.transports.uni_sse = false;
    let server = start(cfg).await;
    for (method, path) in [
        ("POST", "/connection/http_stream"),
        ("GET", "/connection/sse"),
        ("POST", "/emulation"),
        ("GET", "/connection/uni_sse"),
    ] {
        let req = match method {
            "POST" => http().post(server.http_url(path)),
            _ => http().get(server.http_url(path)),
        };
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 404, "{path}");
    }
    // The others stay.
    let resp = http()
        .post(server.http_url("/connection/uni_http_stream"))
        .body(json!({"token": token("ann")}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
}

/// The real `curl`, as the docs tell a newcomer to try it.
#[tokio::test]
async fn curl_reads_uni_sse() {
    let found = std::process::Command::new("curl").arg("--version").output();
    if found.map(|o| !o.status.success()).unwrap_or(true) {
        println!("SKIPPED: curl is not installed");
        return;
    }
    let server = start_default().await;
    let cf_connect = json!({"token": token("ann")}).to_string();
    let url = server.http_url("/connection/uni_sse");
    let mut child = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "10", "-G", &url, "--data-urlencode"])
        .arg(format!("cf_connect={cf_connect}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = next_data(&mut lines).await;
    assert!(first["connect"]["subs"]["user:ann"].is_object(), "{first}");
    api_call(
        &server,
        "publish",
        json!({"channel": "user:ann", "data": {"hello": "curl"}}),
    )
    .await;
    let push = next_data(&mut lines).await;
    assert_eq!(push["pub"]["data"], json!({"hello": "curl"}), "{push}");
}

/// The next event's data that curl printed, pings skipped.
async fn next_data(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    loop {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("curl read timeout")
            .expect("read")
            .expect("curl output ended");
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).expect("json");
            if v != json!({}) {
                return v;
            }
        }
    }
}

/// The value of the sample `name{labels}` at `/metrics`, 0 when it is not listed.
async fn sample(server: &TestServer, name: &str, labels: &str) -> u64 {
    metric(server, &format!("{name}{{{labels}}}")).await
}

#[tokio::test]
async fn connections_are_counted_by_transport_encoding_and_close_code() {
    let server = start(common::pusher::config()).await;
    let mut json_ws = Client::connect_user(&server, "ann").await;
    let (mut proto_ws, _) = common::protobuf::ProtoClient::connect(&server, &token("ann")).await;
    let mut stream = http_stream(&server, &connect(&token("ann"))).await;
    stream.message().await.expect("connect reply");
    let mut uni = uni_sse(&server, "ann").await;
    uni.event_message().await.expect("connect push");
    let pusher = common::pusher::PusherClient::connect(&server).await;
    let handshake = http()
        .get(server.http_url("/socket.io/?EIO=4&transport=polling"))
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("engine.io handshake");
    assert_eq!(handshake.status(), 200);

    let labels = [
        r#"transport="websocket",encoding="json""#,
        r#"transport="websocket",encoding="protobuf""#,
        r#"transport="http_stream",encoding="json""#,
        r#"transport="uni_sse",encoding="json""#,
        r#"transport="pusher",encoding="json""#,
        r#"transport="socketio_polling",encoding="json""#,
    ];
    for l in labels {
        assert_eq!(
            sample(&server, "switchboard_connections", l).await,
            1,
            "{l}"
        );
        assert_eq!(
            sample(&server, "switchboard_connects_total", l).await,
            1,
            "{l}"
        );
    }
    let none = r#"transport="sse",encoding="json""#;
    assert_eq!(sample(&server, "switchboard_connections", none).await, 0);

    // Ann's four connections are closed by the API (3503); the Pusher client leaves
    // (3000).
    api_call(&server, "disconnect", json!({"user": "ann"})).await;
    assert_eq!(json_ws.closed().await.code, 3503);
    assert_eq!(proto_ws.closed().await.code, 3503);
    stream.until_end().await;
    uni.until_end().await;
    pusher.close().await;
    for (l, code) in labels[..4]
        .iter()
        .map(|l| (l, 3503))
        .chain([(&labels[4], 3000)])
    {
        let closed = format!("{l},code=\"{code}\"");
        let (server, closed) = (&server, closed.as_str());
        eventually_value(|| async move {
            let n = sample(server, "switchboard_disconnects_total", closed).await;
            (n == 1).then_some(())
        })
        .await;
        assert_eq!(sample(server, "switchboard_connections", l).await, 0, "{l}");
    }
    // Still open: the Engine.IO session.
    assert_eq!(
        sample(&server, "switchboard_connections", labels[5]).await,
        1
    );
}
