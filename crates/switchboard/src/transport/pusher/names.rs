//! Pusher channel names and switchboard channels: one mapping per app, both ways, so a
//! Pusher client and a Centrifugo or Socket.IO client name the same channel, and no
//! app reaches another's.
//!
//! For the unprefixed app (`[pusher]`): `private-<x>` is `private:<x>`, `presence-<x>`
//! is `presence:<x>`, `#server-to-user-<id>` (a signed-in user's channel) is
//! `user:<id>`, and any other name is the same channel on both sides: `orders`
//! (namespace `default`), `chat:1` (`chat`). For an app with the channel prefix
//! `shop`: `orders` is `shop:orders`, `private-<x>` is `shop_private:<x>`,
//! `presence-<x>` is `shop_presence:<x>`, `#server-to-user-<id>` is `shop_user:<id>`.
//! A namespace holds one app's channels: the unprefixed app reaches no prefixed app's.

use std::borrow::Cow;

use crate::channel::namespace;
use crate::config::{PusherApp, PusherConfig};

/// Prefix of private channels (and of encrypted ones, `private-encrypted-`).
const PRIVATE: &str = "private-";
/// Prefix of end-to-end encrypted channels: private, and no client events.
const ENCRYPTED: &str = "private-encrypted-";
/// Prefix of presence channels.
const PRESENCE: &str = "presence-";
/// Prefix of the channel pusher-js subscribes after `pusher:signin`.
const USER: &str = "#server-to-user-";
/// Prefix of cache channels, after the kind's own (`cache-x`, `private-cache-x`,
/// `presence-cache-x`, `private-encrypted-cache-x`).
const CACHE: &str = "cache-";

/// The namespace kinds Pusher's prefixes map to (see [`PusherApp::namespace`]), in
/// the order of their prefixes.
const MAPPED: [(&str, &str); 3] = [(PRIVATE, "private"), (PRESENCE, "presence"), (USER, "user")];

/// What kind of channel a Pusher name is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Anyone may subscribe, as the namespace's rules allow.
    Public,
    /// The app's auth endpoint authorizes each subscription.
    Private,
    /// Private, with end-to-end encrypted payloads the server only relays.
    Encrypted,
    /// Private, with members (`channel_data` names the user).
    Presence,
    /// The signed-in user's own channel.
    User,
}

impl Kind {
    /// The kind of the Pusher channel `name`.
    pub(super) fn of(name: &str) -> Self {
        if name.starts_with(ENCRYPTED) {
            Self::Encrypted
        } else if name.starts_with(PRIVATE) {
            Self::Private
        } else if name.starts_with(PRESENCE) {
            Self::Presence
        } else if name.starts_with(USER) {
            Self::User
        } else {
            Self::Public
        }
    }

    /// Whether a subscription needs the app's signature (`auth`).
    pub(super) fn needs_auth(self) -> bool {
        matches!(self, Self::Private | Self::Encrypted | Self::Presence)
    }

    /// Whether clients may send `client-` events into it, as Pusher allows (the
    /// namespace must allow client publishing too).
    pub(super) fn allows_client_events(self) -> bool {
        matches!(self, Self::Private | Self::Presence)
    }
}

/// The user id of the Pusher user channel `name` (`#server-to-user-<id>`).
pub(super) fn user_channel_id(name: &str) -> Option<&str> {
    name.strip_prefix(USER).filter(|id| !id.is_empty())
}

/// Whether `name` is a cache channel: a subscriber gets its last event at once, or
/// `pusher:cache_miss`.
pub(super) fn is_cache(name: &str) -> bool {
    [ENCRYPTED, PRIVATE, PRESENCE]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name)
        .starts_with(CACHE)
}

