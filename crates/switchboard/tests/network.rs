//! The front door and the close path: every close the server decides reaches the
//! client with its code, HTTP timeouts, connection caps, rates and byte budgets.
//! Timeouts are set short here; each test only asserts "closed before N x timeout".

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

/// Runs of each close test: the reset the lingering close prevents came 1 run in 3.
const RUNS: usize = 5;

fn short_timeouts() -> switchboard::Config {
    let mut cfg = config();
    cfg.network.header_read_timeout = Duration::from_millis(300);
    cfg.network.body_read_timeout = Duration::from_millis(300);
    cfg.network.close_linger = Duration::from_millis(500);
    cfg
}

/// A connected client with about 2 MB of publications queued towards it, unread: the
/// server's close frame queues behind them, so it is still in the server's send queue
/// when the server is done with the socket (where a reset would discard it).
async fn backlogged(server: &TestServer, user: &str) -> Client {
    let mut c = Client::connect_user(server, user).await;
    let channel = format!("chat:backlog-{user}");
    c.subscribe(&channel).await;
    let payload: std::sync::Arc<serde_json::value::RawValue> =
        serde_json::value::RawValue::from_string(format!("\"{}\"", "y".repeat(16 * 1024)))
            .unwrap()
            .into();
    for _ in 0..128 {
        let opts = switchboard::node::PublishOptions {
            skip_history: true,
            ..Default::default()
        };
        server
            .node
            .publish(&channel, payload.clone(), opts)
            .await
            .unwrap();
    }
    c
}

/// Reads slowly (about 16 MB/s) until the server closes: a client on a slow link.
const SLOW_READ: Duration = Duration::from_millis(1);

#[tokio::test]
async fn flood_close_code_reaches_a_client_that_keeps_sending() {
    let mut cfg = config();
    cfg.limits.command_rate = 5;
    cfg.limits.command_burst = 5;
    cfg.limits.max_protocol_errors = 3;
    let server = start(cfg).await;
    for _ in 0..RUNS {
        let c = Client::connect_user(&server, "ann").await;
        let ping = Message::text(json!({"id": 1, "ping": {}}).to_string());
        let closed = c.keep_sending_until_closed(ping).await;
        assert_eq!(closed.code, 3013, "{closed:?}");
    }
    let c = backlogged(&server, "bob").await;
    let ping = Message::text(json!({"id": 1, "ping": {}}).to_string());
    let closed = c.start_sending(ping).until_closed_slowly(SLOW_READ).await;
    assert_eq!(closed.code, 3013, "{closed:?}");
}

#[tokio::test]
async fn pong_flood_closes_with_3013() {
    let mut cfg = config();
    cfg.limits.command_rate = 5;
    cfg.limits.command_burst = 5;
    cfg.limits.max_protocol_errors = 3;
    let server = start(cfg).await;
    let c = Client::connect_user(&server, "ann").await;
    let closed = c.keep_sending_until_closed(Message::text("{}")).await;
    assert_eq!(closed.code, 3013, "{closed:?}");
    // WebSocket ping frames are metered as well.
    let c = Client::connect_user(&server, "bob").await;
    let closed = c
        .keep_sending_until_closed(Message::Ping(Vec::new().into()))
        .await;
    assert_eq!(closed.code, 3013, "{closed:?}");
}

#[tokio::test]
async fn oversized_frame_close_code_reaches_a_client_that_keeps_sending() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let server = start(cfg).await;
    for _ in 0..RUNS {
        let c = Client::connect_user(&server, "ann").await;
        let big = json!({"id": 5, "publish": {"channel": "chat:x", "data": "x".repeat(4000)}});
        let closed = c
            .keep_sending_until_closed(Message::text(big.to_string()))
            .await;
        assert_eq!(closed.code, 3506, "{closed:?}");
    }
    let c = backlogged(&server, "bob").await;
    let big = json!({"id": 5, "publish": {"channel": "chat:x", "data": "x".repeat(4000)}});
    let closed = c
        .start_sending(Message::text(big.to_string()))
        .until_closed_slowly(SLOW_READ)
        .await;
    assert_eq!(closed.code, 3506, "{closed:?}");
}

/// A frame with its header set by hand, masked as a client's must be.
fn raw_frame(header: FrameHeader, payload: &[u8]) -> Message {
    Message::Frame(Frame::from_payload(header, payload.to_vec().into()))
}

