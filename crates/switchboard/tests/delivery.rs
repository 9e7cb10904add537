//! What a subscription asks of its channel's events, on the wire in JSON and Protobuf:
//! publication filters by tags (`tf`) and fossil deltas (`delta: "fossil"`); and whom a
//! publication skips, which no subscriber sees.

mod common;

use std::time::Duration;

use common::protobuf::{json_of, ProtoClient};
use common::*;
use serde_json::{json, Value};
use switchboard::config::NamespaceConfig;
use switchboard::Config;
use switchboard_protocol::fossil;
use switchboard_protocol::protobuf::wire;

/// The test config with `market`: tags filters allowed, history kept.
fn market_config() -> Config {
    let mut c = config();
    c.namespaces.insert(
        "market".into(),
        NamespaceConfig {
            subscribe: vec!["*".into()],
            history_size: 100,
            history_ttl: Duration::from_secs(3600),
            allow_tags_filter: true,
            ..NamespaceConfig::default()
        },
    );
    c
}

/// AAPL at 100 or more.
fn aapl_filter() -> Value {
    json!({"op": "and", "nodes": [
        {"key": "ticker", "cmp": "eq", "val": "AAPL"},
        {"key": "price", "cmp": "gte", "val": "100"},
    ]})
}

/// Publishes `n` with tags through the server API.
async fn publish_tagged(server: &TestServer, channel: &str, n: u64, tags: Value) {
    let mut params = json!({"channel": channel, "data": {"n": n}});
    if !tags.is_null() {
        params["tags"] = tags;
    }
    let r = api_call(server, "publish", params).await;
    assert!(r.get("error").is_none(), "{r}");
}

/// Seven publications, of which [`aapl_filter`] admits 1, 5 and 7 (2: another ticker,
/// 3: too cheap, 4: no tags at all, 6: a price that is no decimal).
async fn publish_market(server: &TestServer, channel: &str) {
    let tagged = [
        json!({"ticker": "AAPL", "price": "150.25"}),
        json!({"ticker": "MSFT", "price": "300"}),
        json!({"ticker": "AAPL", "price": "99.99"}),
        Value::Null,
        json!({"ticker": "AAPL", "price": "100"}),
        json!({"ticker": "AAPL", "price": "1e9-is-no-number"}),
        json!({"ticker": "AAPL", "price": "100.0"}),
    ];
    for (n, tags) in (1..).zip(tagged) {
        publish_tagged(server, channel, n, tags).await;
    }
}

