//! The `[pusher]` section: the Pusher apps switchboard serves (the first in `[pusher]`
//! itself, more in `[pusher.apps.<name>]`, each with its id, key, secret and channel
//! prefix), and the limits of the Pusher HTTP API.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The namespaces of the unprefixed app's channels that have a Pusher prefix of their
/// own (`private-`, `presence-`, `#server-to-user-`), beside `default` for names
/// without a `:`.
pub const PUSHER_NAMESPACES: [&str; 3] = ["private", "presence", "user"];

/// The Pusher apps. Off while no app has a key: there is no safe default for a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The first app's id, in HTTP API paths (`/apps/<app_id>/events`).
    #[serde(deserialize_with = "text")]
    pub app_id: String,
    /// The first app's key: clients connect to `/app/<key>`, the HTTP API is signed
    /// with it.
    #[serde(deserialize_with = "text")]
    pub key: String,
    /// The first app's secret: signs channel authorizations, user sign-ins and HTTP
    /// API calls.
    #[serde(deserialize_with = "text")]
    pub secret: String,
    /// Whether the first app's subscribers get `pusher_internal:subscription_count`.
    pub subscription_count: bool,
    /// More apps, by name. Each has its channels in namespaces of its own, named
    /// after its channel prefix.
    pub apps: BTreeMap<String, PusherAppConfig>,
    /// How far an HTTP API request's `auth_timestamp` may be from this node's clock,
    /// either way, before the request is refused as a replay (Pusher allows 600 s).
    #[serde(with = "super::duration")]
    pub max_clock_skew: Duration,
    /// Most channels one `POST /apps/<app_id>/events` may name (Pusher: 100).
    pub max_event_channels: usize,
    /// Most events in one `POST /apps/<app_id>/batch_events` (Pusher: 10).
    pub max_batch_events: usize,
    /// Shortest time between two `pusher_internal:subscription_count` events of one
    /// channel on a node: a channel that many join at once gets one event per
    /// interval, not one per join.
    #[serde(with = "super::duration")]
    pub subscription_count_interval: Duration,
}

/// One more Pusher app (`[pusher.apps.<name>]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherAppConfig {
    /// The app id, in HTTP API paths.
    #[serde(deserialize_with = "text")]
    pub app_id: String,
    /// The app key: its clients connect to `/app/<key>`.
    #[serde(deserialize_with = "text")]
    pub key: String,
    /// The app secret.
    #[serde(deserialize_with = "text")]
    pub secret: String,
    /// What the app's namespaces are named after (empty: the entry's name): with
    /// `shop`, Pusher's `orders` is `shop:orders`, `private-x` is `shop_private:x`,
    /// `presence-x` is `shop_presence:x`, `#server-to-user-42` is `shop_user:42`.
    pub channel_prefix: String,
    /// Whether the app's subscribers get `pusher_internal:subscription_count`.
    pub subscription_count: bool,
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
            subscription_count: false,
            apps: BTreeMap::new(),
            max_clock_skew: Duration::from_secs(600),
            max_event_channels: 100,
            max_batch_events: 10,
            subscription_count_interval: Duration::from_secs(1),
        }
    }
}

/// One app as the transport sees it, wherever it was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PusherApp<'a> {
    /// The app id.
    pub id: &'a str,
    /// The app key.
    pub key: &'a str,
    /// The app secret.
    pub secret: &'a str,
    /// What its namespaces are named after; empty for the `[pusher]` app, whose
    /// channels keep their names.
    pub prefix: &'a str,
    /// Whether its subscribers get `pusher_internal:subscription_count`.
    pub subscription_count: bool,
}

impl<'a> PusherApp<'a> {
    /// The namespace of this app's channels of one kind: `default` (public names),
    /// `private`, `presence` or `user`. The unprefixed app's are these; a prefixed
    /// app's are `<prefix>` and `<prefix>_private`, ...
    pub fn namespace(&self, kind: &'a str) -> Cow<'a, str> {
        match (self.prefix, kind) {
            ("", _) => Cow::Borrowed(kind),
            (prefix, "default") => Cow::Borrowed(prefix),
            (prefix, kind) => Cow::Owned(format!("{prefix}_{kind}")),
        }
    }

    /// Whether the namespace `ns` holds channels of this prefixed app (the unprefixed
    /// app's are whatever no other app holds).
    pub fn holds(&self, ns: &str) -> bool {
        !self.prefix.is_empty()
            && ns.strip_prefix(self.prefix).is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('_')
                        .is_some_and(|k| PUSHER_NAMESPACES.contains(&k))
            })
    }
}

impl PusherConfig {
    /// Whether the Pusher transport and HTTP API are served.
    pub fn enabled(&self) -> bool {
        self.apps().next().is_some()
    }

