//! The worked examples in examples/ run as documented: their backend (a real process)
//! answers switchboard's proxies with their config.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard::Config;

/// The example backend's process, killed when the test ends.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `examples/messaging/backend.py` on a free port; returns it and its address.
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/messaging");
    let (_backend, addr) = start_backend(&dir);
    let toml = std::fs::read_to_string(dir.join("switchboard.toml"))
        .expect("example config")
        .replace("127.0.0.1:3000", &addr);
    let file = std::env::temp_dir().join(format!("sb-example-{}.toml", std::process::id()));
    std::fs::write(&file, toml).expect("write config");
    let mut config = Config::load(Some(&file), &[]).expect("the example config loads");
    config.bind = "127.0.0.1:0".into();
    config.api_key = API_KEY.into();
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
