//! permessage-deflate (RFC 7692) on the WebSocket endpoints: negotiated per connection
//! when `websocket.compression` is on and the client offers it, never otherwise; what
//! the server sends arrives compressed and intact, what a client compresses is read.

mod common;

use common::deflate::{deflate, frame, DeflateClient, BROWSER_OFFER};
use common::Client;
use prost::Message as _;
use serde_json::{json, Value};
use switchboard::Config;
use switchboard_protocol::protobuf::wire::{self, Command, Reply};

const PATH: &str = "/connection/websocket";
const NEGOTIATED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn config(compression: bool) -> Config {
    let mut c = common::config();
    c.websocket.compression = compression;
    c
}

/// A publication that compresses well and is past `compression_min_size`.
fn big_data() -> Value {
    json!({"text": "switchboard compresses this line. ".repeat(60)})
}

/// Connects `client` as `user`, the connect command compressed or not.
async fn connect(client: &mut DeflateClient, user: &str, compress: bool) {
    let cmd = json!({"id": 1, "connect": {"token": common::token(user), "name": "test"}});
    client.send_text(&cmd.to_string(), compress).await;
    let (_, reply) = client.recv_json_with("connect").await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
}

async fn subscribe(client: &mut DeflateClient, channel: &str, compress: bool) {
    let cmd = json!({"id": 2, "subscribe": {"channel": channel}});
    client.send_text(&cmd.to_string(), compress).await;
    let (m, reply) = client.recv_json_with("subscribe").await;
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(
        !m.compressed,
        "a reply under compression_min_size goes plain"
    );
}

#[tokio::test]
async fn deflate_is_negotiated_and_publications_arrive_compressed_and_intact() {
    let server = common::start(config(true)).await;
    let mut ann = DeflateClient::open(server.addr, PATH, Some(BROWSER_OFFER)).await;
    assert_eq!(ann.extensions(), Some(NEGOTIATED));
    // Ann compresses her commands, as a browser does; Bob does not (both are allowed).
    connect(&mut ann, "ann", true).await;
    subscribe(&mut ann, "news:big", true).await;
    let mut bob = DeflateClient::open(server.addr, PATH, Some(BROWSER_OFFER)).await;
    connect(&mut bob, "bob", false).await;
    subscribe(&mut bob, "news:big", false).await;

    let data = big_data();
    let reply = common::api_call(
        &server,
        "publish",
        json!({"channel": "news:big", "data": data}),
    )
    .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let mut wires = Vec::new();
    for client in [&mut ann, &mut bob] {
        let (m, push) = client.recv_json_with("push").await;
        assert!(m.compressed, "a large publication goes compressed");
        assert!(
            m.wire_len * 4 < m.data.len(),
            "{} bytes on the wire for {}",
            m.wire_len,
            m.data.len()
        );
        assert_eq!(push["push"]["pub"]["data"], data);
        wires.push(m.wire_len);
    }
    // One compressed message for both (each message is compressed on its own).
    assert_eq!(wires[0], wires[1]);
    server.stop().await;
}

