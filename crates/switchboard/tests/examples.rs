//! The worked examples in examples/ run as documented: their backend (a real process)
//! answers switchboard's proxies with their config.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::auth::MintClaims;
use switchboard::Config;

/// The example backend's process, killed when the test ends.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The directory of the example `name`.
fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// The example's `switchboard.toml`, pointed at the backend on `addr`, on 127.0.0.1:0.
fn example_config(dir: &Path, addr: &str) -> Config {
    let toml = std::fs::read_to_string(dir.join("switchboard.toml"))
        .expect("example config")
        .replace("127.0.0.1:3000", addr);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    let file = std::env::temp_dir().join(format!("sb-example-{name}-{}.toml", std::process::id()));
    std::fs::write(&file, toml).expect("write config");
    let mut config = Config::load(Some(&file), &[]).expect("the example config loads");
    config.bind = "127.0.0.1:0".into();
    config.api_key = API_KEY.into();
    config
}

/// Starts the example's `backend.py` on a free port; returns it and its address.
fn start_backend(dir: &Path) -> (Backend, String) {
    let mut child = Command::new("python3")
        .arg(dir.join("backend.py"))
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the example backend");
    let stdout = child.stdout.take().expect("stdout");
    let backend = Backend(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the backend prints its port");
    let port: u16 = line.trim().parse().expect("a port");
    (backend, format!("127.0.0.1:{port}"))
}

#[tokio::test]
async fn messaging_example_membership_lives_in_the_app_backend() {
    let dir = example("messaging");
    let (_backend, addr) = start_backend(&dir);
    let mut config = example_config(&dir, &addr);
    config
        .namespaces
        .get_mut("conversation")
        .expect("namespace")
        .sub_refresh_interval = Duration::from_millis(200);
    let server = start(config).await;

    let open = |sid: &str| format!("session={sid}");
    let mut alice = Client::open_with_headers(&server, &[("Cookie", &open("sid-alice"))]).await;
    assert!(alice
        .request(json!({"connect": {}}))
        .await
        .get("connect")
        .is_some());
    let mut bob = Client::open_with_headers(&server, &[("Cookie", &open("sid-bob"))]).await;
    assert!(bob
        .request(json!({"connect": {}}))
        .await
        .get("connect")
        .is_some());
    let mut carol = Client::open_with_headers(&server, &[("Cookie", &open("sid-carol"))]).await;
    assert!(carol
        .request(json!({"connect": {}}))
        .await
        .get("connect")
        .is_some());
    let mut stranger = Client::open_with_headers(&server, &[("Cookie", "session=forged")]).await;
    let refused = stranger.request(json!({"connect": {}})).await;
    assert_eq!(refused["error"]["code"], 4401, "{refused}");

    // join:conversation is a subscribe the backend decides.
    assert!(alice
        .subscribe("conversation:c1")
        .await
        .get("subscribe")
        .is_some());
    assert!(bob
        .subscribe("conversation:c1")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(
        error_code(&carol.subscribe("conversation:c1").await),
        Some(103)
    );

    // A message goes through the backend, which stores it and names its event.
    let sent = alice
        .publish("conversation:c1", json!({"content": " hello "}))
        .await;
    assert!(sent.get("publish").is_some(), "{sent}");
    let message = bob.next_pub("conversation:c1").await;
    assert_eq!(message["data"]["content"], "hello");
    assert_eq!(message["data"]["senderId"], "alice");
    assert_eq!(message["tags"]["event"], "message:new");

    // Client events with an answer are RPC methods of the backend.
    let members = alice
        .request(json!({"rpc": {"method": "conversation:members", "data": "c1"}}))
        .await;
    assert_eq!(members["rpc"]["data"], json!(["alice", "bob"]));

    // Removed from the conversation in the app: unsubscribed at the next check.
    reqwest::Client::new()
        .post(format!("http://{addr}/admin/remove"))
        .json(&json!({"user": "bob", "conversation": "c1"}))
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("remove member");
    let push = loop {
        let p = bob.next_push().await;
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(push["channel"], "conversation:c1");
    assert_eq!(push["unsubscribe"]["code"], 2501);
    assert_eq!(
        error_code(&bob.subscribe("conversation:c1").await),
        Some(103)
    );
}

async fn login(server: &TestServer, cookie: &str) -> (Client, serde_json::Value) {
    let mut c = Client::open_with_headers(server, &[("Cookie", cookie)]).await;
    let reply = c.request(json!({"connect": {}})).await;
    (c, reply)
}

#[tokio::test]
async fn audits_example_admins_by_role_auditors_by_assignment() {
    let dir = example("audits");
    let (_backend, addr) = start_backend(&dir);
    let server = start(example_config(&dir, &addr)).await;
    let session = |s: &str| format!("next-auth.session-token={s}");

    let (mut ann, reply) = login(&server, &session("s-ann")).await;
    assert!(reply.get("connect").is_some(), "{reply}");
    let (mut abe, _) = login(&server, &session("s-abe")).await;
    let (mut eve, _) = login(&server, &session("s-eve")).await;

    // The admin role (from the connect proxy) opens any observation; the backend
    // would refuse observation 123 to everyone.
    assert!(ann
        .subscribe("observation:123")
        .await
        .get("subscribe")
        .is_some());
    assert!(abe
        .subscribe("observation:9")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(
        error_code(&abe.subscribe("observation:123").await),
        Some(103)
    );
    assert!(eve
        .subscribe("observation:3")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(error_code(&eve.subscribe("observation:9").await), Some(103));

    // Who else views observation 9, with the info the backend gave.
    assert!(ann
        .subscribe("observation:9")
        .await
        .get("subscribe")
        .is_some());
    let presence = abe
        .request(json!({"presence": {"channel": "observation:9"}}))
        .await;
    let mut roles: Vec<String> = presence["presence"]["presence"]
        .as_object()
        .expect("presence")
        .values()
        .map(|i| {
            i["conn_info"]["role"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    roles.sort();
    assert_eq!(roles, vec!["admin", "auditor"]);

    let mut nobody = Client::open_with_headers(&server, &[("Cookie", "other=1")]).await;
    nobody.send_text(r#"{"id":1,"connect":{}}"#).await;
    let closed = nobody.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4501, "not logged in")
    );
}

#[tokio::test]
async fn devices_example_one_token_grants_a_set_of_channels() {
    let dir = example("devices");
    let mut config = example_config(&dir, "unused");
    config.token_hmac_secret = SECRET.into();
    let server = start(config).await;

    let admin = token_with(&MintClaims {
        sub: "ann".into(),
        roles: vec!["admin".into()],
        tenant: Some("acme".into()),
        channels: vec!["device:acme.*".into()],
        ..MintClaims::default()
    });
    let mut ann = Client::connect(&server, &admin).await;
    let subs = ann.connect_reply["connect"]["subs"].clone();
    assert!(subs["tenant:acme"].is_object(), "{subs}");
    assert!(
        subs.get("device:acme.*").is_none(),
        "a pattern is not joined: {subs}"
    );
    assert!(ann
        .subscribe("device:acme.5")
        .await
        .get("subscribe")
        .is_some());
    assert!(ann
        .subscribe("device:acme.77")
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(
        error_code(&ann.subscribe("device:other.1").await),
        Some(103)
    );
    assert!(ann
        .subscribe("observation:1")
        .await
        .get("subscribe")
        .is_some());

    let operator = token_with(&MintClaims {
        sub: "joe".into(),
        channels: vec!["device:acme.17".into()],
        ..MintClaims::default()
    });
    let mut joe = Client::connect(&server, &operator).await;
    assert!(joe.connect_reply["connect"]["subs"]["device:acme.17"].is_object());
    assert_eq!(
        error_code(&joe.subscribe("device:acme.18").await),
        Some(103)
    );
    assert_eq!(error_code(&joe.subscribe("observation:1").await), Some(103));

    // A subscription token with a pattern grants the same way.
    let grant = token_with(&MintClaims {
        sub: "joe".into(),
        channel: Some("device:acme.*".into()),
        ..MintClaims::default()
    });
    let reply = joe
        .request(json!({"subscribe": {"channel": "device:acme.18", "token": grant}}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
}

#[tokio::test]
async fn devices_example_backend_records_status_and_last_seen_through_webhooks() {
    let dir = example("devices");
    let (_backend, addr) = start_backend(&dir);
    let mut config = example_config(&dir, &addr);
    config.token_hmac_secret = SECRET.into();
    config.user_status.offline_debounce = Duration::from_millis(200);
    let server = start(config).await;
    let devices = || async {
        reqwest::get(format!("http://{addr}/devices"))
            .await
            .expect("the backend answers")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    };
    let wait_for = |device: &'static str, status: &'static str| async move {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let all = devices().await;
            if all[device]["status"] == status {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{device} not {status}: {all}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let player = token_with(&MintClaims {
        sub: "acme.17".into(),
        channels: vec!["device:acme.17".into()],
        ..MintClaims::default()
    });
    let device = Client::connect(&server, &player).await;
    // An operator is a user, not a device: the backend ignores them.
    let _joe = Client::connect(&server, &token("joe")).await;
    let online = wait_for("acme.17", "online").await;
    let seen_online = online["acme.17"]["lastSeen"].as_u64().expect("lastSeen");
    assert!(seen_online > 0);
    assert_eq!(online["acme.18"]["status"], "unknown");
    assert!(online.get("joe").is_none(), "{online}");
    device.close().await;
    let offline = wait_for("acme.17", "offline").await;
    assert!(offline["acme.17"]["lastSeen"].as_u64() >= Some(seen_online - 1000));
}
