//! Presence of one channel: clients with their info, and distinct users counted as
//! they come and go so that stats are O(1) (a user with three tabs is one user).

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_protocol::{ClientInfo, PresenceStatsResult};

/// Who is in one channel.
#[derive(Debug, Default)]
pub struct PresenceSet {
    clients: HashMap<Arc<str>, ClientInfo>,
    users: HashMap<Arc<str>, u32>,
}

impl PresenceSet {
    /// Adds or replaces a client. Returns true when it is the user's first client here.
    pub fn add(&mut self, info: ClientInfo) -> bool {
        let user = info.user.clone();
        if let Some(old) = self.clients.insert(info.client.clone(), info) {
            // Replaced an entry of the same client: the user count is unchanged.
            debug_assert_eq!(old.user, user);
            return false;
        }
        let n = self.users.entry(user).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Removes a client. Returns its info and whether it was the user's last client here.
    pub fn remove(&mut self, client: &str) -> Option<(ClientInfo, bool)> {
        let info = self.clients.remove(client)?;
        let last = match self.users.get_mut(&info.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.users.remove(&info.user);
                true
            }
        };
        Some((info, last))
    }

    /// All clients.
    pub fn clients(&self) -> &HashMap<Arc<str>, ClientInfo> {
        &self.clients
    }

    /// Number of clients and of distinct users.
    pub fn stats(&self) -> PresenceStatsResult {
        PresenceStatsResult {
            num_clients: u32::try_from(self.clients.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(self.users.len()).unwrap_or(u32::MAX),
        }
    }

    /// Whether nobody is here.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: None,
        }
    }

    #[test]
    fn counts_users_once_across_tabs() {
        let mut p = PresenceSet::default();
        assert!(p.add(info("ann", "c1")));
        assert!(!p.add(info("ann", "c2")));
        assert!(!p.add(info("ann", "c3")));
        assert!(p.add(info("bob", "c4")));
        assert_eq!(
            p.stats(),
            PresenceStatsResult {
                num_clients: 4,
                num_users: 2
            }
        );
        assert!(
            !p.add(info("ann", "c1")),
            "re-adding a client is not a join"
        );
        assert_eq!(p.stats().num_clients, 4);
        assert!(!p.remove("c1").unwrap().1);
        assert!(!p.remove("c2").unwrap().1);
        assert!(p.remove("c3").unwrap().1, "last tab leaves the user");
        assert!(p.remove("c3").is_none());
        assert_eq!(
            p.stats(),
            PresenceStatsResult {
                num_clients: 1,
                num_users: 1
            }
        );
    }
}
