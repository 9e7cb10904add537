//! The `[pusher]` section: the one Pusher app switchboard serves (its id, key and
//! secret), and the limits of the Pusher HTTP API.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The Pusher app. Off while `key` is empty: there is no safe default for a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The app id, in HTTP API paths (`/apps/<app_id>/events`).
    #[serde(deserialize_with = "text")]
    pub app_id: String,
    /// The app key: clients connect to `/app/<key>`, the HTTP API is signed with it.
    #[serde(deserialize_with = "text")]
    pub key: String,
    /// The app secret: signs channel authorizations, user sign-ins and HTTP API calls.
    #[serde(deserialize_with = "text")]
    pub secret: String,
    /// How far an HTTP API request's `auth_timestamp` may be from this node's clock,
    /// either way, before the request is refused as a replay (Pusher allows 600 s).
    #[serde(with = "super::duration")]
    pub max_clock_skew: Duration,
    /// Most channels one `POST /apps/<app_id>/events` may name (Pusher: 100).
    pub max_event_channels: usize,
    /// Most events in one `POST /apps/<app_id>/batch_events` (Pusher: 10).
    pub max_batch_events: usize,
}

/// A string, or a number taken as its text: Pusher app ids are numbers, and
/// `SWITCHBOARD_PUSHER__APP_ID=1234` reads as one.
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Unsigned(n) => n.to_string(),
        Raw::Signed(n) => n.to_string(),
    })
}

impl Default for PusherConfig {
    fn default() -> Self {
        Self {
            app_id: String::new(),
            key: String::new(),
            secret: String::new(),
            max_clock_skew: Duration::from_secs(600),
            max_event_channels: 100,
            max_batch_events: 10,
        }
    }
}

impl PusherConfig {
    /// Whether the Pusher transport and HTTP API are served.
    pub fn enabled(&self) -> bool {
        !self.key.is_empty()
    }

    /// What is wrong with the section.
    pub(super) fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        let set = [&self.app_id, &self.key, &self.secret]
            .iter()
            .filter(|v| !v.is_empty())
            .count();
        if set != 0 && set != 3 {
            out.push("pusher: app_id, key and secret must be set together".to_owned());
        }
        // They travel in URL paths and in `key:signature` strings.
        let plain = |v: &str| {
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !plain(&self.app_id) || !plain(&self.key) {
            out.push("pusher: app_id and key may hold only letters, digits, - _ .".to_owned());
        }
        if self.max_event_channels == 0 || self.max_batch_events == 0 {
            out.push(
                "pusher: max_event_channels and max_batch_events must be at least 1".to_owned(),
            );
        }
        out
    }
}