    /// Every app: the `[pusher]` one first when it has a key, then `[pusher.apps]` by
    /// name.
    pub fn apps(&self) -> impl Iterator<Item = PusherApp<'_>> {
        let first = (!self.key.is_empty()).then(|| PusherApp {
            id: &self.app_id,
            key: &self.key,
            secret: &self.secret,
            prefix: "",
            subscription_count: self.subscription_count,
        });
        first
            .into_iter()
            .chain(self.apps.iter().map(|(name, app)| PusherApp {
                id: &app.app_id,
                key: &app.key,
                secret: &app.secret,
                prefix: if app.channel_prefix.is_empty() {
                    name
                } else {
                    &app.channel_prefix
                },
                subscription_count: app.subscription_count,
            }))
    }

    /// The app whose key is `key`.
    pub fn app_by_key(&self, key: &str) -> Option<PusherApp<'_>> {
        self.apps().find(|a| a.key == key)
    }

    /// The app whose id is `id`.
    pub fn app_by_id(&self, id: &str) -> Option<PusherApp<'_>> {
        self.apps().find(|a| a.id == id)
    }

    /// The app whose channels live in the namespace `ns`: the prefixed app holding
    /// it, else the unprefixed app (if any).
    pub fn app_of_namespace(&self, ns: &str) -> Option<PusherApp<'_>> {
        let mut unprefixed = None;
        for app in self.apps() {
            if app.prefix.is_empty() {
                unprefixed = Some(app);
            } else if app.holds(ns) {
                return Some(app);
            }
        }
        unprefixed
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
        for (name, app) in &self.apps {
            if app.app_id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                out.push(format!(
                    "pusher.apps.{name}: app_id, key and secret are required"
                ));
            }
        }
        // They travel in URL paths and in `key:signature` strings.
        let plain = |v: &str| {
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let apps: Vec<PusherApp<'_>> = self.apps().collect();
        if !apps.iter().all(|a| plain(a.id) && plain(a.key)) {
            out.push("pusher: app_id and key may hold only letters, digits, - _ .".to_owned());
        }
        // A prefix names namespaces: `<prefix>`, `<prefix>_private`, ...
        let word = |v: &str| v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        // `default` is the namespace of names without a `:`, whoever maps there.
        if !apps.iter().all(|a| word(a.prefix) && a.prefix != "default") {
            out.push(
                "pusher: channel_prefix may hold only letters, digits and _ (and is not `default`)"
                    .to_owned(),
            );
        }
        for (what, values) in [
            ("app_id", apps.iter().map(|a| a.id).collect::<Vec<_>>()),
            ("key", apps.iter().map(|a| a.key).collect()),
            ("channel_prefix", apps.iter().map(|a| a.prefix).collect()),
        ] {
            let distinct: BTreeSet<&str> = values.iter().copied().collect();
            if distinct.len() != values.len() {
                out.push(format!("pusher: two apps have the same {what}"));
            }
        }
        // Each namespace holds one app's channels: no prefix may name another app's
        // namespaces (`shop` and `shop_private`), nor the unprefixed app's.
        let kinds = ["default"].into_iter().chain(PUSHER_NAMESPACES);
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        for app in &apps {
            for kind in kinds.clone() {
                let ns = app.namespace(kind).into_owned();
                if let Some(other) = owners.insert(ns.clone(), app.id) {
                    out.push(format!(
                        "pusher: apps {other:?} and {:?} both map channels into namespace {ns:?}",
                        app.id
                    ));
                }
            }
        }
        if self.subscription_count_interval.is_zero() {
            out.push("pusher: subscription_count_interval must be above 0".to_owned());
        }
        if self.max_event_channels == 0 || self.max_batch_events == 0 {
            out.push(
                "pusher: max_event_channels and max_batch_events must be at least 1".to_owned(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, prefix: &str) -> PusherAppConfig {
        PusherAppConfig {
            app_id: id.into(),
            key: format!("{id}-key"),
            secret: format!("{id}-secret"),
            channel_prefix: prefix.into(),
            subscription_count: false,
        }
    }

    fn config(apps: &[(&str, PusherAppConfig)]) -> PusherConfig {
        PusherConfig {
            app_id: "1".into(),
            key: "1-key".into(),
            secret: "1-secret".into(),
            apps: apps
                .iter()
                .map(|(n, a)| ((*n).to_owned(), a.clone()))
                .collect(),
            ..PusherConfig::default()
        }
    }

    #[test]
    fn apps_are_found_by_key_id_and_namespace() {
        let c = config(&[("shop", app("2", "")), ("blog", app("3", "news"))]);
        assert!(c.errors().is_empty(), "{:?}", c.errors());
        let ids: Vec<_> = c.apps().map(|a| (a.id, a.prefix)).collect();
        assert_eq!(ids, [("1", ""), ("3", "news"), ("2", "shop")]);
        assert_eq!(c.app_by_key("2-key").map(|a| a.id), Some("2"));
        assert_eq!(c.app_by_id("3").map(|a| a.prefix), Some("news"));
        assert_eq!(c.app_by_key("nope"), None);
        let owner = |ns| c.app_of_namespace(ns).map(|a| a.id);
        assert_eq!(owner("shop"), Some("2"));
        assert_eq!(owner("shop_private"), Some("2"));
        assert_eq!(owner("news_user"), Some("3"));
        assert_eq!(
            owner("shop_other"),
            Some("1"),
            "not a Pusher namespace of shop"
        );
        assert_eq!(owner("chat"), Some("1"));
        let alone = PusherConfig {
            apps: [("shop".to_owned(), app("2", ""))].into(),
            ..PusherConfig::default()
        };
        assert_eq!(alone.app_of_namespace("chat"), None, "no unprefixed app");
    }

    #[test]
    fn apps_may_not_share_ids_keys_or_namespaces() {
        let mut same_key = app("2", "");
        same_key.key = "1-key".into();
        let bad = [
            config(&[("shop", same_key)]),
            config(&[("shop", app("1", ""))]),
            config(&[("private", app("2", ""))]),
            config(&[("shop", app("2", "")), ("shop_private", app("3", ""))]),
            config(&[("shop", app("2", "a-b"))]),
            config(&[("shop", app("2", "default"))]),
            config(&[("shop", app("", ""))]),
        ];
        for c in bad {
            assert!(!c.errors().is_empty(), "{c:?}");
        }
    }
}
