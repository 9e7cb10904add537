//! What the console signs and checks: the password, session cookies, CSRF tokens and
//! the console's connection tokens. Each signed value is its fields and an HMAC-SHA256
//! of them under the console's key; pure functions of the key and the time given.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How a console connection token starts: the connect path tells it from a JWT by this.
pub const CONSOLE_TOKEN_PREFIX: &str = "sbconsole.";
/// How a session cookie's value starts.
const SESSION_PREFIX: &str = "sbsession.";

/// One login: its id (in audit lines, revocation) and when it ends (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Random hex id.
    pub id: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl Login {
    /// The first characters of the id, enough to tell logins apart in logs.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(8)]
    }
}

/// The console's key and the digest of its password.
pub struct Keys {
    key: Vec<u8>,
    password: [u8; 32],
}

impl std::fmt::Debug for Keys {
    // Never print the key or the digest.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys")
    }
}

impl Keys {
    /// Keys for `password`, signing with `secret`, or with a random key when `secret`
    /// is empty.
    pub fn new(secret: &str, password: &str) -> Self {
        let key = if secret.is_empty() {
            rand::random::<[u8; 32]>().to_vec()
        } else {
            secret.as_bytes().to_vec()
        };
        Self {
            key,
            password: Sha256::digest(password.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the password. Digests are compared, in constant time, so
    /// neither the password's bytes nor its length show in the time taken.
    pub fn password_matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.password).into()
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    fn sign(&self, payload: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(payload).finalize().into_bytes())
    }

    /// Whether `signature` signs `payload` (compared in constant time).
    fn verify(&self, payload: &str, signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| self.mac(payload).verify_slice(&sig).is_ok())
    }

    /// A new login lasting `ttl` seconds from `now`, and its cookie value.
    pub fn login(&self, now: u64, ttl: u64) -> (Login, String) {
        let login = Login {
            id: hex(&rand::random::<[u8; 16]>()),
            expires_at: now.saturating_add(ttl),
        };
        let payload = format!("{SESSION_PREFIX}{}.{}", login.id, login.expires_at);
        let cookie = format!("{payload}.{}", self.sign(&payload));
        (login, cookie)
    }

    /// The login a cookie value stands for, if it is signed by this key and not expired.
    pub fn session(&self, cookie: &str, now: u64) -> Option<Login> {
        let rest = cookie.strip_prefix(SESSION_PREFIX)?;
        let (payload_rest, signature) = rest.rsplit_once('.')?;
        let (id, expires_at) = payload_rest.split_once('.')?;
        let payload = &cookie[..SESSION_PREFIX.len() + payload_rest.len()];
        if !self.verify(payload, signature) {
            return None;
        }
        let expires_at: u64 = expires_at.parse().ok()?;
        (now < expires_at).then(|| Login {
            id: id.to_owned(),
            expires_at,
        })
    }

    /// The CSRF token of a login: the console sends it back in a header with every
    /// action, which a page of another site can not read or forge.
    pub fn csrf(&self, login: &Login) -> String {
        self.sign(&format!("csrf.{}.{}", login.id, login.expires_at))
    }

    /// Whether `presented` is the login's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, login: &Login, presented: &str) -> bool {
        self.verify(
            &format!("csrf.{}.{}", login.id, login.expires_at),
            presented,
        )
    }

    /// A connection token for the console's WebSocket: usable until `now + ttl`, the
    /// connection it opens lasting as long as the login.
    pub fn connection_token(&self, login: &Login, now: u64, ttl: u64) -> String {
        let payload = format!(
            "{CONSOLE_TOKEN_PREFIX}{}.{}.{}",
            login.id,
            login.expires_at,
            now.saturating_add(ttl).min(login.expires_at)
        );
        format!("{payload}.{}", self.sign(&payload))
    }

    /// The login a connection token was made for, if it is signed by this key and may
    /// still be used.
    pub fn verify_connection_token(&self, token: &str, now: u64) -> Option<Login> {
        let (payload, signature) = token.rsplit_once('.')?;
        let fields = payload.strip_prefix(CONSOLE_TOKEN_PREFIX)?;
        if !self.verify(payload, signature) {
            return None;
        }
        let mut fields = fields.split('.');
        let (Some(id), Some(expires_at), Some(usable_until), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        let expires_at: u64 = expires_at.parse().ok()?;
        let usable_until: u64 = usable_until.parse().ok()?;
        (now < usable_until && now < expires_at).then(|| Login {
            id: id.to_owned(),
            expires_at,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_matches_exactly() {
        let keys = Keys::new("", "correct horse");
        assert!(keys.password_matches("correct horse"));
        assert!(!keys.password_matches("correct hors"));
        assert!(!keys.password_matches("correct horse "));
        assert!(!keys.password_matches(""));
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let keys = Keys::new("k", "pw");
        let (login, cookie) = keys.login(1000, 60);
        assert_eq!(login.expires_at, 1060);
        assert_eq!(keys.session(&cookie, 1000), Some(login.clone()));
        assert_eq!(keys.session(&cookie, 1059), Some(login));
        assert_eq!(keys.session(&cookie, 1060), None, "expired");
        // Another key, a longer life, a changed id: all refused.
        assert_eq!(Keys::new("other", "pw").session(&cookie, 1000), None);
        let longer = cookie.replace(".1060.", ".9999.");
        assert_eq!(keys.session(&longer, 1000), None);
        let mut forged = cookie.into_bytes();
        forged[SESSION_PREFIX.len()] ^= 1;
        assert_eq!(
            keys.session(&String::from_utf8(forged).unwrap(), 1000),
            None
        );
        assert_eq!(keys.session("", 1000), None);
        assert_eq!(keys.session("sbsession.x.y", 1000), None);
        // A random key per process: a restart ends every session.
        let (_, cookie) = Keys::new("", "pw").login(1000, 60);
        assert_eq!(Keys::new("", "pw").session(&cookie, 1000), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_login() {
        let keys = Keys::new("k", "pw");
        let (a, _) = keys.login(1000, 60);
        let (b, _) = keys.login(1000, 60);
        let token = keys.csrf(&a);
        assert!(keys.csrf_matches(&a, &token));
        assert!(!keys.csrf_matches(&b, &token));
        assert!(!keys.csrf_matches(&a, ""));
        assert!(!keys.csrf_matches(&a, "!!"));
    }

    #[test]
    fn connection_tokens_are_short_lived_and_carry_the_login() {
        let keys = Keys::new("k", "pw");
        let (login, cookie) = keys.login(1000, 3600);
        let token = keys.connection_token(&login, 1000, 30);
        assert!(token.starts_with(CONSOLE_TOKEN_PREFIX));
        assert_eq!(keys.verify_connection_token(&token, 1029), Some(login));
        assert_eq!(
            keys.verify_connection_token(&token, 1030),
            None,
            "used too late"
        );
        assert_eq!(
            Keys::new("x", "pw").verify_connection_token(&token, 1000),
            None
        );
        // A cookie is no connection token, nor the other way round.
        assert_eq!(keys.verify_connection_token(&cookie, 1000), None);
        assert_eq!(keys.session(&token, 1000), None);
        // Never usable past the login's end.
        let (short, _) = keys.login(1000, 10);
        let token = keys.connection_token(&short, 1000, 30);
        assert_eq!(keys.verify_connection_token(&token, 1010), None);
    }
}
