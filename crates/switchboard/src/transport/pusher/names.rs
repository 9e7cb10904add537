//! Pusher channel names and switchboard channels: one mapping, both ways, so a Pusher
//! client and a Centrifugo or Socket.IO client name the same channel.
//!
//! `private-<x>` is `private:<x>`, `presence-<x>` is `presence:<x>`, and
//! `#server-to-user-<id>` (a signed-in user's channel) is `user:<id>`. Any other name is
//! the same channel on both sides: `orders` (namespace `default`), `chat:1` (`chat`).

use std::borrow::Cow;

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

/// The namespaces Pusher's prefixes map to, in the order of their prefixes.
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

/// Whether `name` is a cache channel: a subscriber gets its last event at once, or
/// `pusher:cache_miss`.
pub(super) fn is_cache(name: &str) -> bool {
    [ENCRYPTED, PRIVATE, PRESENCE]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name)
        .starts_with(CACHE)
}

/// The switchboard channel of the Pusher channel `name`, and its kind; `None` for a
/// name with nothing after its prefix, or a public name inside a mapped namespace
/// (`private:x` is reachable as `private-x` only, so the mapping stays one to one).
/// The channel's characters and length are checked by the rules, as for any client.
pub(super) fn to_switchboard(name: &str) -> Option<(String, Kind)> {
    let kind = Kind::of(name);
    for (prefix, namespace) in MAPPED {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.is_empty() {
                return None;
            }
            return Some((format!("{namespace}:{rest}"), kind));
        }
    }
    let namespace = crate::channel::namespace(name);
    if name.starts_with('#') || MAPPED.iter().any(|(_, ns)| *ns == namespace) {
        return None;
    }
    Some((name.to_owned(), kind))
}

/// The Pusher name of the switchboard channel `channel`.
pub(super) fn to_pusher(channel: &str) -> Cow<'_, str> {
    for (prefix, namespace) in MAPPED {
        if let Some(rest) = channel
            .strip_prefix(namespace)
            .and_then(|r| r.strip_prefix(':'))
        {
            return Cow::Owned(format!("{prefix}{rest}"));
        }
    }
    Cow::Borrowed(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let cases = [
            ("orders", "orders", Kind::Public),
            ("chat:1", "chat:1", Kind::Public),
            ("private-chat.1", "private:chat.1", Kind::Private),
            (
                "private-encrypted-x",
                "private:encrypted-x",
                Kind::Encrypted,
            ),
            ("presence-room.1", "presence:room.1", Kind::Presence),
            ("#server-to-user-42", "user:42", Kind::User),
        ];
        for (pusher, switchboard, kind) in cases {
            assert_eq!(
                to_switchboard(pusher),
                Some((switchboard.to_owned(), kind)),
                "{pusher}"
            );
            assert_eq!(to_pusher(switchboard), pusher, "{switchboard}");
        }
    }

    #[test]
    fn names_that_would_alias_a_mapped_channel_are_refused() {
        for name in [
            "private:x",
            "presence:x",
            "user:42",
            "private-",
            "presence-",
            "#server-to-user-",
            "#other",
        ] {
            assert_eq!(to_switchboard(name), None, "{name}");
        }
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