#[tokio::test]
async fn a_filtered_subscriber_gets_only_matching_publications_live_and_recovered() {
    let server = start(market_config()).await;
    let mut filtered = Client::connect_user(&server, "ann").await;
    let mut plain = Client::connect_user(&server, "bob").await;
    let r = filtered
        .request(json!({"subscribe": {"channel": "market:q", "tf": aapl_filter()}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    plain.subscribe("market:q").await;
    publish_market(&server, "market:q").await;
    let seen = |p: Value| {
        (
            p["data"]["n"].as_u64().unwrap(),
            p["offset"].as_u64().unwrap(),
        )
    };
    assert_eq!(seen(filtered.next_pub("market:q").await), (1, 1));
    assert_eq!(seen(filtered.next_pub("market:q").await), (5, 5));
    assert_eq!(seen(filtered.next_pub("market:q").await), (7, 7));
    for n in 1..=7 {
        assert_eq!(seen(plain.next_pub("market:q").await), (n, n));
    }

    // Recovery from the start of the stream returns only what the filter admits, and
    // still reports the stream recovered: nothing was lost, the rest was filtered.
    let epoch = r["subscribe"]["epoch"].clone();
    let mut late = Client::connect_user(&server, "cat").await;
    let r = late
        .request(json!({"subscribe": {
            "channel": "market:q", "tf": aapl_filter(),
            "recover": true, "offset": 0, "epoch": epoch,
        }}))
        .await;
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], json!(true), "{r}");
    let recovered: Vec<u64> = s["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(recovered, [1, 5, 7]);
    server.stop().await;
}

#[tokio::test]
async fn every_comparison_filters_as_centrifugo_defines_it() {
    let server = start(market_config()).await;
    // Each filter with the publications (of `tags` below, by index) it admits.
    let cases: [(Value, Vec<u64>); 12] = [
        (json!({"key": "t", "cmp": "neq", "val": "a"}), vec![2, 3]),
        (
            json!({"key": "t", "cmp": "in", "vals": ["a", "b"]}),
            vec![1, 2],
        ),
        (
            json!({"key": "t", "cmp": "nin", "vals": ["a", "b"]}),
            vec![3],
        ),
        (json!({"key": "t", "cmp": "ex"}), vec![1, 2]),
        (json!({"key": "t", "cmp": "nex"}), vec![3]),
        (json!({"key": "s", "cmp": "sw", "val": "ab"}), vec![1, 2]),
        (json!({"key": "s", "cmp": "ew", "val": "yz"}), vec![2]),
        (json!({"key": "s", "cmp": "ct", "val": "cd"}), vec![1]),
        (json!({"key": "v", "cmp": "gt", "val": "-1.5"}), vec![1, 2]),
        (json!({"key": "v", "cmp": "lt", "val": "10"}), vec![1]),
        (json!({"key": "v", "cmp": "lte", "val": "10"}), vec![1, 2]),
        (
            json!({"op": "or", "nodes": [
                {"key": "t", "cmp": "eq", "val": "a"},
                {"op": "not", "nodes": [{"key": "t", "cmp": "ex"}]},
            ]}),
            vec![1, 3],
        ),
    ];
    let tags = [
        json!({"t": "a", "s": "abcd", "v": "0"}),
        json!({"t": "b", "s": "abyz", "v": "10.00"}),
        json!({"s": "zz", "v": "x"}),
    ];
    let mut clients = Vec::new();
    for (i, (filter, _)) in cases.iter().enumerate() {
        let mut c = Client::connect_user(&server, &format!("u{i}")).await;
        let r = c
            .request(json!({"subscribe": {"channel": "market:cmp", "tf": filter}}))
            .await;
        assert!(r.get("subscribe").is_some(), "{filter}: {r}");
        c.subscribe("market:end").await;
        clients.push(c);
    }
    for (n, t) in (1..).zip(tags) {
        publish_tagged(&server, "market:cmp", n, t).await;
    }
    // Each client's unfiltered `market:end` follows in its outbox what it was sent
    // of `market:cmp` (one node delivers in publish order): the end of what it got.
    publish_tagged(&server, "market:end", 0, Value::Null).await;
    for ((filter, want), c) in cases.iter().zip(&mut clients) {
        let mut got = Vec::new();
        loop {
            let p = c.next_push().await;
            if p["channel"] == json!("market:end") {
                break;
            }
            if let Some(n) = p["pub"]["data"]["n"].as_u64() {
                got.push(n);
            }
        }
        assert_eq!(&got, want, "{filter}");
    }
    server.stop().await;
}

#[tokio::test]
async fn invalid_or_unallowed_filters_are_refused_with_107_and_the_reason() {
    let mut config = market_config();
    config.limits.tags_filter_max_depth = 2;
    config.limits.tags_filter_max_size = 4;
    let server = start(config).await;
    let mut c = Client::connect_user(&server, "ann").await;
    let leaf = json!({"key": "k", "cmp": "ex"});
    for (channel, tf, message) in [
        (
            "chat:x",
            leaf.clone(),
            "tags filter not allowed in this namespace",
        ),
        (
            "market:x",
            json!({"key": "k", "cmp": "like", "val": "x"}),
            "invalid tags filter: unknown cmp \"like\"",
        ),
        (
            "market:x",
            json!({"op": "not", "nodes": [{"op": "not", "nodes": [leaf]}]}),
            "invalid tags filter: deeper than 2 levels",
        ),
        (
            "market:x",
            json!({"key": "k", "cmp": "in", "vals": ["a", "b", "c", "d"]}),
            "invalid tags filter: larger than 4 nodes and values",
        ),
    ] {
        let r = c
            .request(json!({"subscribe": {"channel": channel, "tf": tf}}))
            .await;
        assert_eq!(error_code(&r), Some(107), "{r}");
        assert_eq!(r["error"]["message"], json!(message));
    }
    // The refusals left no subscription behind: the same channel subscribes fine.
    let r = c.subscribe("market:x").await;
    assert!(r.get("subscribe").is_some(), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn protobuf_subscribers_filter_too() {
    let server = start(market_config()).await;
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    let leaf = |key: &str, cmp: &str, val: &str| wire::FilterNode {
        key: key.into(),
        cmp: cmp.into(),
        val: val.into(),
        ..Default::default()
    };
    let r = c
        .request(wire::Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "market:p".into(),
                tf: Some(wire::FilterNode {
                    op: "and".into(),
                    nodes: vec![leaf("ticker", "eq", "AAPL"), leaf("price", "gte", "100")],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(r.subscribe.is_some(), "{r:?}");
    publish_market(&server, "market:p").await;
    for n in [1, 5, 7] {
        let p = c.next_pub("market:p").await;
        assert_eq!(json_of(&p.data)["n"], json!(n));
    }
    // A malformed one is refused as in JSON.
    let r = c
        .request(wire::Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "market:p2".into(),
                tf: Some(wire::FilterNode {
                    op: "not".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let e = r.error.expect("refused");
    assert_eq!(
        (e.code, e.message.as_str()),
        (107, "invalid tags filter: \"not\" needs exactly one node")
    );
    server.stop().await;
}

#[tokio::test]
async fn whom_a_publication_skips_is_no_tag_clients_see_live_or_in_history() {
    let server = start(market_config()).await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    let ann_id = ann.connect_reply["connect"]["client"].clone();
    ann.subscribe("market:news").await;
    bob.subscribe("market:news").await;
    // Cat's filter would admit any publication still tagged with it, and the last one.
    let mut cat = Client::connect_user(&server, "cat").await;
    let r = cat
        .request(
            json!({"subscribe": {"channel": "market:news", "tf": {"op": "or", "nodes": [
                {"key": "exclude_client", "cmp": "ex"},
                {"key": "event", "cmp": "eq", "val": "end"},
            ]}}}),
        )
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    // As a backend does for `socket.to(room).emit` (and the Socket.IO and Pusher
    // transports for their senders): the server API's tag names whom it skips.
    publish_tagged(
        &server,
        "market:news",
        1,
        json!({"event": "headline", "exclude_client": ann_id}),
    )
    .await;
    publish_tagged(&server, "market:news", 2, json!({"event": "end"})).await;

    assert_eq!(ann.next_pub("market:news").await["data"], json!({"n": 2}));
    assert_eq!(cat.next_pub("market:news").await["data"], json!({"n": 2}));
    let p = bob.next_pub("market:news").await;
    assert_eq!(
        (p["data"].clone(), p["tags"].clone()),
        (json!({"n": 1}), json!({"event": "headline"}))
    );
    let history = bob
        .request(json!({"history": {"channel": "market:news", "limit": -1}}))
        .await;
    let api = api_call(
        &server,
        "history",
        json!({"channel": "market:news", "limit": -1}),
    )
    .await;
    for publications in [
        &history["history"]["publications"],
        &api["result"]["publications"],
    ] {
        assert_eq!(
            publications[0]["tags"],
            json!({"event": "headline"}),
            "{publications}"
        );
    }
    server.stop().await;
}

/// The test config with `doc`: fossil deltas allowed, history kept; and `both`, which
/// also allows tags filters.
fn delta_config() -> Config {
    let mut c = market_config();
    let ns = |filter: bool| NamespaceConfig {
        subscribe: vec!["*".into()],
        history_size: 100,
        history_ttl: Duration::from_secs(3600),
        allowed_delta_types: vec!["fossil".into()],
        allow_tags_filter: filter,
        ..NamespaceConfig::default()
    };
    c.namespaces.insert("doc".into(), ns(false));
    c.namespaces.insert("both".into(), ns(true));
    c
}

/// A document of some size whose `n`th version differs from the previous one in a
/// few bytes.
fn document(n: u64) -> Value {
    let rows: Vec<Value> = (0..40)
        .map(|i| json!({"row": i, "label": format!("item number {i}"), "rev": if i == n % 40 { n } else { 0 }}))
        .collect();
    json!({"version": n, "rows": rows})
}

async fn publish_doc(server: &TestServer, channel: &str, n: u64) {
    let r = api_call(
        server,
        "publish",
        json!({"channel": channel, "data": document(n)}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
}

/// Applies the publications a JSON delta subscriber receives as centrifuge-js does:
/// `data` is a string, the payload's text or a fossil delta of the previous text.
struct JsonDeltas {
    prev: Vec<u8>,
    deltas: usize,
    wire: usize,
}

impl JsonDeltas {
    fn new() -> Self {
        Self {
            prev: Vec::new(),
            deltas: 0,
            wire: 0,
        }
    }

    fn apply(&mut self, publication: &Value) -> Value {
        let text = publication["data"]
            .as_str()
            .expect("delta data is a JSON string");
        self.wire += text.len();
        let full = if publication["delta"] == json!(true) {
            self.deltas += 1;
            fossil::apply(&self.prev, text.as_bytes()).expect("a valid delta")
        } else {
            text.as_bytes().to_vec()
        };
        let value = serde_json::from_slice(&full).expect("JSON payload");
        self.prev = full;
        value
    }
}

#[tokio::test]
async fn fossil_deltas_are_negotiated_and_reconstruct_every_publication_in_json() {
    let server = start(delta_config()).await;
    let mut ann = Client::connect_user(&server, "ann").await;
    let mut bob = Client::connect_user(&server, "bob").await;
    let r = ann
        .request(json!({"subscribe": {"channel": "doc:1", "delta": "fossil"}}))
        .await;
    assert_eq!(r["subscribe"]["delta"], json!(true), "{r}");
    // Bob asks for nothing: he gets the payloads as they are.
    bob.subscribe("doc:1").await;
    for n in 1..=6 {
        publish_doc(&server, "doc:1", n).await;
    }
    let mut deltas = JsonDeltas::new();
    let mut full = 0;
    for n in 1..=6 {
        let p = ann.next_pub("doc:1").await;
        assert_eq!(p["offset"], json!(n));
        assert_eq!(deltas.apply(&p), document(n), "publication {n}");
        let plain = bob.next_pub("doc:1").await;
        assert_eq!(plain["data"], document(n));
        assert!(plain.get("delta").is_none());
        full += plain["data"].to_string().len();
    }
    // The first one is full, the five after it deltas, and much smaller.
    assert_eq!(deltas.deltas, 5);
    assert!(
        deltas.wire * 2 < full,
        "{} bytes of deltas for {full} in full",
        deltas.wire
    );

    // Recovery: the missed publications come as a chain (JSON strings), the first in
    // full, the next a delta of it; the live ones continue the chain.
    let epoch = r["subscribe"]["epoch"].clone();
    let mut cat = Client::connect_user(&server, "cat").await;
    let r = cat
        .request(json!({"subscribe": {
            "channel": "doc:1", "delta": "fossil", "recover": true, "offset": 4, "epoch": epoch,
        }}))
        .await;
    let s = &r["subscribe"];
    assert_eq!(
        (s["delta"].clone(), s["recovered"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    let mut cat_deltas = JsonDeltas::new();
    let recovered = s["publications"].as_array().expect("recovered");
    assert_eq!(recovered.len(), 2, "{r}");
    for (p, n) in recovered.iter().zip(5..) {
        assert_eq!(p["offset"], json!(n));
        assert_eq!(p.get("delta").is_some(), n > 5, "recovered {n}: {p}");
        assert_eq!(cat_deltas.apply(p), document(n));
    }
    publish_doc(&server, "doc:1", 7).await;
    publish_doc(&server, "doc:1", 8).await;
    for n in 7..=8 {
        let p = cat.next_pub("doc:1").await;
        assert_eq!(p["delta"], json!(true), "live {n}: {p}");
        assert_eq!(cat_deltas.apply(&p), document(n));
    }
    assert_eq!(cat_deltas.deltas, 3);
    for n in 7..=8 {
        assert_eq!(deltas.apply(&ann.next_pub("doc:1").await), document(n));
    }
    server.stop().await;
}

#[tokio::test]
async fn deltas_are_refused_or_not_negotiated_where_they_can_not_be_honest() {
    let server = start(delta_config()).await;
    let mut c = Client::connect_user(&server, "ann").await;
    // A namespace that does not allow them, and a subscription with a tags filter:
    // the reply says so (no `delta`), and payloads come as they are.
    for (channel, tf) in [
        ("chat:nodelta", Value::Null),
        ("both:1", json!({"key": "k", "cmp": "nex"})),
    ] {
        let mut sub = json!({"channel": channel, "delta": "fossil"});
        if !tf.is_null() {
            sub["tf"] = tf;
        }
        let r = c.request(json!({"subscribe": sub})).await;
        assert!(r["subscribe"].is_object(), "{r}");
        assert!(r["subscribe"].get("delta").is_none(), "{r}");
        publish_doc(&server, channel, 1).await;
        publish_doc(&server, channel, 2).await;
        for n in 1..=2 {
            let p = c.next_pub(channel).await;
            assert_eq!((p["data"].clone(), p.get("delta")), (document(n), None));
        }
    }
    let r = c
        .request(json!({"subscribe": {"channel": "doc:x", "delta": "xdelta"}}))
        .await;
    assert_eq!(error_code(&r), Some(107), "{r}");
    assert_eq!(
        r["error"]["message"],
        json!("unknown delta type \"xdelta\"")
    );
    server.stop().await;
}

#[tokio::test]
async fn protobuf_subscribers_get_deltas_as_bytes() {
    let server = start(delta_config()).await;
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    let r = c
        .request(wire::Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "doc:pb".into(),
                delta: "fossil".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(r.subscribe.expect("subscribed").delta);
    let mut prev = Vec::new();
    for n in 1..=4 {
        publish_doc(&server, "doc:pb", n).await;
        let p = c.next_pub("doc:pb").await;
        assert_eq!(p.delta, n > 1, "publication {n}");
        let data = if p.delta {
            fossil::apply(&prev, &p.data).expect("a valid delta")
        } else {
            p.data.to_vec()
        };
        assert_eq!(json_of(&data), document(n));
        prev = data;
    }
    server.stop().await;
}

/// Applies a Protobuf delta subscriber's publication to the payload before it, as
/// centrifuge-js does, and returns the payload after it.
fn apply_pb(prev: &[u8], p: &wire::Publication) -> Vec<u8> {
    if p.delta {
        fossil::apply(prev, &p.data).expect("a valid delta")
    } else {
        p.data.to_vec()
    }
}

#[tokio::test]
async fn a_recovering_delta_subscriber_gets_a_chain_that_the_live_stream_continues() {
    let server = start(delta_config()).await;
    let (mut c, _) = ProtoClient::connect(&server, &token("ann")).await;
    let subscribe = |recover: Option<(u64, String)>| wire::Command {
        subscribe: Some(wire::SubscribeRequest {
            channel: "doc:pb".into(),
            delta: "fossil".into(),
            recover: recover.is_some(),
            offset: recover.as_ref().map_or(0, |r| r.0),
            epoch: recover.map(|r| r.1).unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let first = c
        .request(subscribe(None))
        .await
        .subscribe
        .expect("subscribed");
    let mut prev = Vec::new();
    for n in 1..=2 {
        publish_doc(&server, "doc:pb", n).await;
        prev = apply_pb(&prev, &c.next_pub("doc:pb").await);
        assert_eq!(json_of(&prev), document(n));
    }
    // Away while four more are published: the node keeps no delta base for a channel
    // nobody takes deltas of, so the first live delta after the recovery builds on
    // what the recovery read.
    let r = c
        .request(wire::Command {
            unsubscribe: Some(wire::UnsubscribeRequest {
                channel: "doc:pb".into(),
            }),
            ..Default::default()
        })
        .await;
    assert!(r.error.is_none(), "{r:?}");
    for n in 3..=6 {
        publish_doc(&server, "doc:pb", n).await;
    }
    let s = c
        .request(subscribe(Some((2, first.epoch))))
        .await
        .subscribe
        .expect("subscribed");
    assert!(s.delta && s.recovered, "{s:?}");
    let flags: Vec<(u64, bool)> = s.publications.iter().map(|p| (p.offset, p.delta)).collect();
    assert_eq!(flags, [(3, false), (4, true), (5, true), (6, true)]);
    let mut wire_bytes = 0;
    for (p, n) in s.publications.iter().zip(3..) {
        prev = apply_pb(&prev, p);
        assert_eq!(json_of(&prev), document(n), "recovered {n}");
        wire_bytes += p.data.len();
    }
    assert!(
        wire_bytes * 2 < prev.len() * 4,
        "{wire_bytes} bytes for four payloads of {}",
        prev.len()
    );
    for n in 7..=8 {
        publish_doc(&server, "doc:pb", n).await;
        let p = c.next_pub("doc:pb").await;
        assert!(p.delta, "live {n} continues the chain");
        prev = apply_pb(&prev, &p);
        assert_eq!(json_of(&prev), document(n), "live {n}");
    }
    server.stop().await;
}

/// Publishes `{"n": n}` to each `(channel, n)` in one server API batch, which the
/// node fans out back to back: the subscribers' queues fill faster than they drain.
async fn publish_batch(server: &TestServer, publications: impl IntoIterator<Item = (&str, u64)>) {
    let commands: Vec<Value> = publications
        .into_iter()
        .map(|(channel, n)| json!({"publish": {"channel": channel, "data": {"n": n}}}))
        .collect();
    let count = commands.len();
    let r = api_call(server, "batch", json!({"commands": commands})).await;
    let replies = r["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), count);
    assert!(replies.iter().all(|r| r.get("error").is_none()), "{r}");
}

/// A channel with many subscribers has its events queued as runs of its feed (see
/// `feed.rs`), cut by chunk ends, by other channels' events and by replies: every
/// subscriber still gets every publication once, in order, in JSON and in Protobuf,
/// and one who joins late gets the rest.
#[tokio::test]
async fn a_busy_channel_reaches_every_subscriber_once_and_in_order() {
    const BURST: u64 = 300;
    const MIXED: u64 = 30;
    let server = start(config()).await;
    let mut json = Vec::new();
    for i in 0..18 {
        let mut c = Client::connect(&server, &token(&format!("j{i}"))).await;
        for ch in ["news:a", "news:b"] {
            assert!(c.subscribe(ch).await.get("error").is_none());
        }
        json.push(c);
    }
    let mut proto = Vec::new();
    for i in 0..2 {
        let (mut c, _) = ProtoClient::connect(&server, &token(&format!("p{i}"))).await;
        for ch in ["news:a", "news:b"] {
            let r = c
                .request(wire::Command {
                    subscribe: Some(wire::SubscribeRequest {
                        channel: ch.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
            assert!(r.subscribe.is_some(), "{r:?}");
        }
        proto.push(c);
    }
    // A burst to one channel: over chunk ends (64 events) and over what a writer
    // takes at once (256)...
    publish_batch(&server, (1..=MIXED).map(|n| ("news:a", n))).await;
    let mut late = Client::connect(&server, &token("late")).await;
    assert!(late.subscribe("news:a").await.get("error").is_none());
    json.push(late);
    publish_batch(&server, (MIXED + 1..=BURST).map(|n| ("news:a", n))).await;
    // ...a reply in the middle of every queue...
    for c in &mut json {
        let r = c.request(json!({"presence": {"channel": "news:a"}})).await;
        assert!(r.get("error").is_some(), "news keeps no presence: {r}");
    }
    // ...then two channels in turn, each event cutting the other's run.
    publish_batch(
        &server,
        (1..=MIXED).flat_map(|n| [("news:a", BURST + n), ("news:b", n)]),
    )
    .await;
    let upto = |from: u64, to: u64| (from..=to).map(|n| json!(n)).collect::<Vec<_>>();
    let late = json.len() - 1;
    for (i, c) in json.iter_mut().enumerate() {
        let (first, b) = if i == late {
            (MIXED + 1, 0)
        } else {
            (1, MIXED)
        };
        let mut seen = (Vec::new(), Vec::new());
        while seen.0.len() < (BURST + MIXED + 1 - first) as usize || seen.1.len() < b as usize {
            let push = c.next_push().await;
            let n = push["pub"]["data"]["n"].clone();
            match push["channel"].as_str() {
                Some("news:a") => seen.0.push(n),
                Some("news:b") => seen.1.push(n),
                _ => panic!("client {i}: {push}"),
            }
        }
        assert_eq!(seen.0, upto(first, BURST + MIXED), "client {i}");
        assert_eq!(seen.1, upto(1, b), "client {i}");
        c.assert_quiet(Duration::from_millis(50)).await;
    }
    for c in &mut proto {
        let mut seen = (Vec::new(), Vec::new());
        while seen.0.len() < (BURST + MIXED) as usize || seen.1.len() < MIXED as usize {
            let push = c.next_push().await;
            let n = push.r#pub.map(|p| json_of(&p.data)["n"].clone());
            match push.channel.as_str() {
                "news:a" => seen.0.extend(n),
                "news:b" => seen.1.extend(n),
                other => panic!("a push in {other}"),
            }
        }
        assert_eq!(seen.0, upto(1, BURST + MIXED));
        assert_eq!(seen.1, upto(1, MIXED));
    }
    server.stop().await;
}
