//! Lifecycle webhooks, received by a real HTTP endpoint (an axum server in the test)
//! that checks every signature: batching, retries after a 500 and a timeout, ids,
//! debounced online/offline, and a `kill -9`'d node on Redis whose events a survivor
//! reports once.

mod common;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use switchboard::config::WebhookEndpointConfig;
use switchboard::Config;

use common::redis::{self as fixture, Process, RedisServer};
use common::*;

const HOOK_SECRET: &str = "hook-secret";

/// What the endpoint answers to one request.
enum Answer {
    Status(u16),
    /// Answers 200 only after this long (past the node's timeout).
    Stall(Duration),
}

#[derive(Default)]
struct Inbox {
    /// Every request with a valid signature: the status it got (0: stalled) and its
    /// events.
    requests: Mutex<Vec<(u16, Vec<Value>)>>,
    /// Answers of the next requests, first first; then 200.
    script: Mutex<VecDeque<Answer>>,
    /// While set, every request gets 500.
    down: AtomicBool,
    bad_signatures: AtomicUsize,
}

impl Inbox {
    /// Events of the requests answered 2xx, in order.
    fn delivered(&self) -> Vec<Value> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|(s, _)| (200..300).contains(s))
            .flat_map(|(_, e)| e.iter().cloned())
            .collect()
    }

    /// Delivered events, each id once (what a de-duplicating backend keeps).
    fn unique(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.delivered()
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap_or_default().to_owned()))
            .collect()
    }

    fn kinds(&self) -> Vec<String> {
        self.unique()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until the delivered events satisfy `done`.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let events = self.unique();
            if done(&events) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: got {:#?}",
                events
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The backend's check, as docs/webhooks.md shows it.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(given) = headers
        .get("x-switchboard-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    given == want
}

async fn receive(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !signature_ok(&headers, &body) {
        inbox.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let events = serde_json::from_slice::<Value>(&body).unwrap()["events"]
        .as_array()
        .cloned()
        .unwrap();
    let answer = if inbox.down.load(Ordering::SeqCst) {
        Answer::Status(500)
    } else {
        inbox
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Status(200))
    };
    match answer {
        Answer::Status(s) => {
            inbox.requests.lock().unwrap().push((s, events));
            StatusCode::from_u16(s).unwrap()
        }
        Answer::Stall(d) => {
            inbox.requests.lock().unwrap().push((0, events));
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
    }
}

/// A webhook endpoint on 127.0.0.1:0; returns its inbox and URL.
async fn receiver() -> (Arc<Inbox>, String) {
    let inbox = Arc::new(Inbox::default());
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (inbox, url)
}

/// `c` with one endpoint `app` at `url`, quick batches and retries.
fn with_webhook(mut c: Config, url: &str, events: &[&str], namespaces: &[&str]) -> Config {
    c.webhooks.endpoints.insert(
        "app".into(),
        WebhookEndpointConfig {
            url: url.into(),
            secret: HOOK_SECRET.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        },
    );
    c.webhooks.batch_delay = Duration::from_millis(50);
    c.webhooks.min_backoff = Duration::from_millis(50);
    c.webhooks.timeout = Duration::from_secs(1);
    c.user_status.offline_debounce = Duration::from_millis(200);
    c
}

const LIFECYCLE: [&str; 10] = [
    "connect",
    "disconnect",
    "online",
    "offline",
    "occupied",
    "vacated",
    "subscribe",
    "unsubscribe",
    "join",
    "leave",
];

#[tokio::test]
async fn a_clients_life_arrives_signed_in_order_in_batches_with_unique_ids() {
    let (inbox, url) = receiver().await;
    let mut config = with_webhook(config(), &url, &LIFECYCLE, &["chat"]);
    config.webhooks.batch_size = 4;
    // Long enough that the first five events, made within milliseconds, wait for
    // each other.
    config.webhooks.batch_delay = Duration::from_millis(300);
    let server = start(config).await;
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("chat:a").await;
    ann.request(serde_json::json!({"unsubscribe": {"channel": "chat:a"}}))
        .await;
    ann.close().await;
    let want = [
        "connect",
        "online",
        "occupied",
        "subscribe",
        "join",
        "vacated",
        "unsubscribe",
        "leave",
        "disconnect",
        "offline",
    ];
    inbox
        .wait_until("the whole life", |e| e.len() >= want.len())
        .await;
    assert_eq!(inbox.kinds(), want);
    let events = inbox.delivered();
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    let user_events: Vec<&Value> = events.iter().filter(|e| e["user"] == "ann").collect();
    assert_eq!(user_events.len(), 8, "all but occupied/vacated name ann");
    assert!(events.iter().all(|e| e["time_ms"].as_u64().unwrap() > 0));
    assert!(events
        .iter()
        .all(|e| e["node"] == server.node.name.as_str()));
    let client = events[0]["client"].clone();
    assert!(events
        .iter()
        .filter(|e| e["kind"] != "online" && e["kind"] != "offline")
        .filter(|e| !e["channel"].is_string() || e["kind"] == "join")
        .all(|e| e["client"] == client));
    let sizes: Vec<usize> = inbox
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.len())
        .collect();
    assert_eq!(sizes[0], 4, "the first batch waited and filled: {sizes:?}");
    assert!(sizes.iter().all(|n| *n <= 4), "{sizes:?}");
    assert_eq!(inbox.bad_signatures.load(Ordering::SeqCst), 0);
    let disconnect = events.iter().find(|e| e["kind"] == "disconnect").unwrap();
    assert!(disconnect["code"].is_u64(), "{disconnect}");
    assert!(
        events.iter().find(|e| e["kind"] == "offline").unwrap()["last_seen"].as_u64() > Some(0)
    );
    assert_eq!(
        metric(
            &server,
            "switchboard_webhook_events_total{result=\"delivered\"}"
        )
        .await,
        10
    );
}

#[tokio::test]
async fn a_failed_batch_is_sent_again_with_the_same_ids_after_a_500_and_a_timeout() {
    let (inbox, url) = receiver().await;
    inbox.script.lock().unwrap().extend([
        Answer::Status(500),
        Answer::Stall(Duration::from_secs(3)),
        Answer::Status(503),
    ]);
    let mut config = with_webhook(config(), &url, &["connect"], &[]);
    config.webhooks.timeout = Duration::from_millis(300);
    let server = start(config).await;
    let _ann = Client::connect_user(&server, "ann").await;
    inbox.wait_until("delivered", |e| !e.is_empty()).await;
    let requests: Vec<(u16, Vec<String>)> = inbox
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(s, e)| (*s, e.iter().map(|e| e["id"].to_string()).collect()))
        .collect();
    let statuses: Vec<u16> = requests.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [500, 0, 503, 200]);
    assert!(
        requests.iter().all(|(_, ids)| *ids == requests[0].1),
        "every attempt carries the same event: {requests:?}"
    );
    assert_eq!(inbox.unique().len(), 1);
    assert_eq!(
        metric(&server, "switchboard_webhook_retries_total").await,
        3
    );
    assert_eq!(
        metric(
            &server,
            "switchboard_webhook_events_total{result=\"delivered\"}"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_reload_within_the_debounce_is_not_reported_offline() {
    let (inbox, url) = receiver().await;
    let mut config = with_webhook(config(), &url, &["online", "offline"], &[]);
    config.user_status.offline_debounce = Duration::from_millis(800);
    let server = start(config).await;
    let ann = Client::connect_user(&server, "ann").await;
    let second = Client::connect_user(&server, "ann").await;
    inbox.wait_until("online", |e| !e.is_empty()).await;
    ann.close().await;
    second.close().await;
    // A reload: back before the debounce ends.
    let ann = Client::connect_user(&server, "ann").await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(inbox.kinds(), ["online"], "no offline, no second online");
    ann.close().await;
    inbox.wait_until("offline", |e| e.len() >= 2).await;
    assert_eq!(inbox.kinds(), ["online", "offline"]);
}

#[tokio::test]
async fn an_endpoint_that_refuses_with_a_4xx_loses_the_batch_and_it_is_counted() {
    let (inbox, url) = receiver().await;
    inbox.script.lock().unwrap().push_back(Answer::Status(400));
    let server = start(with_webhook(config(), &url, &["connect"], &[])).await;
    let _ann = Client::connect_user(&server, "ann").await;
    eventually_metric(
        &server,
        "switchboard_webhook_events_total{result=\"refused\"}",
        1,
    )
    .await;
    let _bob = Client::connect_user(&server, "bob").await;
    inbox.wait_until("bob", |e| !e.is_empty()).await;
    assert_eq!(inbox.unique()[0]["user"], "bob");
}

#[tokio::test]
async fn a_full_queue_drops_new_events_and_counts_them_without_blocking_clients() {
    let (inbox, url) = receiver().await;
    inbox.down.store(true, Ordering::SeqCst);
    let mut config = with_webhook(config(), &url, &["connect"], &[]);
    config.webhooks.queue_size = 2;
    let server = start(config).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(Client::connect_user(&server, &format!("u{i}")).await);
    }
    eventually_metric(
        &server,
        "switchboard_webhook_events_total{result=\"queue_full\"}",
        3,
    )
    .await;
    inbox.down.store(false, Ordering::SeqCst);
    inbox.wait_until("the two queued", |e| e.len() >= 2).await;
    let users: Vec<Value> = inbox.unique().iter().map(|e| e["user"].clone()).collect();
    assert_eq!(users, ["u0", "u1"]);
}

async fn eventually_metric(server: &TestServer, sample: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = metric(server, sample).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} = {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `[webhooks]` tables of a node process, as `with_webhook` sets them.
fn webhook_toml(url: &str, events: &[&str], namespaces: &[&str]) -> String {
    let list = |l: &[&str]| {
        l.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[user_status]\noffline_debounce = \"200ms\"\n\
         [webhooks]\nbatch_delay = \"50ms\"\nmin_backoff = \"50ms\"\ntimeout = \"1s\"\n\
         [webhooks.endpoints.app]\nurl = \"{url}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [{}]\nnamespaces = [{}]\n",
        list(events),
        list(namespaces)
    )
}

fn count(events: &[Value], kind: &str, key: &str, value: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e[key] == value)
        .count()
}

#[tokio::test]
async fn a_killed_nodes_disconnects_offlines_and_vacated_channels_are_reported_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (inbox, url) = receiver().await;
    let survivor = start(with_webhook(
        fixture::config(&redis),
        &url,
        &LIFECYCLE,
        &["chat"],
    ))
    .await;
    let mut doomed = Process::start_with(&redis, &webhook_toml(&url, &LIFECYCLE, &["chat"])).await;

    let mut ann = Client::connect_user(&survivor, "ann").await;
    ann.subscribe("chat:shared").await;
    let mut carol_here = Client::connect_user(&survivor, "carol").await;
    carol_here.subscribe("chat:carol").await;
    let mut bob = Client::connect_url(&doomed.ws_url(), &token("bob")).await;
    bob.subscribe("chat:shared").await;
    bob.subscribe("chat:solo").await;
    let mut carol_there = Client::connect_url(&doomed.ws_url(), &token("carol")).await;
    carol_there.subscribe("chat:carol").await;
    let bob_client = bob.connect_reply["connect"]["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let carol_there_client = carol_there.connect_reply["connect"]["client"]
        .as_str()
        .unwrap()
        .to_owned();
    inbox
        .wait_until("everyone in", |e| {
            count(e, "subscribe", "user", "carol") == 2 && count(e, "subscribe", "user", "bob") == 2
        })
        .await;
    let before = inbox.unique();
    assert_eq!(
        count(&before, "online", "user", "carol"),
        1,
        "one online for two nodes"
    );
    assert_eq!(count(&before, "occupied", "channel", "chat:shared"), 1);
    assert_eq!(count(&before, "occupied", "channel", "chat:carol"), 1);

    doomed.kill(); // SIGKILL: the node reports nothing more.
    inbox
        .wait_until("the dead node's events", |e| {
            count(e, "disconnect", "client", &bob_client) >= 1
                && count(e, "disconnect", "client", &carol_there_client) >= 1
                && count(e, "offline", "user", "bob") >= 1
                && count(e, "vacated", "channel", "chat:solo") >= 1
        })
        .await;
    // Three more sweeps of the survivor, and time for any stray repeat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = inbox.unique();
    assert_eq!(count(&after, "disconnect", "client", &bob_client), 1);
    assert_eq!(
        count(&after, "disconnect", "client", &carol_there_client),
        1
    );
    let lost = after
        .iter()
        .find(|e| e["kind"] == "disconnect" && e["client"] == bob_client.as_str())
        .unwrap();
    assert_eq!(lost["reason"], "node lost");
    assert_eq!(count(&after, "offline", "user", "bob"), 1);
    assert_eq!(
        count(&after, "offline", "user", "carol"),
        0,
        "carol is still here"
    );
    assert_eq!(count(&after, "vacated", "channel", "chat:solo"), 1);
    assert_eq!(
        count(&after, "vacated", "channel", "chat:shared"),
        0,
        "ann is still in"
    );
    assert_eq!(count(&after, "vacated", "channel", "chat:carol"), 0);
    assert_eq!(
        count(&after, "leave", "client", &bob_client),
        1,
        "bob's presence expired once"
    );

    // Carol leaves her last node: now she is offline, and her channel vacated, once.
    carol_here.close().await;
    inbox
        .wait_until("carol gone", |e| count(e, "offline", "user", "carol") >= 1)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = inbox.unique();
    assert_eq!(count(&end, "offline", "user", "carol"), 1);
    assert_eq!(count(&end, "vacated", "channel", "chat:carol"), 1);
    assert_eq!(inbox.bad_signatures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_redis_queued_events_outlive_their_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (inbox, url) = receiver().await;
    inbox.down.store(true, Ordering::SeqCst);
    let first = start(with_webhook(
        fixture::config(&redis),
        &url,
        &["connect"],
        &[],
    ))
    .await;
    let ann = Client::connect_user(&first, "ann").await;
    inbox.wait_until_attempted(1).await;
    ann.close().await;
    first.stop().await;
    inbox.down.store(false, Ordering::SeqCst);
    // A new node (a restart) finds the queue in Redis and delivers it.
    let second = start(with_webhook(
        fixture::config(&redis),
        &url,
        &["connect"],
        &[],
    ))
    .await;
    inbox.wait_until("ann's connect", |e| !e.is_empty()).await;
    assert_eq!(inbox.unique()[0]["user"], "ann");
    drop(second);
}

impl Inbox {
    /// Waits until `n` requests reached the endpoint, whatever it answered.
    async fn wait_until_attempted(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.requests.lock().unwrap().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "no request came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn publications_of_chosen_namespaces_are_sent_with_their_data_and_publisher() {
    let (inbox, url) = receiver().await;
    let server = start(with_webhook(config(), &url, &["publication"], &["chat"])).await;
    let mut ann = Client::connect_user(&server, "ann").await;
    ann.subscribe("chat:p").await;
    ann.publish("chat:p", serde_json::json!({"text": "hi"}))
        .await;
    for (channel, data) in [("news:n", "not sent"), ("chat:p", "from the API")] {
        let r = api_call(
            &server,
            "publish",
            serde_json::json!({"channel": channel, "data": data}),
        )
        .await;
        assert!(r.get("error").is_none(), "{r}");
    }
    inbox.wait_until("two publications", |e| e.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = inbox.unique();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["data"], serde_json::json!({"text": "hi"}));
    assert_eq!(events[0]["user"], "ann");
    assert_eq!(events[0]["channel"], "chat:p");
    assert_eq!(events[1]["data"], "from the API");
    assert!(events[1].get("user").is_none(), "{}", events[1]);
}

#[tokio::test]
async fn on_two_nodes_a_user_goes_offline_and_a_channel_vacated_only_when_the_last_leaves() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (inbox, url) = receiver().await;
    let kinds = ["online", "offline", "occupied", "vacated"];
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(
            start(with_webhook(
                fixture::config(&redis),
                &url,
                &kinds,
                &["chat"],
            ))
            .await,
        );
    }
    let mut here = Client::connect_user(&nodes[0], "carol").await;
    here.subscribe("chat:c").await;
    let mut there = Client::connect_user(&nodes[1], "carol").await;
    there.subscribe("chat:c").await;
    inbox.wait_until("online, occupied", |e| e.len() >= 2).await;
    here.close().await;
    // Past the debounce (200 ms) and a few webhook batches: nothing, carol is there.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(inbox.kinds(), ["online", "occupied"]);
    there.close().await;
    inbox.wait_until("offline, vacated", |e| e.len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = inbox.kinds();
    got.sort();
    assert_eq!(got, ["occupied", "offline", "online", "vacated"]);
}
