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
