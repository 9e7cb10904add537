//! Token revocation through the server API (`revoke_token`, `invalidate_user_tokens`):
//! live connections and subscriptions end at once, and the tokens are refused later.

mod common;

use common::*;
use serde_json::json;
use switchboard::auth::MintClaims;

fn stamped(user: &str, jti: &str, iat: u64) -> String {
    token_with(&MintClaims {
        sub: user.into(),
        jti: Some(jti.into()),
        iat: Some(iat),
        ..MintClaims::default()
    })
}

fn stamped_sub(user: &str, channel: &str, jti: &str, iat: u64) -> String {
    token_with(&MintClaims {
        sub: user.into(),
        channel: Some(channel.into()),
        jti: Some(jti.into()),
        iat: Some(iat),
        ..MintClaims::default()
    })
}

async fn connect_refused(server: &TestServer, token: &str) -> Closed {
    let mut c = Client::open(server).await;
    c.send_text(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    c.closed().await
}

#[tokio::test]
async fn revoke_token_closes_its_connection_and_refuses_it_later() {
    let server = start_default().await;
    let mut revoked = Client::connect(&server, &stamped("42", "t-1", 1000)).await;
    let mut other = Client::connect(&server, &stamped("42", "t-2", 1000)).await;

    let answer = api_call(&server, "revoke_token", json!({"uid": "t-1"})).await;
    assert_eq!(answer, json!({"result": {}}));
    let closed = revoked.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3500, "token revoked")
    );
    // The user's other token is untouched.
    assert!(other
        .request(json!({"ping": {}}))
        .await
        .get("ping")
        .is_some());

    let closed = connect_refused(&server, &stamped("42", "t-1", 1000)).await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3500, "token revoked")
    );
    assert_eq!(
        metric(&server, "switchboard_revoked_disconnects_total").await,
        1
    );

    // A record whose expiry has passed no longer refuses the token.
    api_call(
        &server,
        "revoke_token",
        json!({"uid": "t-3", "expire_at": 1}),
    )
    .await;
    Client::connect(&server, &stamped("42", "t-3", 1000)).await;
}

#[tokio::test]
async fn invalidate_user_tokens_ends_older_tokens_and_accepts_newer_ones() {
    let server = start_default().await;
    let mut old = Client::connect(&server, &stamped("42", "a", 1000)).await;
    let mut new = Client::connect(&server, &stamped("42", "b", 3000)).await;
    let mut someone_else = Client::connect(&server, &stamped("7", "c", 1000)).await;

    let answer = api_call(
        &server,
        "invalidate_user_tokens",
        json!({"user": "42", "issued_before": 2000}),
    )
    .await;
    assert_eq!(answer, json!({"result": {}}));
    assert_eq!(old.closed().await.code, 3500);
    assert!(new.request(json!({"ping": {}})).await.get("ping").is_some());
    assert!(someone_else
        .request(json!({"ping": {}}))
        .await
        .get("ping")
        .is_some());

    assert_eq!(
        connect_refused(&server, &stamped("42", "d", 1999))
            .await
            .code,
        3500
    );
    // A token without `iat` can not show it is newer.
    assert_eq!(connect_refused(&server, &token("42")).await.code, 3500);
    Client::connect(&server, &stamped("42", "e", 2000)).await;
}

#[tokio::test]
async fn revoked_subscription_tokens_end_their_subscriptions() {
    let server = start_default().await;
    let mut c = Client::connect(&server, &token("42")).await;
    for (channel, jti) in [("observation:1", "s-1"), ("observation:2", "s-2")] {
        let reply = c
            .request(json!({"subscribe": {"channel": channel, "token": stamped_sub("42", channel, jti, 1000)}}))
            .await;
        assert!(reply.get("subscribe").is_some(), "{reply}");
    }

    api_call(&server, "revoke_token", json!({"uid": "s-1"})).await;
    let push = c.next_push().await;
    assert_eq!(push["channel"], "observation:1");
    assert_eq!(
        push["unsubscribe"],
        json!({"code": 2000, "reason": "token revoked"})
    );
    let again = c
        .request(json!({"subscribe": {"channel": "observation:1", "token": stamped_sub("42", "observation:1", "s-1", 1000)}}))
        .await;
    assert_eq!(error_code(&again), Some(103));

    // Invalidation for one channel leaves the connection and other channels alone.
    api_call(
        &server,
        "invalidate_user_tokens",
        json!({"user": "42", "channel": "observation:2", "issued_before": 2000}),
    )
    .await;
    let push = c.next_push().await;
    assert_eq!(push["channel"], "observation:2");
    assert!(c.request(json!({"ping": {}})).await.get("ping").is_some());
}

