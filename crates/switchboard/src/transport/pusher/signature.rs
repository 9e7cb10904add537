//! Pusher's signatures: lowercase hex HMAC-SHA256 with an app's secret.
//!
//! - A channel authorization (`auth` of `pusher:subscribe`): `<key>:<hmac>` of
//!   `<socket_id>:<channel>`, with `:<channel_data>` appended for presence channels.
//! - A user sign-in (`pusher:signin`): `<key>:<hmac>` of `<socket_id>::user::<user_data>`.
//! - An HTTP API request: `auth_signature` is the hmac of `<METHOD>\n<path>\n<query>`,
//!   the query being every parameter but `auth_signature`, keys lowercased, sorted by
//!   key, values not escaped; it holds `auth_key`, `auth_timestamp`, `auth_version=1.0`
//!   and, with a body, its `body_md5`.

use std::time::Duration;

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use crate::config::PusherApp;

/// Lowercase hex HMAC-SHA256 of `message` with the app secret.
fn sign(app: PusherApp<'_>, message: &str) -> String {
    crate::webhooks::delivery::sign(app.secret.as_bytes(), message.as_bytes())
}

/// Whether `given` is the app's `<key>:<signature>` of `message`, compared in
/// constant time.
fn verify(app: PusherApp<'_>, given: &str, message: &str) -> bool {
    let expected = format!("{}:{}", app.key, sign(app, message));
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Whether `auth` authorizes `socket_id` on the Pusher channel `channel` (with the
/// presence channel's `channel_data`, as the client sent it).
pub(super) fn verify_channel(
    app: PusherApp<'_>,
    auth: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> bool {
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    verify(app, auth, &message)
}

/// Whether `auth` signs `user_data` in for `socket_id`.
pub(super) fn verify_signin(
    app: PusherApp<'_>,
    auth: &str,
    socket_id: &str,
    user_data: &str,
) -> bool {
    verify(app, auth, &format!("{socket_id}::user::{user_data}"))
}

/// Why an HTTP API request was refused (401; the message is Pusher's kind of hint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum RequestError {
    /// A required parameter is missing.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// `auth_key` is not the app's key.
    #[error("unknown auth_key")]
    UnknownKey,
    /// `auth_version` is not `1.0`.
    #[error("unsupported auth_version (use 1.0)")]
    Version,
    /// `auth_timestamp` is too far from this node's clock.
    #[error("auth_timestamp is not within the allowed skew of the server's time")]
    Timestamp,
    /// `body_md5` does not match the body.
    #[error("body_md5 does not match the body")]
    BodyMd5,
    /// The signature is wrong.
    #[error("invalid signature")]
    Signature,
}

/// Checks an HTTP API request's signature by `app`. `params` are the decoded query
/// parameters, `now` Unix seconds, `max_skew` how far `auth_timestamp` may be from it.
///
/// # Errors
/// What is wrong with the request's authentication.
pub(super) fn verify_request(
    app: PusherApp<'_>,
    max_skew: Duration,
    method: &str,
    path: &str,
    params: &[(String, String)],
    body: &[u8],
    now: u64,
) -> Result<(), RequestError> {
    let get = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .ok_or(RequestError::Missing(name))
    };
    let key = get("auth_key")?;
    let timestamp = get("auth_timestamp")?;
    let version = get("auth_version")?;
    let signature = get("auth_signature")?;
    if key != app.key {
        return Err(RequestError::UnknownKey);
    }
    if version != "1.0" {
        return Err(RequestError::Version);
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| RequestError::Timestamp)?;
    if timestamp.abs_diff(now) > max_skew.as_secs() {
        return Err(RequestError::Timestamp);
    }
    if !body.is_empty() {
        let md5 = hex(&Md5::digest(body));
        if get("body_md5")? != md5 {
            return Err(RequestError::BodyMd5);
        }
    }
    let mut signed: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    signed.sort();
    let query: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let expected = sign(app, &format!("{method}\n{path}\n{}", query.join("&")));
    if bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        Ok(())
    } else {
        Err(RequestError::Signature)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp<'static> {
        PusherApp {
            id: "1",
            key: "278d425bdf160c739803",
            secret: "7ad3773142a6692b25b8",
            prefix: "",
            subscription_count: false,
        }
    }

    #[test]
    fn channel_signatures_match_pushers_documented_examples() {
        // From Pusher's "Authentication and authorization signatures" reference.
        let app = app();
        assert!(verify_channel(
            app,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
            "1234.1234",
            "private-foobar",
            None,
        ));
        assert!(!verify_channel(
            app,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4",
            "1234.1235",
            "private-foobar",
            None,
        ));
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert!(verify_channel(
            app,
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
            "1234.1234",
            "presence-foobar",
            Some(data),
        ));
    }

    #[test]
    fn request_signatures_bind_method_path_query_and_body() {
        let app = app();
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let md5 = hex(&Md5::digest(body));
        let mut params = vec![
            ("auth_key".to_owned(), app.key.to_owned()),
            ("auth_timestamp".to_owned(), "1353088179".to_owned()),
            ("auth_version".to_owned(), "1.0".to_owned()),
            ("body_md5".to_owned(), md5.clone()),
        ];
        let query = format!(
            "auth_key={}&auth_timestamp=1353088179&auth_version=1.0&body_md5={md5}",
            app.key
        );
        let signature = sign(app, &format!("POST\n/apps/3/events\n{query}"));
        params.push(("auth_signature".to_owned(), signature));
        let now = 1_353_088_179;
        let check = |method, path, params: &[(String, String)], body: &[u8], now| {
            verify_request(
                app,
                Duration::from_secs(600),
                method,
                path,
                params,
                body,
                now,
            )
        };
        assert_eq!(check("POST", "/apps/3/events", &params, body, now), Ok(()));
        assert_eq!(
            check("POST", "/apps/3/events", &params, body, now + 600),
            Ok(()),
            "within the skew"
        );
        assert_eq!(
            check("POST", "/apps/3/events", &params, body, now + 601),
            Err(RequestError::Timestamp)
        );
        assert_eq!(
            check("POST", "/apps/4/events", &params, body, now),
            Err(RequestError::Signature)
        );
        assert_eq!(
            check("GET", "/apps/3/events", &params, body, now),
            Err(RequestError::Signature)
        );
        assert_eq!(
            check("POST", "/apps/3/events", &params, b"{}", now),
            Err(RequestError::BodyMd5)
        );
        let mut other_key = params.clone();
        other_key[0].1 = "other".into();
        assert_eq!(
            check("POST", "/apps/3/events", &other_key, body, now),
            Err(RequestError::UnknownKey)
        );
        let unsigned: Vec<_> = params[..4].to_vec();
        assert_eq!(
            check("POST", "/apps/3/events", &unsigned, body, now),
            Err(RequestError::Missing("auth_signature"))
        );
    }
}