/// The switchboard channel of `app`'s Pusher channel `name`, and its kind; `None` for a
/// name with nothing after its prefix, or, for the unprefixed app, a public name inside
/// a mapped namespace (`private:x` is reachable as `private-x` only, so the mapping
/// stays one to one) or inside another app's namespaces. The channel's characters and
/// length are checked by the rules, as for any client.
pub(super) fn to_switchboard(
    pusher: &PusherConfig,
    app: PusherApp<'_>,
    name: &str,
) -> Option<(String, Kind)> {
    let kind = Kind::of(name);
    for (prefix, ns) in MAPPED {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.is_empty() {
                return None;
            }
            return Some((format!("{}:{rest}", app.namespace(ns)), kind));
        }
    }
    if name.is_empty() || name.starts_with('#') {
        return None;
    }
    if !app.prefix.is_empty() {
        return Some((format!("{}:{name}", app.prefix), kind));
    }
    let ns = namespace(name);
    if MAPPED.iter().any(|(_, mapped)| *mapped == ns) || pusher.app_of_namespace(ns) != Some(app) {
        return None;
    }
    Some((name.to_owned(), kind))
}

/// The Pusher name of the switchboard channel `channel`, in the app whose channel it
/// is (the unprefixed mapping when no app's).
pub(super) fn to_pusher<'c>(pusher: &PusherConfig, channel: &'c str) -> Cow<'c, str> {
    let (ns, rest) = match channel.split_once(':') {
        Some((ns, rest)) if !ns.is_empty() => (ns, rest),
        _ => return Cow::Borrowed(channel),
    };
    let prefix = pusher.app_of_namespace(ns).map_or("", |app| app.prefix);
    if !prefix.is_empty() && ns == prefix {
        return Cow::Borrowed(rest);
    }
    // `shop_private` for the app `shop`, `private` for the unprefixed app.
    let kind = match prefix {
        "" => Some(ns),
        prefix => ns.strip_prefix(prefix).and_then(|k| k.strip_prefix('_')),
    };
    match MAPPED.iter().find(|(_, mapped)| Some(*mapped) == kind) {
        Some((pusher_prefix, _)) => Cow::Owned(format!("{pusher_prefix}{rest}")),
        None => Cow::Borrowed(channel),
    }
}

/// Whether the switchboard channel `channel` is one of `app`'s.
pub(super) fn belongs(pusher: &PusherConfig, app: PusherApp<'_>, channel: &str) -> bool {
    pusher.app_of_namespace(namespace(channel)) == Some(app)
}

/// The switchboard user of `app`'s user `id`: `<prefix>:<id>` for a prefixed app, so
/// two apps' users `42` are two users (for `terminate_connections`, the per-user
/// limits, online status). `None` when the unprefixed app names an id of that shape
/// for another app.
pub(super) fn user_of(pusher: &PusherConfig, app: PusherApp<'_>, id: &str) -> Option<String> {
    if !app.prefix.is_empty() {
        return Some(format!("{}:{id}", app.prefix));
    }
    let aliased = pusher.apps().any(|a| {
        !a.prefix.is_empty()
            && id
                .strip_prefix(a.prefix)
                .is_some_and(|r| r.starts_with(':'))
    });
    (!aliased).then(|| id.to_owned())
}