#[tokio::test]
async fn with_compression_off_an_offer_is_declined_and_frames_go_plain() {
    let server = common::start(config(false)).await;
    let mut ann = DeflateClient::open(server.addr, PATH, Some(BROWSER_OFFER)).await;
    assert_eq!(ann.extensions(), None);
    connect(&mut ann, "ann", false).await;
    subscribe(&mut ann, "news:big", false).await;
    let data = big_data();
    common::api_call(
        &server,
        "publish",
        json!({"channel": "news:big", "data": data}),
    )
    .await;
    let (m, push) = ann.recv_json_with("push").await;
    assert!(!m.compressed);
    assert_eq!(push["push"]["pub"]["data"], data);
    // Without the extension, a compressed frame breaks the protocol.
    ann.send_text("{}", true).await;
    assert_eq!(ann.closed().await.code, 1002);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_offers_nothing_gets_nothing_and_works_as_before() {
    let server = common::start(config(true)).await;
    let plain = DeflateClient::open(server.addr, PATH, None).await;
    assert_eq!(plain.extensions(), None);
    // tokio-tungstenite (no deflate) connects, publishes and receives as before.
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("chat:plain").await;
    let data = big_data();
    ann.publish("chat:plain", data.clone()).await;
    assert_eq!(ann.next_pub("chat:plain").await["data"], data);
    server.stop().await;
}

#[tokio::test]
async fn an_offer_limiting_the_server_window_is_declined() {
    let server = common::start(config(true)).await;
    let offer = "permessage-deflate; server_max_window_bits=10";
    let c = DeflateClient::open(server.addr, PATH, Some(offer)).await;
    assert_eq!(c.extensions(), None);
    // The next offer in the list is taken.
    let offers = format!("{offer}, permessage-deflate");
    let c = DeflateClient::open(server.addr, PATH, Some(&offers)).await;
    assert_eq!(c.extensions(), Some(NEGOTIATED));
    server.stop().await;
}

#[tokio::test]
async fn a_fragmented_compressed_message_with_a_ping_between_is_read() {
    let server = common::start(config(true)).await;
    let mut ann = DeflateClient::open(server.addr, PATH, Some(BROWSER_OFFER)).await;
    let cmd = json!({"id": 1, "connect": {"token": common::token("ann"), "name": "test"}});
    let compressed = deflate(cmd.to_string().as_bytes());
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    let mut bytes = frame(0x1, true, false, first);
    bytes.extend(frame(0x9, false, true, b"between"));
    bytes.extend(frame(0x0, false, true, rest));
    ann.send_raw(&bytes).await;
    let (_, reply) = ann.recv_json_with("connect").await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_compressed_message_inflating_past_the_limit_closes_3506() {
    let mut cfg = config(true);
    cfg.limits.max_message_size = 1024;
    let server = common::start(cfg).await;
    let mut ann = DeflateClient::open(server.addr, PATH, Some(BROWSER_OFFER)).await;
    connect(&mut ann, "ann", true).await;
    // A few dozen bytes on the wire, 64 KiB inflated.
    let bomb = format!("[{}]", " ".repeat(64 * 1024));
    ann.send_text(&bomb, true).await;
    assert_eq!(ann.closed().await.code, 3506);
    server.stop().await;
}

#[tokio::test]
async fn data_that_does_not_inflate_closes_1002() {
    let server = common::start(config(true)).await;
    let mut ann = DeflateClient::open(server.addr, PATH, Some(BROWSER_OFFER)).await;
    connect(&mut ann, "ann", true).await;
    // A deflate block of the reserved type 3.
    ann.send_raw(&frame(0x1, true, true, &[0xff, 0xff, 0xff]))
        .await;
    assert_eq!(ann.closed().await.code, 1002);
    server.stop().await;
}

#[tokio::test]
async fn every_websocket_endpoint_negotiates_deflate() {
    let mut cfg = common::pusher::config();
    cfg.websocket.compression = true;
    cfg.websocket.compression_min_size = 0;
    let server = common::start(cfg).await;

    // Protobuf: the connect reply (binary) comes compressed.
    let path = format!("{PATH}?cf_protocol=protobuf");
    let mut pb = DeflateClient::open(server.addr, &path, Some(BROWSER_OFFER)).await;
    assert_eq!(pb.extensions(), Some(NEGOTIATED));
    let connect = Command {
        id: 1,
        connect: Some(wire::ConnectRequest {
            token: common::token("ann"),
            name: "test".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    pb.send(0x2, &common::protobuf::frame(&[connect]), true)
        .await;
    let m = pb.recv().await.expect("connect reply");
    assert!(m.compressed && m.opcode == 0x2);
    let reply = Reply::decode_length_delimited(&m.data[..]).expect("a reply");
    assert!(reply.connect.is_some(), "{reply:?}");

    // uni_websocket: the connect request is the first message.
    let mut uni = DeflateClient::open(
        server.addr,
        "/connection/uni_websocket",
        Some(BROWSER_OFFER),
    )
    .await;
    assert_eq!(uni.extensions(), Some(NEGOTIATED));
    let cmd = json!({"token": common::token("ann"), "name": "test"});
    uni.send_text(&cmd.to_string(), true).await;
    let m = uni.recv().await.expect("connect push");
    assert!(m.compressed);
    assert!(m.json_lines()[0].get("connect").is_some(), "{}", m.text());

    // Socket.IO: the open packet.
    let mut sio = DeflateClient::open(
        server.addr,
        "/socket.io/?EIO=4&transport=websocket",
        Some(BROWSER_OFFER),
    )
    .await;
    assert_eq!(sio.extensions(), Some(NEGOTIATED));
    let m = sio.recv().await.expect("open packet");
    assert!(m.compressed);
    assert!(m.text().starts_with("0{"), "{}", m.text());

    // Pusher: connection_established.
    let path = format!("/app/{}?protocol=7", common::pusher::KEY);
    let mut pusher = DeflateClient::open(server.addr, &path, Some(BROWSER_OFFER)).await;
    assert_eq!(pusher.extensions(), Some(NEGOTIATED));
    let m = pusher.recv().await.expect("connection_established");
    assert!(m.compressed);
    assert!(
        m.text().contains("pusher:connection_established"),
        "{}",
        m.text()
    );
    server.stop().await;
}
