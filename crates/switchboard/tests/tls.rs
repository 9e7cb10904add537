//! Serving `https` and `wss` directly: a real TLS client against the real server with a
//! self-signed certificate made in the test, and certificate reload without restart.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::nginx::{self, Nginx};
use common::{next_text, token, Closed, API_KEY, TIMEOUT};
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::{Config, Server};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A self-signed certificate for `localhost`, as PEM: (certificate, key).
fn self_signed() -> (String, String) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    (made.cert.pem(), made.key_pair.serialize_pem())
}

/// A directory of its own for one test's files.
fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Replaces `path` at once (write beside, then rename), as certificate renewers do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A config serving TLS from `cert.pem` and `key.pem` in `dir`, written from `pair`.
fn tls_config(dir: &Path, pair: &(String, String)) -> Config {
    replace(&dir.join("cert.pem"), &pair.0);
    replace(&dir.join("key.pem"), &pair.1);
    let mut config = common::config();
    config.tls.cert = dir.join("cert.pem");
    config.tls.key = dir.join("key.pem");
    config.tls.reload_interval = Duration::from_millis(50);
    config
}

/// An HTTPS client that trusts only `cert_pem`, reaching `localhost` at `addr`.
fn https_client(cert_pem: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem"))
        .resolve("localhost", addr)
        // Each request opens a connection, so a reloaded certificate is seen.
        .pool_max_idle_per_host(0)
        .timeout(TIMEOUT)
        .build()
        .expect("client")
}

/// A TLS connection to `addr` trusting only `cert_pem`, named `localhost`.
async fn tls_connect(
    cert_pem: &str,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("pem");
    roots.add(cert).expect("root");
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake timeout")
}

