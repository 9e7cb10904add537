//! Connection and subscription tokens: arbitrary token text, and arbitrary claims
//! behind a valid HS256 signature (so the claims parser is reached, not only the
//! signature check).
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use switchboard::auth::Verifier;
use switchboard::Config;

const SECRET: &str = "fuzz-secret";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
    key: EncodingKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = Config {
            token_hmac_secret: SECRET.to_owned(),
            ..Config::default()
        };
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            verifier: Verifier::new(&config).expect("verifier"),
            key: EncodingKey::from_secret(SECRET.as_bytes()),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        text.to_owned()
    } else {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(rest));
        let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &f.key, Algorithm::HS256)
        else {
            return;
        };
        format!("{message}.{signature}")
    };
    f.runtime.block_on(async {
        let _ = f.verifier.verify_connect(&token).await;
        let _ = f
            .verifier
            .verify_subscription(&token, "42", "chat:lobby")
            .await;
    });
});