/// `app`'s user id of the switchboard user `user` (see [`user_of`]).
pub(super) fn local_user<'u>(app: PusherApp<'_>, user: &'u str) -> Option<&'u str> {
    if app.prefix.is_empty() {
        return Some(user);
    }
    user.strip_prefix(app.prefix)?.strip_prefix(':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PusherAppConfig;

    /// The unprefixed app `1` and the app `2` with the prefix `shop`.
    fn apps() -> PusherConfig {
        PusherConfig {
            app_id: "1".into(),
            key: "k1".into(),
            secret: "s1".into(),
            apps: [(
                "shop".to_owned(),
                PusherAppConfig {
                    app_id: "2".into(),
                    key: "k2".into(),
                    secret: "s2".into(),
                    ..PusherAppConfig::default()
                },
            )]
            .into(),
            ..PusherConfig::default()
        }
    }

    #[test]
    fn names_map_both_ways() {
        let c = apps();
        let first = c.app_by_id("1").expect("app 1");
        let shop = c.app_by_id("2").expect("app 2");
        let cases = [
            (first, "orders", "orders", Kind::Public),
            (first, "chat:1", "chat:1", Kind::Public),
            (first, "private-chat.1", "private:chat.1", Kind::Private),
            (
                first,
                "private-encrypted-x",
                "private:encrypted-x",
                Kind::Encrypted,
            ),
            (first, "presence-room.1", "presence:room.1", Kind::Presence),
            (first, "#server-to-user-42", "user:42", Kind::User),
            (shop, "orders", "shop:orders", Kind::Public),
            (shop, "chat:1", "shop:chat:1", Kind::Public),
            (shop, "private-chat.1", "shop_private:chat.1", Kind::Private),
            (
                shop,
                "presence-room.1",
                "shop_presence:room.1",
                Kind::Presence,
            ),
            (shop, "#server-to-user-42", "shop_user:42", Kind::User),
        ];
        for (app, pusher, switchboard, kind) in cases {
            assert_eq!(
                to_switchboard(&c, app, pusher),
                Some((switchboard.to_owned(), kind)),
                "{pusher}"
            );
            assert_eq!(to_pusher(&c, switchboard), pusher, "{switchboard}");
            assert!(belongs(&c, app, switchboard), "{switchboard}");
        }
        assert!(!belongs(&c, first, "shop:orders"));
        assert!(!belongs(&c, shop, "orders"));
    }

    #[test]
    fn names_that_would_alias_a_mapped_channel_or_another_app_are_refused() {
        let c = apps();
        let first = c.app_by_id("1").expect("app 1");
        let shop = c.app_by_id("2").expect("app 2");
        for name in [
            "private:x",
            "presence:x",
            "user:42",
            "private-",
            "presence-",
            "#server-to-user-",
            "#other",
            "",
            // The shop app's channels.
            "shop:orders",
            "shop_private:x",
            "shop_user:42",
        ] {
            assert_eq!(to_switchboard(&c, first, name), None, "{name}");
        }
        for name in ["#other", "", "private-"] {
            assert_eq!(to_switchboard(&c, shop, name), None, "{name}");
        }
    }

    #[test]
    fn each_apps_users_are_its_own() {
        let c = apps();
        let first = c.app_by_id("1").expect("app 1");
        let shop = c.app_by_id("2").expect("app 2");
        assert_eq!(user_of(&c, first, "42").as_deref(), Some("42"));
        assert_eq!(user_of(&c, shop, "42").as_deref(), Some("shop:42"));
        assert_eq!(user_of(&c, first, "shop:42"), None, "the shop app's user");
        assert_eq!(user_of(&c, first, "a:b").as_deref(), Some("a:b"));
        assert_eq!(local_user(shop, "shop:42"), Some("42"));
        assert_eq!(local_user(shop, "42"), None);
        assert_eq!(local_user(first, "42"), Some("42"));
    }

    #[test]
    fn cache_channels_of_every_kind() {
        for name in [
            "cache-x",
            "private-cache-x",
            "presence-cache-x",
            "private-encrypted-cache-x",
        ] {
            assert!(is_cache(name), "{name}");
        }
        for name in [
            "x",
            "cachex",
            "private-x",
            "presence-x-cache-",
            "#server-to-user-cache-1",
        ] {
            assert!(!is_cache(name), "{name}");
        }
    }

    #[test]
    fn client_events_only_on_private_and_presence_channels() {
        assert!(Kind::Private.allows_client_events());
        assert!(Kind::Presence.allows_client_events());
        for k in [Kind::Public, Kind::Encrypted, Kind::User] {
            assert!(!k.allows_client_events(), "{k:?}");
        }
        assert!(!Kind::Public.needs_auth() && !Kind::User.needs_auth());
    }
}