#[tokio::test]
async fn health_api_and_websocket_over_tls() {
    let pair = self_signed();
    let dir = dir("serve");
    let mut config = tls_config(&dir, &pair);
    config.limits.max_message_size = 1024;
    let server = common::start(config).await;
    let client = https_client(&pair.0, server.addr);
    let port = server.addr.port();

    let health = client
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .expect("health over https");
    assert_eq!(health.status(), 200);

    let info: Value = client
        .post(format!("https://localhost:{port}/api/info"))
        .header("X-API-Key", API_KEY)
        .body("{}")
        .send()
        .await
        .expect("api over https")
        .json()
        .await
        .expect("json");
    assert!(info["result"]["nodes"].is_array(), "{info}");

    // Plain HTTP on the TLS port gets no answer: the handshake fails and it is closed.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", server.addr))
        .timeout(TIMEOUT)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered on the TLS port");

    let tls = tls_connect(&pair.0, server.addr).await.expect("tls");
    let url = format!("wss://localhost:{port}/connection/websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss upgrade");
    let connect = json!({"id": 1, "connect": {"token": token("alice")}});
    ws.send(Message::text(connect.to_string()))
        .await
        .expect("send");
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await.expect("reply")).unwrap();
    assert_eq!(reply["id"], 1);
    assert!(reply["connect"]["client"].is_string(), "{reply}");

    // A close decided by the server reaches a TLS client that keeps sending, with its
    // code: the lingering close works under TLS too.
    let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
    let big = json!({"id": 2, "publish": {"channel": "chat:x", "data": "x".repeat(4000)}});
    let sending =
        tokio::spawn(
            async move { while sink.send(Message::text(big.to_string())).await.is_ok() {} },
        );
    let closed: Closed = loop {
        if let Err(closed) = next_text(&mut stream).await {
            break closed;
        }
    };
    assert_eq!(closed.code, 3506, "{closed:?}");
    sending.abort();
    server.stop().await;
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_restart() {
    let old = self_signed();
    let dir = dir("reload");
    let server = common::start(tls_config(&dir, &old)).await;
    let url = |addr: SocketAddr| format!("https://localhost:{}/health", addr.port());
    let trusts_old = https_client(&old.0, server.addr);
    assert!(trusts_old.get(url(server.addr)).send().await.is_ok());

    let new = self_signed();
    replace(&dir.join("key.pem"), &new.1);
    replace(&dir.join("cert.pem"), &new.0);

    let trusts_new = https_client(&new.0, server.addr);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if trusts_new.get(url(server.addr)).send().await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A fresh client: the first one could resume its TLS session without a certificate.
    let trusts_old = https_client(&old.0, server.addr);
    assert!(
        trusts_old.get(url(server.addr)).send().await.is_err(),
        "the old certificate is still served"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_broken_replacement_keeps_the_previous_certificate() {
    let pair = self_signed();
    let dir = dir("broken");
    let server = common::start(tls_config(&dir, &pair)).await;
    replace(&dir.join("cert.pem"), "not a certificate");
    // Several reload intervals pass: the server still serves the loaded certificate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = https_client(&pair.0, server.addr);
    let port = server.addr.port();
    let health = client
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .expect("still served");
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_cut_by_the_header_read_timeout_during_the_handshake() {
    let pair = self_signed();
    let dir = dir("silent");
    let mut config = tls_config(&dir, &pair);
    config.network.header_read_timeout = Duration::from_millis(300);
    let server = common::start(config).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf))
        .await
        .expect("a silent TLS client was never cut");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.stop().await;
}

#[tokio::test]
async fn start_refuses_missing_or_mismatched_files_naming_the_key() {
    let pair = self_signed();
    let other = self_signed();
    let dir = dir("refuse");

    let mut config = tls_config(&dir, &pair);
    config.tls.cert = dir.join("missing.pem");
    let e = Server::bind(config)
        .await
        .err()
        .expect("missing cert refused");
    assert!(e.to_string().contains("tls.cert"), "{e}");

    let mut config = tls_config(&dir, &pair);
    config.tls.key = dir.join("missing.pem");
    let e = Server::bind(config)
        .await
        .err()
        .expect("missing key refused");
    assert!(e.to_string().contains("tls.key"), "{e}");

    let mut config = tls_config(&dir, &pair);
    replace(&dir.join("other-key.pem"), &other.1);
    config.tls.key = dir.join("other-key.pem");
    let e = Server::bind(config).await.err().expect("mismatch refused");
    assert!(e.to_string().contains("tls.cert and tls.key"), "{e}");

    let mut config = tls_config(&dir, &pair);
    config.tls.key = PathBuf::new();
    let e = config.validate().expect_err("cert without key refused");
    assert!(e.to_string().contains("tls.key"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Behind nginx terminating TLS: docs/nginx/switchboard.conf as written.

#[tokio::test]
async fn websocket_polling_and_api_through_the_nginx_example() {
    let pair = self_signed();
    let dir = dir("nginx");
    replace(&dir.join("cert.pem"), &pair.0);
    replace(&dir.join("key.pem"), &pair.1);
    let server = common::start(common::config()).await;
    let port = nginx::free_port();
    let site = nginx::example(
        "switchboard.conf",
        &[
            ("server 127.0.0.1:8000;", format!("server {};", server.addr)),
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            (
                "/etc/ssl/switchboard/fullchain.pem",
                dir.join("cert.pem").display().to_string(),
            ),
            (
                "/etc/ssl/switchboard/privkey.pem",
                dir.join("key.pem").display().to_string(),
            ),
        ],
    );
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    let Some(nginx) = Nginx::start(&site, &dir, proxy).await else {
        return;
    };

    let client = https_client(&pair.0, proxy);
    let health = client
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .expect("health through nginx");
    assert_eq!(health.status(), 200);

    // Socket.IO long-polling: the handshake through nginx.
    let open = client
        .get(format!(
            "https://localhost:{port}/socket.io/?EIO=4&transport=polling"
        ))
        .send()
        .await
        .expect("polling through nginx")
        .text()
        .await
        .expect("body");
    assert!(open.starts_with("0{\"sid\""), "{open}");

    // A WebSocket through the upgrade headers: connect, subscribe, and an API publish
    // arrives.
    let tls = tls_connect(&pair.0, proxy).await.expect("tls");
    let url = format!("wss://localhost:{port}/connection/websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss upgrade through nginx");
    let connect = json!({"id": 1, "connect": {"token": token("alice")}});
    ws.send(Message::text(connect.to_string()))
        .await
        .expect("send");
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await.expect("reply")).unwrap();
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let subscribe = json!({"id": 2, "subscribe": {"channel": "news:x"}});
    ws.send(Message::text(subscribe.to_string()))
        .await
        .expect("send");
    let reply: Value = serde_json::from_str(&next_text(&mut ws).await.expect("reply")).unwrap();
    assert_eq!(reply["id"], 2, "{reply}");
    let published = client
        .post(format!("https://localhost:{port}/api/publish"))
        .header("X-API-Key", API_KEY)
        .body(json!({"channel": "news:x", "data": {"n": 1}}).to_string())
        .send()
        .await
        .expect("api through nginx");
    assert_eq!(published.status(), 200);
    let push: Value = serde_json::from_str(&next_text(&mut ws).await.expect("push")).unwrap();
    assert_eq!(push["push"]["pub"]["data"]["n"], 1, "{push}");

    nginx.stop().await;
    server.stop().await;
}