#[tokio::test]
async fn revocation_requests_are_checked() {
    let server = start_default().await;
    let missing = api_call(&server, "revoke_token", json!({"uid": ""})).await;
    assert_eq!(missing["error"]["code"], 107, "{missing}");
    let missing = api_call(&server, "invalidate_user_tokens", json!({})).await;
    assert!(missing.get("error").is_some(), "{missing}");
}

#[tokio::test]
async fn a_revocation_through_one_node_ends_connections_on_every_node_and_outlives_them() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let nodes = common::redis::nodes(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut revoked = Client::connect(b, &stamped("42", "t-1", 1000)).await;
    let mut kept = Client::connect(b, &stamped("42", "t-2", 1000)).await;
    let mut old = Client::connect(a, &stamped("7", "o-1", 1000)).await;
    let channel = "observation:1";
    let reply = kept
        .request(json!({"subscribe": {"channel": channel, "token": stamped_sub("42", channel, "s-1", 1000)}}))
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");

    // Through node a, for connections on node b: closed at once.
    let r = api_call(a, "revoke_token", json!({"uid": "t-1"})).await;
    assert_eq!(r, json!({"result": {}}));
    let closed = revoked.closed().await;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (3500, "token revoked")
    );
    api_call(a, "revoke_token", json!({"uid": "s-1"})).await;
    let push = kept.next_push().await;
    assert_eq!(push["channel"], channel);
    assert_eq!(
        push["unsubscribe"],
        json!({"code": 2000, "reason": "token revoked"})
    );
    assert!(kept
        .request(json!({"ping": {}}))
        .await
        .get("ping")
        .is_some());
    // Through node b, for a connection on node a.
    api_call(
        b,
        "invalidate_user_tokens",
        json!({"user": "7", "issued_before": 2000}),
    )
    .await;
    assert_eq!(old.closed().await.code, 3500);

    // A node started afterwards knows every record.
    let later = start(common::redis::config(&redis)).await;
    common::redis::wait_ready(&later.http_url("")).await;
    for refused in [stamped("42", "t-1", 1000), stamped("7", "o-2", 1999)] {
        let closed = connect_refused(&later, &refused).await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (3500, "token revoked")
        );
    }
    let mut c = Client::connect(&later, &stamped("7", "o-3", 2000)).await;
    let again = c
        .request(json!({"subscribe": {"channel": channel, "token": stamped_sub("42", channel, "s-1", 1000)}}))
        .await;
    assert_eq!(error_code(&again), Some(103), "{again}");
    Client::connect(&later, &stamped("42", "t-2", 1000)).await;
}

#[tokio::test]
async fn without_redis_nothing_is_revoked_and_tokens_are_not_let_in_unchecked() {
    let Some(mut redis) = common::redis::RedisServer::start() else {
        return;
    };
    let node = common::redis::nodes(&redis, 1).await.remove(0);
    let mut live = Client::connect(&node, &stamped("42", "t-1", 1000)).await;
    redis.kill();
    common::redis::wait_status(&node.http_url(""), 503).await;
    let r = api_call(&node, "revoke_token", json!({"uid": "t-1"})).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert!(live
        .request(json!({"ping": {}}))
        .await
        .get("ping")
        .is_some());
    let mut c = Client::open(&node).await;
    let r = c
        .request(json!({"connect": {"token": stamped("42", "t-2", 1000)}}))
        .await;
    assert_eq!(error_code(&r), Some(100), "{r}");
    assert_eq!(r["error"]["temporary"], json!(true), "{r}");
}

#[tokio::test]
async fn a_connection_refreshed_with_a_newer_token_is_judged_by_it() {
    let server = start_default().await;
    let mut c = Client::connect(&server, &stamped("42", "a", 1000)).await;
    let r = c
        .request(json!({"refresh": {"token": stamped("42", "b", 3000)}}))
        .await;
    assert!(r.get("refresh").is_some(), "{r}");
    api_call(
        &server,
        "invalidate_user_tokens",
        json!({"user": "42", "issued_before": 2000}),
    )
    .await;
    assert!(c.request(json!({"ping": {}})).await.get("ping").is_some());
    // The token it was refreshed with is what a revocation looks at.
    api_call(&server, "revoke_token", json!({"uid": "b"})).await;
    assert_eq!(c.closed().await.code, 3500);
}
