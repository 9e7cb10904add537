//! Token verification: connection and subscription JWTs (HMAC, RSA, ECDSA, JWKS).
//!
//! Pure apart from the JWKS fetch; the result is an [`Identity`] the rules work on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::SharedJson;

use crate::config::Config;

/// Who a connection is, as its token says.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// User id (`sub`).
    pub user: Arc<str>,
    /// Roles (`roles` claim), used by `{roles}` templates.
    pub roles: Vec<String>,
    /// Tenant (`tenant` claim), used by `{tenant}` templates.
    pub tenant: Option<String>,
    /// Public info shown in presence and publications (`info` claim).
    pub info: Option<SharedJson>,
    /// Channels to subscribe on connect (`channels` claim).
    pub channels: Vec<String>,
    /// Expiry as Unix seconds (`exp`), if any.
    pub expires_at: Option<u64>,
    /// Private data the connect proxy attached, sent with every later proxy request.
    pub meta: Option<SharedJson>,
    /// The connection token's id and issue time, for revocation. A connection the
    /// connect proxy authenticated has no id, and the time of its last connect or
    /// refresh proxy request as issue time.
    pub token: Option<TokenStamp>,
    /// An operator console's connection (see [`crate::admin`]): no user, watches any
    /// channel without joining it, publishes nothing, and no hook hears of it.
    pub console: bool,
}

/// What revocation needs to know of a verified token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStamp {
    /// `jti` claim.
    pub id: Option<String>,
    /// `iat` claim, Unix seconds.
    pub issued_at: Option<u64>,
}

