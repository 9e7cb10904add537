//! Several Pusher apps on one server, with real WebSocket clients and signed HTTP API
//! calls: each app's clients, HTTP API and users reach its own channels only, under
//! the same Pusher names, and the other protocols reach each app's channels through
//! its namespaces; subscription counts in the apps that ask for them, on one node and
//! across nodes on a real redis-server.

mod common;

use std::time::Duration;

use common::pusher::{
    add_first, add_shop, api_of, api_signed, config_with_shop, data, App, PusherClient, FIRST, SHOP,
};
use common::redis::RedisServer;
use common::{api_call, start, Client, TestServer};
use serde_json::{json, Value};
use switchboard::Config;

/// Triggers `name` with `data` into `channels` through `app`'s HTTP API.
async fn trigger(server: &TestServer, app: App, channels: &[&str], name: &str, data: &str) {
    let body = json!({"name": name, "channels": channels, "data": data});
    let (status, text) = api_of(server, app, "POST", "/events", &[], Some(&body)).await;
    assert_eq!((status, text.as_str()), (200, "{}"), "{channels:?}");
}

/// The next event `name`'s data string, on `channel`.
async fn next_data(c: &mut PusherClient, name: &str, channel: &str) -> Value {
    let m = c.next_named(name).await;
    assert_eq!(m["channel"], channel, "{m}");
    m["data"].clone()
}

