//! RSA, ECDSA and JWKS connection tokens against the real server.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchboard::auth::now_secs;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": now_secs() + 60}), key).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}/rsa_private.pem")).unwrap()).unwrap()
}

async fn connect_code(server: &TestServer, token: &str) -> Result<(), u16> {
    let mut c = Client::open(server).await;
    c.send_text(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    match c.read().await {
        Ok(r) if r.get("connect").is_some() => Ok(()),
        Ok(r) => panic!("unexpected {r}"),
        Err(closed) => Err(closed.code),
    }
}

#[tokio::test]
async fn rs256_and_es256_with_pem_keys() {
    let mut cfg = config();
    cfg.token_rsa_public_key = format!("{KEYS}/rsa_public.pem");
    cfg.token_ecdsa_public_key = std::fs::read_to_string(format!("{KEYS}/ec_public.pem")).unwrap();
    let server = start(cfg).await;
    assert_eq!(
        connect_code(&server, &sign(Algorithm::RS256, None, &rsa_key(), "r")).await,
        Ok(())
    );
    let ec = EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/ec_private.pem")).unwrap())
        .unwrap();
    assert_eq!(
        connect_code(&server, &sign(Algorithm::ES256, None, &ec, "e")).await,
        Ok(())
    );
    // HS256 still works beside them; a token signed with another RSA key does not.
    assert_eq!(connect_code(&server, &token("h")).await, Ok(()));
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"wrong"),
        "x",
    );
    assert_eq!(connect_code(&server, &forged).await, Err(3500));
}

#[tokio::test]
async fn jwks_keys_are_fetched_and_unknown_kid_is_refused() {
    let jwks = std::fs::read_to_string(format!("{KEYS}/jwks.json")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let body = jwks.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut cfg = config();
    cfg.token_jwks_url = format!("http://{addr}/jwks");
    let server = start(cfg).await;
    assert_eq!(
        connect_code(
            &server,
            &sign(Algorithm::RS256, Some("test-rsa"), &rsa_key(), "j")
        )
        .await,
        Ok(())
    );
    assert_eq!(
        connect_code(
            &server,
            &sign(Algorithm::RS256, Some("other"), &rsa_key(), "j")
        )
        .await,
        Err(3500)
    );
}

/// An HS256 token with exactly these claims.
fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The error code a subscribe with `token` gets, or `None` when it succeeds.
async fn subscribe_code(c: &mut Client, channel: &str, token: &str) -> Option<u64> {
    let reply = c
        .request(json!({"subscribe": {"channel": channel, "token": token}}))
        .await;
    error_code(&reply)
}

#[tokio::test]
async fn configured_audience_and_issuer_are_required_in_both_kinds_of_token() {
    let mut cfg = config();
    cfg.token_audience = "app".into();
    cfg.token_issuer = "auth".into();
    let server = start(cfg).await;
    let conn = |drop: &str| {
        let mut claims = json!({"sub": "ann", "aud": "app", "iss": "auth"});
        claims.as_object_mut().unwrap().remove(drop);
        hs256(&claims)
    };
    assert_eq!(connect_code(&server, &conn("")).await, Ok(()));
    assert_eq!(connect_code(&server, &conn("aud")).await, Err(3500));
    assert_eq!(connect_code(&server, &conn("iss")).await, Err(3500));
    let wrong = hs256(&json!({"sub": "ann", "aud": "other", "iss": "auth"}));
    assert_eq!(connect_code(&server, &wrong).await, Err(3500));

    let mut c = Client::connect(&server, &conn("")).await;
    let sub = |channel: &str, drop: &str| {
        let mut claims = json!({"sub": "ann", "channel": channel, "aud": "app", "iss": "auth"});
        claims.as_object_mut().unwrap().remove(drop);
        hs256(&claims)
    };
    let denied = Some(103);
    assert_eq!(
        subscribe_code(&mut c, "observation:1", &sub("observation:1", "aud")).await,
        denied
    );
    assert_eq!(
        subscribe_code(&mut c, "observation:1", &sub("observation:1", "iss")).await,
        denied
    );
    assert_eq!(
        subscribe_code(&mut c, "observation:1", &sub("observation:1", "")).await,
        None
    );
}

#[tokio::test]
async fn nbf_iat_and_exp_are_checked_with_the_configured_leeway() {
    let mut cfg = config();
    // Wide enough that no claim below lands near a boundary, wherever the second is.
    cfg.token_leeway = std::time::Duration::from_secs(60);
    let server = start(cfg).await;
    let now = now_secs();
    let conn = |extra: serde_json::Value| {
        let mut claims = json!({"sub": "ann"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(&claims)
    };
    assert_eq!(
        connect_code(&server, &conn(json!({"nbf": now + 3600}))).await,
        Err(3500)
    );
    assert_eq!(
        connect_code(&server, &conn(json!({"iat": now + 3600}))).await,
        Err(3500)
    );
    assert_eq!(
        connect_code(&server, &conn(json!({"nbf": now + 30}))).await,
        Ok(())
    );
    assert_eq!(
        connect_code(&server, &conn(json!({"iat": now + 30}))).await,
        Ok(())
    );
    assert_eq!(
        connect_code(&server, &conn(json!({"exp": now - 30}))).await,
        Ok(())
    );
    let mut c = Client::open(&server).await;
    let reply = c
        .request(json!({"connect": {"token": conn(json!({"exp": now - 3600}))}}))
        .await;
    assert_eq!(error_code(&reply), Some(109), "expired beyond the leeway");

    let mut c = Client::connect_user(&server, "ann").await;
    let sub = |extra: serde_json::Value| {
        let mut claims = json!({"sub": "ann", "channel": "observation:1"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256(&claims)
    };
    let ch = "observation:1";
    assert_eq!(
        subscribe_code(&mut c, ch, &sub(json!({"nbf": now + 3600}))).await,
        Some(103)
    );
    assert_eq!(
        subscribe_code(&mut c, ch, &sub(json!({"iat": now + 3600}))).await,
        Some(103)
    );
    assert_eq!(
        subscribe_code(&mut c, ch, &sub(json!({"exp": now - 3600}))).await,
        Some(109)
    );
    assert_eq!(
        subscribe_code(&mut c, ch, &sub(json!({"nbf": now + 30}))).await,
        None
    );
}