/// What a subscription token (or a transport's own authorization) grants.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Channel info shown in presence (`info` claim of the subscription token).
    pub info: Option<SharedJson>,
    /// The user the subscription is shown as in presence and publications, when not
    /// the connection's: a Pusher presence channel names its member in the auth
    /// endpoint's `channel_data`, per channel, on a connection that has no user.
    pub user: Option<Arc<str>>,
    /// Expiry as Unix seconds.
    pub expires_at: Option<u64>,
    /// The subscription token's id and issue time, for revocation; `None` when no
    /// token granted the channel.
    pub token: Option<TokenStamp>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Valid signature, but `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, unknown key, malformed or missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct ConnectClaims {
    #[serde(default)]
    sub: String,
    exp: Option<u64>,
    iat: Option<u64>,
    info: Option<Box<RawValue>>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    roles: Vec<String>,
    tenant: Option<String>,
    jti: Option<String>,
}

#[derive(Deserialize)]
struct SubscriptionClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    channel: String,
    exp: Option<u64>,
    iat: Option<u64>,
    info: Option<Box<RawValue>>,
    jti: Option<String>,
}

/// The time claims every kind of token is checked for (`nbf` is checked by the decoder).
trait Timing {
    fn exp(&self) -> Option<u64>;
    fn iat(&self) -> Option<u64>;
}

impl Timing for ConnectClaims {
    fn exp(&self) -> Option<u64> {
        self.exp
    }
    fn iat(&self) -> Option<u64> {
        self.iat
    }
}

impl Timing for SubscriptionClaims {
    fn exp(&self) -> Option<u64> {
        self.exp
    }
    fn iat(&self) -> Option<u64> {
        self.iat
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => Vec::new(),
        Some(Raw::One(s)) => vec![s],
        Some(Raw::Many(v)) => v,
    })
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies tokens with the configured keys.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    jwks: Option<Jwks>,
    audience: String,
    issuer: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("rsa", &self.rsa.is_some())
            .field("ec", &self.ec.is_some())
            .field("jwks", &self.jwks.is_some())
            .finish()
    }
}

fn pem_text(value: &str) -> Result<Vec<u8>, AuthError> {
    if value.contains("-----BEGIN") {
        Ok(value.as_bytes().to_vec())
    } else {
        std::fs::read(value).map_err(|e| AuthError::Invalid(format!("reading key {value}: {e}")))
    }
}

impl Verifier {
    /// Builds a verifier from config.
    ///
    /// # Errors
    /// A PEM key that can not be read or parsed.
    pub fn new(config: &Config) -> Result<Self, AuthError> {
        let hmac = (!config.token_hmac_secret.is_empty())
            .then(|| DecodingKey::from_secret(config.token_hmac_secret.as_bytes()));
        let rsa = if config.token_rsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(&pem_text(&config.token_rsa_public_key)?)
                    .map_err(|e| AuthError::Invalid(format!("RSA public key: {e}")))?,
            )
        };
        let ec = if config.token_ecdsa_public_key.is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_ec_pem(&pem_text(&config.token_ecdsa_public_key)?)
                    .map_err(|e| AuthError::Invalid(format!("ECDSA public key: {e}")))?,
            )
        };
        let jwks = (!config.token_jwks_url.is_empty())
            .then(|| Jwks::new(config.token_jwks_url.clone(), config.token_jwks_cache_ttl));
        Ok(Self {
            hmac,
            rsa,
            ec,
            jwks,
            audience: config.token_audience.clone(),
            issuer: config.token_issuer.clone(),
            leeway: config.token_leeway.as_secs(),
        })
    }

    async fn decode<T: serde::de::DeserializeOwned + Timing>(
        &self,
        token: &str,
    ) -> Result<T, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("header: {e}")))?;
        let alg = header.alg;
        let jwk_key;
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.hmac.as_ref(),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384 => {
                let static_key = if matches!(alg, Algorithm::ES256 | Algorithm::ES384) {
                    self.ec.as_ref()
                } else {
                    self.rsa.as_ref()
                };
                match (&self.jwks, static_key, header.kid.as_deref()) {
                    (Some(jwks), None, kid) | (Some(jwks), _, kid @ Some(_)) => {
                        jwk_key = jwks.key(kid).await?;
                        Some(&*jwk_key)
                    }
                    (_, key, _) => key,
                }
            }
            _ => None,
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key configured for {alg:?}")))?;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = HashSet::new();
        // Expiry is checked below, so that it maps to its own error code (109).
        validation.validate_exp = false;
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&self.audience]);
            // Without this a token that simply omits `aud` would pass.
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&[&self.issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let claims = jsonwebtoken::decode::<T>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        let now = now_secs();
        if claims
            .iat()
            .is_some_and(|iat| iat > now.saturating_add(self.leeway))
        {
            return Err(AuthError::Invalid(
                "token issued in the future (iat)".into(),
            ));
        }
        if claims
            .exp()
            .is_some_and(|exp| exp.saturating_add(self.leeway) <= now)
        {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// Verifies a connection token.
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`].
    pub async fn verify_connect(&self, token: &str) -> Result<Identity, AuthError> {
        let c: ConnectClaims = self.decode(token).await?;
        if c.sub.is_empty() {
            return Err(AuthError::Invalid("missing sub".into()));
        }
        Ok(Identity {
            user: c.sub.into(),
            roles: c.roles,
            tenant: c.tenant.filter(|t| !t.is_empty()),
            info: c.info.map(Arc::from),
            channels: c.channels,
            expires_at: c.exp,
            meta: None,
            token: Some(TokenStamp {
                id: c.jti,
                issued_at: c.iat,
            }),
            console: false,
        })
    }

    /// Verifies a subscription token for `user` and `channel`.
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`] (also when the token is for
    /// another user or channel).
    pub async fn verify_subscription(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<Grant, AuthError> {
        let c: SubscriptionClaims = self.decode(token).await?;
        if c.sub != user || !channel_matches(&c.channel, channel) {
            return Err(AuthError::Invalid(
                "subscription token is for another user or channel".into(),
            ));
        }
        Ok(Grant {
            info: c.info.map(Arc::from),
            user: None,
            expires_at: c.exp,
            token: Some(TokenStamp {
                id: c.jti,
                issued_at: c.iat,
            }),
        })
    }
}

/// Whether a token's channel claim covers `channel`: the same name, or a pattern
/// ending in `*` that `channel` starts with (`device:acme.*` covers `device:acme.7`).
/// The pattern must name its namespace (contain `:` before the `*`), so no token
/// grants channels across namespaces.
pub fn channel_matches(claim: &str, channel: &str) -> bool {
    match claim.strip_suffix('*') {
        Some(prefix) => prefix.contains(':') && channel.starts_with(prefix),
        None => claim == channel,
    }
}

/// A JWKS endpoint's keys, cached for `ttl` and refetched (at most every 10 s) when a
/// token names a `kid` not in the cache, so key rotation needs no restart.
struct Jwks {
    url: String,
    ttl: Duration,
    client: reqwest::Client,
    /// Held only to read or swap the cache, never across the fetch.
    cache: std::sync::Mutex<JwksCache>,
}

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

impl Jwks {
    fn new(url: String, ttl: Duration) -> Self {
        Self {
            url,
            ttl,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            cache: std::sync::Mutex::new(JwksCache::default()),
        }
    }

    fn cached(&self, kid: &str) -> (Option<Arc<DecodingKey>>, bool) {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache.fetched.is_some_and(|t| t.elapsed() < self.ttl);
        let may_refetch = cache
            .last_attempt
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        let key = cache.keys.get(kid).cloned();
        (key.filter(|_| fresh || !may_refetch), may_refetch)
    }

    async fn key(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>, AuthError> {
        let kid = kid.unwrap_or("");
        let (key, may_refetch) = self.cached(kid);
        if let Some(key) = key {
            return Ok(key);
        }
        if may_refetch {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                Err(e) => tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed"),
            }
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .keys
            .get(kid)
            .or_else(|| {
                (cache.keys.len() == 1 && kid.is_empty())
                    .then(|| cache.keys.values().next())
                    .flatten()
            })
            .cloned()
            .ok_or_else(|| AuthError::Invalid(format!("no JWKS key with kid {kid:?}")))
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone().unwrap_or_default(), Arc::new(key)))
            })
            .collect())
    }
}

/// Claims of a connection token minted by [`mint_token`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct MintClaims {
    /// User id.
    pub sub: String,
    /// Expiry, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Roles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Public info.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Server-side channels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Channel, for a subscription token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Token id, for revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issue time, Unix seconds, for revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Signs claims with an HMAC secret (HS256): for the CLI, `--dev` and tests.
///
/// # Errors
/// Only if the claims can not be serialized.
pub fn mint_token(secret: &str, claims: &MintClaims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> Verifier {
        let c = Config {
            token_hmac_secret: secret.into(),
            ..Config::default()
        };
        Verifier::new(&c).unwrap()
    }

    #[tokio::test]
    async fn hmac_roundtrip_and_errors() {
        let v = verifier("s3cret");
        let t = mint_token(
            "s3cret",
            &MintClaims {
                sub: "42".into(),
                roles: vec!["admin".into()],
                tenant: Some("acme".into()),
                exp: Some(now_secs() + 60),
                info: Some(serde_json::json!({"name": "Ann"})),
                ..Default::default()
            },
        )
        .unwrap();
        let id = v.verify_connect(&t).await.unwrap();
        assert_eq!(&*id.user, "42");
        assert_eq!(id.roles, vec!["admin"]);
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.info.unwrap().get(), r#"{"name":"Ann"}"#);

        let expired = mint_token(
            "s3cret",
            &MintClaims {
                sub: "42".into(),
                exp: Some(now_secs() - 3600),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            v.verify_connect(&expired).await.unwrap_err(),
            AuthError::Expired
        );
        let forged = mint_token(
            "other",
            &MintClaims {
                sub: "42".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            v.verify_connect(&forged).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify_connect("garbage").await,
            Err(AuthError::Invalid(_))
        ));
        let no_sub = mint_token("s3cret", &MintClaims::default()).unwrap();
        assert!(matches!(
            v.verify_connect(&no_sub).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn subscription_token_binds_user_and_channel() {
        let v = verifier("k");
        let t = mint_token(
            "k",
            &MintClaims {
                sub: "7".into(),
                channel: Some("observation:9".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(v
            .verify_subscription(&t, "7", "observation:9")
            .await
            .is_ok());
        assert!(v
            .verify_subscription(&t, "8", "observation:9")
            .await
            .is_err());
        assert!(v
            .verify_subscription(&t, "7", "observation:10")
            .await
            .is_err());
    }

    fn sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn configured_audience_and_issuer_are_required() {
        let v = Verifier::new(&Config {
            token_hmac_secret: "k".into(),
            token_audience: "app".into(),
            token_issuer: "auth".into(),
            ..Config::default()
        })
        .unwrap();
        let ok = serde_json::json!({"sub": "1", "aud": "app", "iss": "auth"});
        assert!(v.verify_connect(&sign(&ok)).await.is_ok());
        for missing in ["aud", "iss"] {
            let mut claims = ok.clone();
            claims.as_object_mut().unwrap().remove(missing);
            let err = v.verify_connect(&sign(&claims)).await.unwrap_err();
            assert!(
                matches!(&err, AuthError::Invalid(m) if m.contains(missing)),
                "{err}"
            );
        }
        let wrong = serde_json::json!({"sub": "1", "aud": "other", "iss": "auth"});
        assert!(v.verify_connect(&sign(&wrong)).await.is_err());
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_the_leeway() {
        let v = Verifier::new(&Config {
            token_hmac_secret: "k".into(),
            token_leeway: Duration::from_secs(60),
            ..Config::default()
        })
        .unwrap();
        let now = now_secs();
        let check = |claims: serde_json::Value| {
            let v = &v;
            async move { v.verify_connect(&sign(&claims)).await.map(|_| ()) }
        };
        // Within the leeway: accepted, wherever in the second the test runs.
        assert_eq!(
            check(serde_json::json!({"sub": "1", "nbf": now + 30})).await,
            Ok(())
        );
        assert_eq!(
            check(serde_json::json!({"sub": "1", "iat": now + 30})).await,
            Ok(())
        );
        assert_eq!(
            check(serde_json::json!({"sub": "1", "exp": now - 30})).await,
            Ok(())
        );
        // Beyond it: refused.
        assert!(matches!(
            check(serde_json::json!({"sub": "1", "nbf": now + 600})).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            check(serde_json::json!({"sub": "1", "iat": now + 600})).await,
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            check(serde_json::json!({"sub": "1", "exp": now - 600})).await,
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn subscription_token_patterns_grant_a_set_of_channels() {
        let v = verifier("k");
        let t = mint_token(
            "k",
            &MintClaims {
                sub: "7".into(),
                channel: Some("device:acme.*".into()),
                jti: Some("t1".into()),
                iat: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        let g = v
            .verify_subscription(&t, "7", "device:acme.42")
            .await
            .unwrap();
        assert_eq!(g.token.unwrap().id.as_deref(), Some("t1"));
        assert!(v.verify_subscription(&t, "7", "device:acme.").await.is_ok());
        assert!(v
            .verify_subscription(&t, "7", "device:other.1")
            .await
            .is_err());
        assert!(channel_matches("device:acme.*", "device:acme.x"));
        assert!(!channel_matches("device:acme.*", "device:acmeX"));
        assert!(
            !channel_matches("*", "user:1"),
            "a pattern names its namespace"
        );
        assert!(!channel_matches("dev*", "device:1"));
        assert!(channel_matches("chat:1", "chat:1"));
    }

    #[test]
    fn roles_claim_may_be_a_string() {
        let c: ConnectClaims = serde_json::from_str(r#"{"sub":"1","roles":"admin"}"#).unwrap();
        assert_eq!(c.roles, vec!["admin"]);
    }
}
