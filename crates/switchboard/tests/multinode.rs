//! Several nodes on one real redis-server, or on a real 3-master Redis Cluster, are one
//! gateway: publications, recovery and presence across nodes; a `kill -9`'d node; the
//! server API on every node; a Redis outage and restart (one redis-server).

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::redis::{
    nodes, nodes_with, wait_ready, wait_status, Process, Redis, RedisServer, Topology,
};
use common::*;

/// The next join push of `user` (a subscriber also hears its own join).
async fn next_join_of(c: &mut Client, user: &str) -> Value {
    loop {
        let p = c.next_push().await;
        if p["join"]["info"]["user"] == json!(user) {
            return p;
        }
    }
}

/// Runs each test on one redis-server and on a 3-master Redis Cluster.
macro_rules! on_every_topology {
    ($($name:ident),* $(,)?) => {
        mod standalone {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Topology::Standalone).await;
            })*
        }
        mod cluster {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Topology::Cluster).await;
            })*
        }
    };
}

on_every_topology!(
    a_publication_through_any_node_reaches_every_subscriber_once_in_order,
    a_client_reconnecting_to_another_node_recovers_what_it_missed,
    presence_is_the_same_from_every_node,
    a_killed_nodes_clients_leave_presence_within_the_lease,
    server_api_commands_reach_the_user_on_any_node,
    info_and_channels_cover_every_node,
    a_publish_retried_through_another_node_publishes_once,
    connection_limit_and_user_status_count_every_node,
    a_redis_outage_refuses_publishes_and_a_restart_is_detected_by_clients,
);

async fn publish(server: &TestServer, channel: &str, data: Value) -> Value {
    api_at(
        &server.http_url(""),
        "publish",
        json!({"channel": channel, "data": data}),
    )
    .await
}

/// Nodes that reach Redis over TLS (`rediss://`, the CA from `redis.tls_ca`, a client
/// certificate where Redis requires one) are one gateway; a node that does not trust
/// Redis's certificate is not ready and refuses publishes instead of going plain.
#[tokio::test]
async fn nodes_reach_redis_over_tls_and_refuse_an_untrusted_certificate() {
    let dir = std::env::temp_dir().join(format!("switchboard-redis-tls-{}", std::process::id()));
    let Some((redis, tls_port)) = RedisServer::start_tls(&dir, true) else {
        return;
    };
    let pem = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let url = format!("rediss://localhost:{tls_port}");
    let tls = |c: &mut switchboard::Config| {
        c.redis.url = url.clone();
        c.redis.tls_ca = pem("ca.pem");
        c.redis.tls_cert = pem("client.pem");
        c.redis.tls_key = pem("client.key");
    };
    let nodes = nodes_with(&redis, 2, tls).await;
    let mut alice = Client::connect_user(&nodes[1], "alice").await;
    assert!(alice.subscribe("news:tls").await.get("subscribe").is_some());
    let r = publish(&nodes[0], "news:tls", json!("over tls")).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(alice.next_pub("news:tls").await["data"], json!("over tls"));

    // The system's roots do not include the test CA.
    let mut untrusting = common::redis::config(&redis);
    untrusting.redis.url = url.clone();
    let stranger = start(untrusting).await;
    wait_status(&stranger.http_url(""), 503).await;
    let r = publish(&stranger, "news:tls", json!("lost?")).await;
    assert_eq!(r["error"]["code"], json!(100), "never a silent loss: {r}");
    alice.assert_quiet(Duration::from_millis(300)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn a_publication_through_any_node_reaches_every_subscriber_once_in_order(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 3).await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut c = Client::connect_user(node, &format!("u{i}{j}")).await;
            assert!(c.subscribe("news:room").await.get("subscribe").is_some());
            clients.push(c);
        }
    }
    // One upstream subscription per channel per node, not per client.
    assert_eq!(redis.subscribers("switchboard:{news:room}:c").await, 3);

    for i in 0..12 {
        let r = publish(&nodes[i % 3], "news:room", json!(i)).await;
        assert!(r.get("error").is_none(), "{r}");
    }
    for c in &mut clients {
        for i in 0..12 {
            assert_eq!(c.next_pub("news:room").await["data"], json!(i));
        }
        c.assert_quiet(Duration::from_millis(100)).await;
    }
}

