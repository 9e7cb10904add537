//! User status: online/offline, last seen, number of connections, with a debounce so a
//! page reload does not flap offline/online.
//!
//! Changes are published into `<namespace>:<user>` (default `status:<user>`) when that
//! namespace is configured, so a "watchlist" is just subscriptions, and every client SDK
//! gets it unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::auth::now_secs;

/// One user's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStatus {
    /// User id.
    pub user: String,
    /// Whether the user has a connection (or lost the last one within the debounce).
    pub online: bool,
    /// Open connections (on every node, with a shared engine).
    pub connections: u32,
    /// Unix milliseconds of the last connect or disconnect (with a shared engine, also
    /// renewed while connected); 0 if never seen.
    pub last_seen: u64,
}

#[derive(Debug, Default)]
struct Entry {
    connections: u32,
    last_seen: u64,
    /// What watchers were last told.
    announced_online: bool,
    /// Bumped on every change so a pending offline announcement can tell it is stale.
    generation: u64,
}

/// What the caller must announce after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to tell watchers.
    None,
    /// Announce "online" now.
    Online,
    /// Check again after the debounce, with this generation.
    MaybeOffline(u64),
}

/// Status of every user this node has seen.
#[derive(Debug, Default)]
pub struct StatusTracker {
    /// Short critical sections only.
    users: Mutex<HashMap<Arc<str>, Entry>>,
}

pub(crate) fn now_ms() -> u64 {
    now_secs() * 1000
}

impl StatusTracker {
    /// A connection of `user` opened.
    pub fn connected(&self, user: &Arc<str>) -> Change {
        self.connected_then(user, || {})
    }

    /// [`StatusTracker::connected`], calling `online` before the change is visible to
    /// another connect or disconnect of the user, so reports of it keep their order.
    /// `online` must not block.
    pub fn connected_then(&self, user: &Arc<str>, online: impl FnOnce()) -> Change {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let e = users.entry(user.clone()).or_default();
        e.connections += 1;
        e.generation += 1;
        e.last_seen = now_ms();
        if e.announced_online {
            Change::None
        } else {
            e.announced_online = true;
            online();
            Change::Online
        }
    }

    /// A connection of `user` closed.
    pub fn disconnected(&self, user: &str) -> Change {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = users.get_mut(user) else {
            return Change::None;
        };
        e.connections = e.connections.saturating_sub(1);
        e.generation += 1;
        e.last_seen = now_ms();
        if e.connections == 0 {
            Change::MaybeOffline(e.generation)
        } else {
            Change::None
        }
    }

    /// After the debounce: whether `user` is now offline (nothing changed since
    /// `generation`), in which case watchers must be told.
    pub fn settle_offline(&self, user: &str, generation: u64) -> Option<UserStatus> {
        self.settle_offline_then(user, generation, |_| {})
    }

    /// [`StatusTracker::settle_offline`], calling `offline` with the status before the
    /// change is visible to a new connect of the user. `offline` must not block.
    pub fn settle_offline_then(
        &self,
        user: &str,
        generation: u64,
        offline: impl FnOnce(&UserStatus),
    ) -> Option<UserStatus> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let e = users.get_mut(user)?;
        if e.generation != generation || e.connections > 0 || !e.announced_online {
            return None;
        }
        e.announced_online = false;
        let status = UserStatus {
            user: user.to_owned(),
            online: false,
            connections: 0,
            last_seen: e.last_seen,
        };
        offline(&status);
        Some(status)
    }

    /// Status of each user, in the order asked.
    pub fn query(&self, users: &[String]) -> Vec<UserStatus> {
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .iter()
            .map(|u| match map.get(u.as_str()) {
                Some(e) => UserStatus {
                    user: u.clone(),
                    online: e.announced_online,
                    connections: e.connections,
                    last_seen: e.last_seen,
                },
                None => UserStatus {
                    user: u.clone(),
                    online: false,
                    connections: 0,
                    last_seen: 0,
                },
            })
            .collect()
    }

    /// Forgets offline users not seen for `ttl`, so memory stays bounded.
    pub fn sweep(&self, ttl: Duration) {
        let cutoff = now_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.retain(|_, e| e.connections > 0 || e.announced_online || e.last_seen > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_device_goes_offline_only_after_last_and_reload_does_not_flap() {
        let t = StatusTracker::default();
        let ann: Arc<str> = "ann".into();
        assert_eq!(t.connected(&ann), Change::Online);
        assert_eq!(t.connected(&ann), Change::None);
        assert_eq!(t.connected(&ann), Change::None);
        assert_eq!(t.query(&["ann".into()])[0].connections, 3);
        assert_eq!(t.disconnected("ann"), Change::None);
        assert_eq!(t.disconnected("ann"), Change::None);
        let Change::MaybeOffline(g) = t.disconnected("ann") else {
            panic!("last device")
        };
        // A reload: reconnect within the debounce; the pending offline is stale.
        assert_eq!(t.connected(&ann), Change::None);
        assert!(t.settle_offline("ann", g).is_none());
        let Change::MaybeOffline(g) = t.disconnected("ann") else {
            panic!()
        };
        let s = t.settle_offline("ann", g).expect("offline");
        assert!(!s.online);
        assert!(s.last_seen > 0);
        assert!(!t.query(&["ann".into()])[0].online);
        assert_eq!(
            t.query(&["nobody".into()])[0],
            UserStatus {
                user: "nobody".into(),
                online: false,
                connections: 0,
                last_seen: 0
            }
        );
        t.sweep(Duration::ZERO);
        assert_eq!(t.query(&["ann".into()])[0].last_seen, 0);
    }
}