/// The channels `app`'s HTTP API lists.
async fn listed(server: &TestServer, app: App) -> Vec<String> {
    let (status, text) = api_of(server, app, "GET", "/channels", &[], None).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    let mut names: Vec<String> = v["channels"]
        .as_object()
        .expect("channels")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn two_apps_with_the_same_channel_names_never_see_each_others_events() {
    let server = start(config_with_shop()).await;
    let mut a = PusherClient::connect_to(&server, FIRST).await;
    let mut a2 = PusherClient::connect_to(&server, FIRST).await;
    let mut s = PusherClient::connect_to(&server, SHOP).await;
    for c in [&mut a, &mut a2, &mut s] {
        let ok = c.subscribe("orders", None, None).await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ok}"
        );
        c.subscribe_private("private-chat").await;
    }
    let only = a.subscribe("first-only", None, None).await;
    assert_eq!(only["event"], "pusher_internal:subscription_succeeded");
    let only = s.subscribe("shop-only", None, None).await;
    assert_eq!(only["event"], "pusher_internal:subscription_succeeded");

    // Each app's HTTP API reaches its own subscribers of `orders`: the first app's
    // clients get its two events in a row, the shop's client its own only.
    trigger(&server, FIRST, &["orders"], "e", "first-1").await;
    trigger(&server, SHOP, &["orders"], "e", "shop-1").await;
    trigger(&server, FIRST, &["orders"], "e", "first-2").await;
    assert_eq!(next_data(&mut a, "e", "orders").await, "first-1");
    assert_eq!(next_data(&mut a, "e", "orders").await, "first-2");
    assert_eq!(next_data(&mut s, "e", "orders").await, "shop-1");
    trigger(&server, SHOP, &["orders"], "e", "shop-2").await;
    assert_eq!(next_data(&mut s, "e", "orders").await, "shop-2");

    // A client event stays in its app's `private-chat`.
    a.send("client-typing", Some("private-chat"), json!({"who": "a"}))
        .await;
    assert_eq!(
        data(&a2.next_named("client-typing").await),
        json!({"who": "a"})
    );
    trigger(&server, SHOP, &["private-chat"], "e", "shop-3").await;
    let m = s.next_event().await;
    assert_eq!(
        (m["event"].as_str(), m["data"].as_str()),
        (Some("e"), Some("shop-3")),
        "{m}"
    );

    // Presence: the shop's `presence-room` has its own members.
    let members = a.join("presence-room", "1", "Al").await;
    assert_eq!(members["ids"], json!(["1"]));
    let members = s.join("presence-room", "2", "Sy").await;
    assert_eq!(
        members["ids"],
        json!(["2"]),
        "the first app's member is not here"
    );
    trigger(&server, FIRST, &["orders"], "e", "first-3").await;
    let m = a.next_event().await;
    assert_eq!(
        m["data"], "first-3",
        "no member_added from the other app: {m}"
    );

    // Each app's HTTP API lists its own channels, under their Pusher names.
    assert_eq!(
        listed(&server, FIRST).await,
        ["first-only", "orders", "presence-room", "private-chat"]
    );
    assert_eq!(
        listed(&server, SHOP).await,
        ["orders", "presence-room", "private-chat", "shop-only"]
    );

    // Neither reaches the other's channels by their switchboard names.
    let m = a.subscribe("shop:orders", None, None).await;
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    assert_eq!(data(&m)["status"], 404, "{m}");
    let body = json!({"name": "e", "channels": ["shop:orders"], "data": "x"});
    let (status, _) = api_of(&server, FIRST, "POST", "/events", &[], Some(&body)).await;
    assert_eq!(status, 400, "the shop app's channel");
    // An app's path needs that app's signature; an unknown app is 404.
    let now = switchboard::auth::now_secs();
    let first_path = format!("/apps/{}/events", FIRST.id);
    let (status, text) =
        api_signed(&server, "POST", &first_path, &[], Some(&body), now, SHOP).await;
    assert_eq!(status, 401, "{text}");
    let (status, _) = api_signed(
        &server,
        "POST",
        "/apps/9/events",
        &[],
        Some(&body),
        now,
        SHOP,
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn other_protocols_reach_each_apps_channels_through_its_namespaces() {
    let server = start(config_with_shop()).await;
    let mut a = PusherClient::connect_to(&server, FIRST).await;
    let mut s = PusherClient::connect_to(&server, SHOP).await;
    for c in [&mut a, &mut s] {
        let ok = c.subscribe("orders", None, None).await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ok}"
        );
        c.subscribe_private("private-chat").await;
    }
    // The shop's `orders` is `shop:orders`, its `private-chat` `shop_private:chat`.
    let mut cf = Client::connect_user(&server, "ann").await;
    cf.subscribe("shop:orders").await;
    trigger(&server, SHOP, &["orders"], "e", "{\"n\":1}").await;
    assert_eq!(cf.next_pub("shop:orders").await["data"], json!({"n": 1}));
    assert_eq!(data(&s.next_named("e").await), json!({"n": 1}));
    for (channel, pusher) in [
        ("shop:orders", "orders"),
        ("shop_private:chat", "private-chat"),
    ] {
        let r = api_call(
            &server,
            "publish",
            json!({"channel": channel, "data": {"via": "api"}, "tags": {"event": "api"}}),
        )
        .await;
        assert!(r.get("result").is_some(), "{r}");
        let m = s.next_named("api").await;
        assert_eq!(m["channel"], pusher, "{m}");
    }
    // The first app's clients got none of it: the first event they see is theirs.
    trigger(&server, FIRST, &["orders"], "mine", "1").await;
    assert_eq!(a.next_event().await["event"], "mine");
    server.stop().await;
}