#[tokio::test]
async fn websocket_violations_close_with_rfc_6455_codes() {
    let server = start_default().await;
    let text = |rsv1: bool| FrameHeader {
        rsv1,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut c = Client::connect_user(&server, "ann").await;
    c.send_message(raw_frame(text(false), b"{\"id\":1,\"ping\":{}}\xff"))
        .await;
    assert_eq!(c.closed().await.code, 1007, "invalid UTF-8");
    let mut c = Client::connect_user(&server, "ann").await;
    c.send_message(raw_frame(text(true), b"{\"id\":1,\"ping\":{}}"))
        .await;
    assert_eq!(c.closed().await.code, 1002, "RSV1 without an extension");
    // The Socket.IO endpoint maps them the same way.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("open");
    next_text(&mut ws).await.expect("open packet");
    use futures_util::SinkExt;
    ws.send(raw_frame(text(false), b"40\xff"))
        .await
        .expect("send");
    let closed = loop {
        if let Err(c) = next_text(&mut ws).await {
            break c;
        }
    };
    assert_eq!(closed.code, 1007, "{closed:?}");
}

#[tokio::test]
async fn slow_reader_of_large_publications_is_closed_at_the_byte_limit_and_sees_3008() {
    let mut cfg = config();
    cfg.limits.outbox_size = 100_000;
    cfg.limits.outbox_max_bytes = 256 * 1024;
    // Unmetered, so that the pings below do not close it for flooding first.
    cfg.limits.command_rate = 0;
    let server = start(cfg).await;
    let mut slow = Client::connect_user(&server, "slow").await;
    slow.subscribe("chat:big").await;
    let payload: std::sync::Arc<serde_json::value::RawValue> =
        serde_json::value::RawValue::from_string(format!("\"{}\"", "y".repeat(16 * 1024)))
            .unwrap()
            .into();
    // The client sends pings all along and reads nothing until it is closed: far
    // fewer than `outbox_size` publications fill its 256 KiB (plus socket buffers).
    let sending = slow.start_sending(Message::text("{}"));
    let mut published = 0;
    while server.node.metrics.slow_disconnects.get() == 0 {
        assert!(
            published < 5_000,
            "not closed after {published} publications"
        );
        let opts = switchboard::node::PublishOptions {
            skip_history: true,
            ..Default::default()
        };
        server
            .node
            .publish("chat:big", payload.clone(), opts)
            .await
            .unwrap();
        published += 1;
        tokio::task::yield_now().await;
    }
    // It reads what is queued slowly: the close frame is still in the server's send
    // queue when the server is done with the socket.
    let closed = sending.until_closed_slowly(SLOW_READ).await;
    assert_eq!(closed.code, 3008, "{closed:?}");
    assert_eq!(
        server.node.metrics.outbox_bytes.get(),
        0,
        "budget given back"
    );
}

#[tokio::test]
async fn a_global_outbox_budget_closes_the_largest_backlog() {
    let mut cfg = config();
    cfg.limits.outbox_size = 100_000;
    // A backlog over 1/16 of this (256 KiB) is closed while the budget is exceeded.
    cfg.limits.outbox_max_bytes = 4 * 1024 * 1024;
    cfg.limits.outbox_total_bytes = 512 * 1024;
    let server = start(cfg).await;
    let mut slow = Client::connect_user(&server, "slow").await;
    slow.subscribe("chat:big").await;
    let payload: std::sync::Arc<serde_json::value::RawValue> =
        serde_json::value::RawValue::from_string(format!("\"{}\"", "y".repeat(16 * 1024)))
            .unwrap()
            .into();
    let mut published = 0;
    while server.node.metrics.slow_disconnects.get() == 0 {
        assert!(
            published < 5_000,
            "not closed after {published} publications"
        );
        let opts = switchboard::node::PublishOptions {
            skip_history: true,
            ..Default::default()
        };
        server
            .node
            .publish("chat:big", payload.clone(), opts)
            .await
            .unwrap();
        published += 1;
        tokio::task::yield_now().await;
    }
    assert!(
        server.node.metrics.outbox_bytes.get() <= 512 * 1024 + 17 * 1024,
        "the budget held"
    );
    drop(slow);
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Asserts the server closes `tcp` within `within`, while `drip` keeps sending a byte
/// every 50 ms; returns what the server sent.
async fn closed_within(mut tcp: TcpStream, drip: bool, within: Duration) -> String {
    let read = async {
        let (mut r, mut w) = tcp.split();
        let dripping = async {
            while drip && w.write_all(b"X").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            got = async {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                String::from_utf8_lossy(&got).into_owned()
            } => got,
            () = dripping => unreachable!(),
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the server closed the connection in time")
}

#[tokio::test]
async fn idle_and_dripping_connections_are_closed_by_the_header_timeout() {
    let server = start(short_timeouts()).await;
    // 300 ms header timeout + 500 ms linger: ten times that is a generous bound.
    let bound = Duration::from_secs(8);
    // Idle: connected, nothing sent.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    closed_within(tcp, false, bound).await;
    // A request line and headers dripped a byte at a time.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    closed_within(tcp, true, bound).await;
    // Keep-alive: one request answered, then idle.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(tcp, false, bound).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // Others are served meanwhile.
    let health = reqwest::get(server.http_url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_stalled_api_body_is_cut_by_the_body_timeout() {
    let server = start(short_timeouts()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"channel\""
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let got = closed_within(tcp, false, Duration::from_secs(8)).await;
    assert!(got.starts_with("HTTP/1.1 4"), "an error answer: {got}");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_with_retry_after() {
    let mut cfg = config();
    cfg.network.max_connections = 2;
    cfg.network.close_linger = Duration::from_millis(200);
    let server = start(cfg).await;
    let a = TcpStream::connect(server.addr).await.unwrap();
    let _b = TcpStream::connect(server.addr).await.unwrap();
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let got = tokio::time::timeout(TIMEOUT, read_to_close(&mut refused))
        .await
        .expect("refused at once");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("Retry-After: 1"), "{got}");
    assert!(server.node.metrics.connections_refused.get() >= 1);
    // A slot frees when a connection closes (after its lingering close).
    drop(a);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = tokio::time::timeout(TIMEOUT, read_to_close(&mut tcp))
            .await
            .expect("answered");
        if got.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot freed: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Attempts made past a burst: a refill takes a second, so at least one of these is
/// refused unless every attempt took over a second.
const ATTEMPTS: usize = 3;

#[tokio::test]
async fn per_ip_connection_and_handshake_rates_refuse_with_503() {
    let mut cfg = config();
    cfg.network.connection_rate_per_ip = 1;
    cfg.network.connection_burst_per_ip = 3;
    let server = start(cfg).await;
    // Connected first, asked afterwards: the refusal is written at accept.
    let mut conns = Vec::new();
    for _ in 0..3 + ATTEMPTS {
        conns.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut answers = Vec::new();
    for tcp in &mut conns {
        let _ = tcp
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let got = tokio::time::timeout(TIMEOUT, read_to_close(tcp))
            .await
            .expect("answered");
        answers.push(got.get(..12).unwrap_or_default().to_owned());
    }
    assert_eq!(answers[..3], ["HTTP/1.1 200"; 3], "{answers:?}");
    assert!(
        answers[3..].contains(&"HTTP/1.1 503".to_owned()),
        "{answers:?}"
    );

    let mut cfg = config();
    cfg.network.handshake_rate_per_ip = 1;
    cfg.network.handshake_burst_per_ip = 2;
    let server = start(cfg).await;
    let _a = Client::open(&server).await;
    let polling = server.http_url("/socket.io/?EIO=4&transport=polling");
    let handshake = reqwest::get(&polling).await.unwrap();
    assert_eq!(handshake.status(), 200);
    let mut refused = None;
    for _ in 0..ATTEMPTS {
        let r = reqwest::get(&polling).await.unwrap();
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a polling handshake over the rate is refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let mut ws_refused = false;
    for _ in 0..ATTEMPTS {
        if let Err(tokio_tungstenite::tungstenite::Error::Http(r)) =
            tokio_tungstenite::connect_async(server.ws_url()).await
        {
            assert_eq!(r.status(), 503);
            ws_refused = true;
            break;
        }
    }
    assert!(ws_refused, "a WebSocket over the rate is refused");
    // Other routes are not handshakes.
    let health = reqwest::get(server.http_url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn tokenless_socketio_sessions_are_capped_until_they_join() {
    let mut cfg = config();
    cfg.network.max_pending_sessions = 2;
    let server = start(cfg).await;
    let url = server.http_url("/socket.io/?EIO=4&transport=polling");
    let open = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };
    let (s1, first) = open(url.clone()).await;
    let (s2, _) = open(url.clone()).await;
    let (s3, _) = open(url.clone()).await;
    assert_eq!([s1, s2, s3], [200, 200, 503]);
    // The first one joins with a token: it is no longer pending, a slot frees.
    let sid = serde_json::from_str::<serde_json::Value>(&first[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = reqwest::Client::new()
        .post(format!("{url}&sid={sid}"))
        .body(format!("40{}", json!({"token": token("ann")})))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let (s4, _) = open(url.clone()).await;
    assert_eq!(s4, 200);
}

/// The server binary under a low open-files limit, with the connection cap set above
/// it, so that accept runs out of descriptors.
struct LowFdServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for LowFdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn low_fd_server(nofile: u32) -> LowFdServer {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={nofile}:{nofile}"))
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("SWITCHBOARD_BIND", addr.to_string())
        .env("SWITCHBOARD_TOKEN_HMAC_SECRET", SECRET)
        .env("SWITCHBOARD_NETWORK__MAX_CONNECTIONS", "100000")
        .env("SWITCHBOARD_NETWORK__HEADER_READ_TIMEOUT", "60s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prlimit (util-linux) runs the server");
    let server = LowFdServer { child, addr };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while reqwest::get(format!("http://{addr}/health")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

#[tokio::test]
async fn out_of_descriptors_clients_are_refused_not_left_waiting() {
    let server = low_fd_server(40).await;
    // Idle connections hold descriptors for the whole (60 s) header timeout.
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Those past the limit are answered 503 promptly, not after the header timeout.
    let mut refused = 0;
    for tcp in &mut held {
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await
        {
            if buf[..n].starts_with(b"HTTP/1.1 503") {
                refused += 1;
            }
        }
    }
    assert!(refused >= 1, "no connection was refused");
    // Once descriptors are free again, the server serves as before.
    drop(held);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let health = reqwest::get(format!("http://{}/health", server.addr)).await;
        if health.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not serving again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