async fn a_client_reconnecting_to_another_node_recovers_what_it_missed(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 3).await;
    let mut c = Client::connect_user(&nodes[0], "ann").await;
    let sub = c.subscribe("chat:r").await;
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    publish(&nodes[1], "chat:r", json!("seen")).await;
    assert_eq!(c.next_pub("chat:r").await["offset"], json!(1));
    c.close().await;
    for i in 0..5 {
        publish(&nodes[1], "chat:r", json!(i)).await;
    }
    let mut c = Client::connect_user(&nodes[2], "ann").await;
    let r = c
        .request(json!({"subscribe": {"channel": "chat:r", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["recovered"], json!(true), "{r}");
    let pubs = r["subscribe"]["publications"].as_array().unwrap();
    let got: Vec<_> = pubs.iter().map(|p| p["data"].clone()).collect();
    assert_eq!(got, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    publish(&nodes[0], "chat:r", json!("live")).await;
    assert_eq!(c.next_pub("chat:r").await["offset"], json!(7));
}

async fn presence_is_the_same_from_every_node(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut ann = Client::connect_user(&nodes[0], "ann").await;
    ann.subscribe("chat:p").await;
    let mut bob = Client::connect_user(&nodes[1], "bob").await;
    bob.subscribe("chat:p").await;
    let mut bob2 = Client::connect_user(&nodes[0], "bob").await;
    bob2.subscribe("chat:p").await;
    // ann, on node 0, hears bob join through node 1.
    next_join_of(&mut ann, "bob").await;
    for node in &nodes {
        let base = node.http_url("");
        let p = api_at(&base, "presence", json!({"channel": "chat:p"})).await;
        assert_eq!(p["result"]["presence"].as_object().unwrap().len(), 3, "{p}");
        let s = api_at(&base, "presence_stats", json!({"channel": "chat:p"})).await;
        assert_eq!(s["result"], json!({"num_clients": 3, "num_users": 2}));
    }
    bob.close().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = api_at(
            &nodes[0].http_url(""),
            "presence_stats",
            json!({"channel": "chat:p"}),
        )
        .await;
        if s["result"] == json!({"num_clients": 2, "num_users": 2}) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_killed_nodes_clients_leave_presence_within_the_lease(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let survivor = nodes(&redis, 1).await.remove(0);
    let mut doomed = Process::start(&redis).await;
    let mut ann = Client::connect_user(&survivor, "ann").await;
    ann.subscribe("chat:k").await;
    let mut bob = Client::connect_url(&doomed.ws_url(), &token("bob")).await;
    assert!(bob.subscribe("chat:k").await.get("subscribe").is_some());
    let join = next_join_of(&mut ann, "bob").await;
    let bob_client = join["join"]["info"]["client"].clone();

    doomed.kill(); // SIGKILL: no graceful leave.
                   // The lease is 600 ms: the survivor's sweep finds bob's entry expired and says so.
    let leave = ann.next_push().await;
    assert_eq!(leave["leave"]["info"]["client"], bob_client, "{leave}");
    let p = api_at(
        &survivor.http_url(""),
        "presence",
        json!({"channel": "chat:k"}),
    )
    .await;
    let present: Vec<_> = p["result"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].clone())
        .collect();
    assert_eq!(present, vec![json!("ann")]);
    // And bob, connected only to the dead node, goes offline once its lease ends.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = api_at(
            &survivor.http_url(""),
            "user_status",
            json!({"users": ["bob"]}),
        )
        .await;
        if s["result"]["statuses"][0]["connections"] == json!(0) {
            assert_eq!(s["result"]["statuses"][0]["online"], json!(false), "{s}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_redis_outage_refuses_publishes_and_a_restart_is_detected_by_clients(topology: Topology) {
    let Some(mut redis) = Redis::start(topology) else {
        return;
    };
    let node = nodes(&redis, 1).await.remove(0);
    let base = node.http_url("");
    let mut c = Client::connect_user(&node, "ann").await;
    let sub = c.subscribe("chat:o").await;
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap().to_owned();
    publish(&node, "chat:o", json!("before")).await;
    assert_eq!(c.next_pub("chat:o").await["offset"], json!(1));

    redis.kill();
    wait_status(&base, 503).await;
    let r = publish(&node, "chat:o", json!("lost?")).await;
    assert_eq!(r["error"]["code"], json!(100), "never a silent loss: {r}");
    let r = c.publish("chat:o", json!("lost?")).await;
    assert_eq!(error_code(&r), Some(100), "{r}");
    assert_eq!(r["error"]["temporary"], json!(true), "{r}");
    let r = c.subscribe("chat:other").await;
    assert_eq!(error_code(&r), Some(100), "{r}");

    // Redis comes back empty: the stream's epoch changes. The node resubscribes, and
    // the next publication tells the subscriber it missed state (3010, reconnect).
    redis.restart();
    wait_ready(&base).await;
    let r = publish(&node, "chat:o", json!("after")).await;
    assert!(r.get("error").is_none(), "{r}");
    let closed = c.closed().await;
    assert_eq!(closed.code, 3010, "{closed:?}");
    let mut c = Client::connect_user(&node, "ann").await;
    let r = c
        .request(json!({"subscribe": {"channel": "chat:o", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], json!(true), "{r}");
    assert_ne!(r["subscribe"]["recovered"], json!(true), "{r}");
    assert_ne!(r["subscribe"]["epoch"], json!(epoch));
    publish(&node, "chat:o", json!("live")).await;
    assert_eq!(c.next_pub("chat:o").await["data"], json!("live"));
}

async fn server_api_commands_reach_the_user_on_any_node(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let a = nodes[0].http_url("");
    let mut ann = Client::connect_user(&nodes[1], "ann").await;

    let r = api_at(
        &a,
        "subscribe",
        json!({"user": "ann", "channel": "news:pushed"}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = ann.next_push().await;
    assert_eq!(push["channel"], json!("news:pushed"), "{push}");
    assert!(push.get("subscribe").is_some(), "{push}");

    let r = api_at(
        &a,
        "unsubscribe",
        json!({"user": "ann", "channel": "news:pushed"}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let push = ann.next_push().await;
    assert!(push.get("unsubscribe").is_some(), "{push}");

    let r = api_at(
        &a,
        "disconnect",
        json!({"user": "ann", "disconnect": {"code": 4001, "reason": "kicked"}}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    let closed = ann.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (4001, "kicked"));
}

async fn info_and_channels_cover_every_node(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut bob = Client::connect_user(&nodes[1], "bob").await;
    bob.subscribe("news:elsewhere").await;
    let a = nodes[0].http_url("");
    // Node 1's record is refreshed every third of the lease (200 ms here).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let info = api_at(&a, "info", json!({})).await;
        let channels = api_at(&a, "channels", json!({})).await;
        let names: Vec<_> = info["result"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].clone())
            .collect();
        let seen = channels["result"]["channels"]["news:elsewhere"]["num_clients"] == json!(1);
        if names.len() == 2 && seen {
            assert!(names.contains(&json!("node-0")) && names.contains(&json!("node-1")));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info} {channels}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_publish_retried_through_another_node_publishes_once(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut ann = Client::connect_user(&nodes[0], "ann").await;
    ann.subscribe("chat:idem").await;
    let req = json!({"channel": "chat:idem", "data": "once", "idempotency_key": "k1"});
    let first = api_at(&nodes[0].http_url(""), "publish", req.clone()).await;
    let retry = api_at(&nodes[1].http_url(""), "publish", req).await;
    assert_eq!(first["result"]["offset"], json!(1), "{first}");
    assert_eq!(retry["result"], first["result"]);
    let other = json!({"channel": "chat:idem", "data": "next", "idempotency_key": "k2"});
    let r = api_at(&nodes[1].http_url(""), "publish", other).await;
    assert_eq!(r["result"]["offset"], json!(2), "{r}");
    assert_eq!(ann.next_pub("chat:idem").await["data"], json!("once"));
    assert_eq!(ann.next_pub("chat:idem").await["data"], json!("next"));
}

async fn connection_limit_and_user_status_count_every_node(topology: Topology) {
    let Some(redis) = Redis::start(topology) else {
        return;
    };
    let nodes = nodes_with(&redis, 2, |c| c.limits.max_connections_per_user = 2).await;
    let ann1 = Client::connect_user(&nodes[0], "ann").await;
    let _ann2 = Client::connect_user(&nodes[1], "ann").await;
    // Asked on node 1: ann has two connections, one on each node.
    let s = api_at(
        &nodes[1].http_url(""),
        "user_status",
        json!({"users": ["ann", "bob"]}),
    )
    .await;
    let statuses = &s["result"]["statuses"];
    assert_eq!(statuses[0]["online"], json!(true), "{s}");
    assert_eq!(statuses[0]["connections"], json!(2), "{s}");
    assert_eq!(statuses[1]["online"], json!(false), "{s}");
    // A third connection, on either node, is over the user's limit of 2.
    let mut third = Client::open(&nodes[0]).await;
    third
        .send_text(&json!({"id": 1, "connect": {"token": token("ann")}}).to_string())
        .await;
    assert_eq!(third.closed().await.code, 3504);
    // Once one leaves, there is room again.
    ann1.close().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut c = Client::open(&nodes[1]).await;
        c.send_text(&json!({"id": 1, "connect": {"token": token("ann")}}).to_string())
            .await;
        let r = c.read().await;
        if r.as_ref().is_ok_and(|r| r.get("connect").is_some()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Socket.IO session over HTTP long-polling (Engine.IO v4) from one client address.
struct PollingSession {
    http: reqwest::Client,
    /// `…/socket.io/?EIO=4&transport=polling&sid=…`
    url: String,
}

impl PollingSession {
    async fn open(base: &str, from: std::net::IpAddr) -> PollingSession {
        let http = reqwest::Client::builder()
            .local_address(from)
            .timeout(TIMEOUT)
            .build()
            .expect("http client");
        let open = http
            .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .expect("handshake")
            .text()
            .await
            .expect("body");
        let handshake: Value = open
            .strip_prefix('0')
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_else(|| panic!("not a handshake: {open}"));
        let sid = handshake["sid"].as_str().expect("sid");
        PollingSession {
            http,
            url: format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}"),
        }
    }

    async fn send(&self, packet: &str) {
        let r = self
            .http
            .post(&self.url)
            .body(packet.to_owned())
            .send()
            .await
            .expect("post");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"), "{packet}");
    }

    /// Long-polls until a packet starting with `prefix` arrives (the client's timeout
    /// bounds each poll).
    async fn until(&self, prefix: &str) -> String {
        loop {
            let r = self.http.get(&self.url).send().await.expect("poll");
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert_eq!(status, 200, "lost the session (not sticky?): {body}");
            if let Some(p) = body.split('\x1e').find(|p| p.starts_with(prefix)) {
                return p.to_owned();
            }
        }
    }
}

/// `user_status` of `user` asked at `base`, once `done` holds for it.
async fn status_when(base: &str, user: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let s = api_at(base, "user_status", json!({"users": [user]})).await;
        let status = s["result"]["statuses"][0].clone();
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn socketio_long_polling_through_the_sticky_nginx_example() {
    let Some(redis) = Redis::start(Topology::Standalone) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let dir = std::env::temp_dir().join(format!("sb-sticky-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = common::nginx::free_port();
    let site = common::nginx::example(
        "several-nodes.conf",
        &[
            (
                "server 10.0.0.11:8000;",
                format!("server {};", nodes[0].addr),
            ),
            (
                "server 10.0.0.12:8000;",
                format!("server {};", nodes[1].addr),
            ),
            ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ],
    );
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Some(nginx) = common::nginx::Nginx::start(&site, &dir, listen).await else {
        return;
    };
    let base = format!("http://{listen}");
    let on_each_node = || nodes.iter().map(|n| n.node.local_status().num_clients);

    // Clients from several addresses (all of 127.0.0.0/8 is loopback) until both nodes
    // hold sessions. Each session's requests must all reach its node: a handshake, the
    // CONNECT, a subscribe, polls.
    let mut sessions = Vec::new();
    for last in 2..=60u8 {
        let s = PollingSession::open(&base, [127, 0, 0, last].into()).await;
        s.send(&format!(
            "40{}",
            json!({"token": token(&format!("u{last}"))})
        ))
        .await;
        s.until("40{").await;
        s.send(&format!("421{}", json!(["subscribe", "chat:lb"])))
            .await;
        let ack = s.until("431[").await;
        assert!(ack.contains("result"), "{ack}");
        sessions.push(s);
        if sessions.len() >= 4 && on_each_node().all(|n| n > 0) {
            break;
        }
    }
    let counts: Vec<_> = on_each_node().collect();
    assert!(
        counts.iter().all(|&n| n > 0),
        "one node got every client: {counts:?}"
    );

    // A publication through the load balancer reaches every session, on either node.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/publish"))
        .header("X-API-Key", API_KEY)
        .body(json!({"channel": "chat:lb", "data": {"n": 1}}).to_string())
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("api through nginx");
    assert_eq!(r.status(), 200);
    for s in &sessions {
        let p = s.until("42[\"publication\"").await;
        assert!(p.contains(r#""data":{"n":1}"#), "{p}");
    }
    nginx.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn typing_crosses_nodes_and_one_user_on_two_nodes_is_throttled_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let nodes = nodes_with(&redis, 2, |c| {
        c.namespaces.insert(
            "typing".into(),
            switchboard::config::NamespaceConfig {
                subscribe: vec!["*".into()],
                publish: true,
                typing: true,
                // Far longer than the test: a second signal is always throttled.
                typing_interval: Duration::from_secs(60),
                typing_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        );
    })
    .await;
    let mut watcher = Client::connect_user(&nodes[1], "w").await;
    watcher.subscribe("typing:42").await;
    let mut on_a = Client::connect_user(&nodes[0], "ann").await;
    let mut on_b = Client::connect_user(&nodes[1], "ann").await;
    for c in [&mut on_a, &mut on_b] {
        c.subscribe("typing:42").await;
    }
    for c in [&mut on_a, &mut on_b] {
        let r = c.publish("typing:42", json!({"typing": true})).await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    // Node a's signal reaches the watcher on node b; node b throttles ann's second
    // device; one of the nodes ends her typing once.
    let start = watcher.next_pub("typing:42").await;
    assert_eq!(start["data"], json!({"typing": true}), "{start}");
    assert_eq!(start["info"]["user"], json!("ann"));
    let stop = watcher.next_pub("typing:42").await;
    assert_eq!(stop["data"], json!({"typing": false}), "{stop}");
    assert_eq!(stop["info"]["user"], json!("ann"));
    watcher.assert_quiet(Duration::from_millis(700)).await;
    // Once ended, she may start again, from either node.
    on_b.publish("typing:42", json!({"typing": true})).await;
    let again = watcher.next_pub("typing:42").await;
    assert_eq!(again["data"], json!({"typing": true}), "{again}");
}

#[tokio::test]
async fn last_seen_is_the_same_from_every_node_and_outlives_a_killed_node() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let survivor = nodes(&redis, 1).await.remove(0);
    let base = survivor.http_url("");
    let mut doomed = Process::start(&redis).await;
    let bob = Client::connect_url(&doomed.ws_url(), &token("bob")).await;
    let _carol = Client::connect_url(&doomed.ws_url(), &token("carol")).await;
    bob.close().await;
    let carol = status_when(&base, "carol", |s| s["online"] == json!(true)).await;
    let first_seen = carol["last_seen"].as_u64().unwrap_or(0);
    assert!(first_seen > 0, "{carol}");
    // While connected she is seen again at every lease refresh (200 ms here; the
    // times have whole seconds).
    status_when(&base, "carol", |s| {
        s["last_seen"].as_u64() > Some(first_seen)
    })
    .await;
    // Bob went offline on the other node: this one knows when. Read after carol's
    // refresh, so that his disconnect's own write (which follows the connection count
    // going to zero) has landed; until then a lease refresh's earlier time shows.
    let bob_seen = status_when(&base, "bob", |s| {
        s["online"] == json!(false) && s["last_seen"].as_u64() > Some(0)
    })
    .await;

    doomed.kill();
    // Carol's connection stops counting when the dead node's lease ends; both times
    // survive the node.
    let carol = status_when(&base, "carol", |s| s["connections"] == json!(0)).await;
    assert_eq!(carol["online"], json!(false), "{carol}");
    assert!(carol["last_seen"].as_u64() > Some(0), "{carol}");
    let bob = status_when(&base, "bob", |_| true).await;
    assert_eq!(bob["last_seen"], bob_seen["last_seen"]);
}

#[tokio::test]
async fn a_killed_nodes_typists_stop_typing_when_their_presence_lease_ends() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let survivor = nodes_with(&redis, 1, |c| {
        c.namespaces.insert(
            "typing".into(),
            switchboard::config::NamespaceConfig {
                subscribe: vec!["*".into()],
                publish: true,
                presence: true,
                typing: true,
                // The stop must come from the lease, not from this timeout.
                typing_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        );
    })
    .await
    .remove(0);
    let mut doomed = Process::start_with(
        &redis,
        "[namespaces.typing]\nsubscribe = [\"*\"]\npublish = true\npresence = true\n\
         typing = true\ntyping_timeout = \"60s\"\n",
    )
    .await;
    let mut watcher = Client::connect_user(&survivor, "w").await;
    watcher.subscribe("typing:k").await;
    let mut bob = Client::connect_url(&doomed.ws_url(), &token("bob")).await;
    bob.subscribe("typing:k").await;
    bob.publish("typing:k", json!({"typing": true})).await;
    assert_eq!(
        watcher.next_pub("typing:k").await["data"],
        json!({"typing": true})
    );
    doomed.kill();
    let stop = watcher.next_pub("typing:k").await;
    assert_eq!(stop["data"], json!({"typing": false}), "{stop}");
    assert_eq!(stop["info"]["user"], json!("bob"));
}