#[tokio::test]
async fn each_apps_users_are_its_own() {
    let server = start(config_with_shop()).await;
    let mut a = PusherClient::connect_to(&server, FIRST).await;
    let mut s = PusherClient::connect_to(&server, SHOP).await;
    let user_data = json!({"id": "7"}).to_string();
    for c in [&mut a, &mut s] {
        let ok = c.signin(&user_data).await;
        assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
        // The signed-in user's own channel: `shop_user` has no rules, the sign-in is
        // what admits it.
        let m = c.subscribe("#server-to-user-7", None, None).await;
        assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
    }
    // The shop's user 7 is switchboard's `shop:7`, with its channel `shop_user:7`.
    trigger(&server, SHOP, &["#server-to-user-7"], "notice", "for-shop").await;
    assert_eq!(
        next_data(&mut s, "notice", "#server-to-user-7").await,
        "for-shop"
    );
    let r = api_call(
        &server,
        "publish",
        json!({"channel": "shop_user:7", "data": "via-api", "tags": {"event": "notice"}}),
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    assert_eq!(
        next_data(&mut s, "notice", "#server-to-user-7").await,
        "via-api"
    );

    // The first app may not sign in, nor terminate, the shop's user.
    let mut other = PusherClient::connect_to(&server, FIRST).await;
    let refused = other.signin(&json!({"id": "shop:7"}).to_string()).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 103, "{refused}");
    let path = "/users/shop:7/terminate_connections";
    let (status, _) = api_of(&server, FIRST, "POST", path, &[], Some(&json!({}))).await;
    assert_eq!(status, 400);

    // The shop's terminate_connections closes the shop's user 7, not the first app's.
    let path = "/users/7/terminate_connections";
    let (status, _) = api_of(&server, SHOP, "POST", path, &[], Some(&json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(s.closed().await.code, 4009);
    trigger(
        &server,
        FIRST,
        &["#server-to-user-7"],
        "notice",
        "still-here",
    )
    .await;
    assert_eq!(
        next_data(&mut a, "notice", "#server-to-user-7").await,
        "still-here"
    );
    server.stop().await;
}

/// The shop's subscription counts on, told every 20 ms.
fn counting(c: &mut Config) {
    let shop = c.pusher.apps.get_mut("shop").expect("the shop app");
    shop.subscription_count = true;
    c.pusher.subscription_count_interval = Duration::from_millis(20);
}

/// Reads `pusher_internal:subscription_count` events until `channel`'s count is
/// `want` (a new subscriber may hear a count twice; other nodes' counts arrive with
/// their heartbeats); returns the channels of the counts read on the way.
async fn count_reaches(c: &mut PusherClient, channel: &str, want: u64) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let m = c.next_named("pusher_internal:subscription_count").await;
        let n = data(&m)["subscription_count"].as_u64().expect("a count");
        let ch = m["channel"].as_str().expect("channel").to_owned();
        if ch == channel && n == want {
            return seen;
        }
        seen.push(ch);
    }
}

#[tokio::test]
async fn subscription_counts_are_told_in_the_apps_that_ask_for_them() {
    let mut config = config_with_shop();
    counting(&mut config);
    let server = start(config).await;
    let mut s1 = PusherClient::connect_to(&server, SHOP).await;
    let ok = s1.subscribe("orders", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    count_reaches(&mut s1, "orders", 1).await;
    let mut s2 = PusherClient::connect_to(&server, SHOP).await;
    let ok = s2.subscribe("orders", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    count_reaches(&mut s2, "orders", 2).await;
    count_reaches(&mut s1, "orders", 2).await;
    // Every protocol's connections count; private channels are counted too.
    let mut cf = Client::connect_user(&server, "ann").await;
    cf.subscribe("shop:orders").await;
    count_reaches(&mut s1, "orders", 3).await;
    s1.subscribe_private("private-chat").await;
    count_reaches(&mut s1, "private-chat", 1).await;

    // Presence channels are not counted (members are), nor the first app's channels:
    // the round that tells the shop's next change would have told them first.
    let members = s1.join("presence-room", "1", "Al").await;
    assert_eq!(members["count"], 1);
    let mut a = PusherClient::connect_to(&server, FIRST).await;
    let ok = a.subscribe("orders", None, None).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    s2.close().await;
    let seen = count_reaches(&mut s1, "orders", 2).await;
    assert!(!seen.iter().any(|c| c == "presence-room"), "{seen:?}");
    trigger(&server, FIRST, &["orders"], "marker", "1").await;
    let m = a.next_event().await;
    assert_eq!(m["event"], "marker", "no count in the first app: {m}");
    server.stop().await;
}

#[tokio::test]
async fn subscription_counts_add_up_across_nodes_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let nodes = common::redis::nodes_with(&redis, 2, |c| {
        add_first(c);
        add_shop(c);
        counting(c);
    })
    .await;
    let mut s0 = PusherClient::connect_to(&nodes[0], SHOP).await;
    s0.subscribe("orders", None, None).await;
    count_reaches(&mut s0, "orders", 1).await;
    let mut s1 = PusherClient::connect_to(&nodes[1], SHOP).await;
    s1.subscribe("orders", None, None).await;
    // Each node counts the other's subscriber once its heartbeat says so.
    count_reaches(&mut s1, "orders", 2).await;
    count_reaches(&mut s0, "orders", 2).await;
    s1.close().await;
    count_reaches(&mut s0, "orders", 1).await;
    for node in nodes {
        node.stop().await;
    }
}
