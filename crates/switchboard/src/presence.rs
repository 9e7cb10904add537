//! Presence of one channel: clients with their info and lease, and distinct users
//! counted as they come and go so that stats are O(1) (a user with three tabs is one
//! user). An entry whose lease ran out (its node stopped refreshing it) is swept.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_protocol::{ClientInfo, PresenceStatsResult};
use tokio::time::Instant;

/// Who is in one channel.
#[derive(Debug, Default)]
pub struct PresenceSet {
    clients: HashMap<Arc<str>, (ClientInfo, Instant)>,
    users: HashMap<Arc<str>, u32>,
}

impl PresenceSet {
    /// Adds or refreshes a client until `expires`. Returns true when it is the user's
    /// first client here.
    pub fn add(&mut self, info: ClientInfo, expires: Instant) -> bool {
        let user = info.user.clone();
        if let Some((old, _)) = self.clients.insert(info.client.clone(), (info, expires)) {
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
        let (info, _) = self.clients.remove(client)?;
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

    /// Removes the clients whose lease ended before `now`, with whether each was its
    /// user's last client here.
    pub fn expire(&mut self, now: Instant) -> Vec<(ClientInfo, bool)> {
        let gone: Vec<Arc<str>> = self
            .clients
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(c, _)| c.clone())
            .collect();
        gone.iter().filter_map(|c| self.remove(c)).collect()
    }

    /// All clients.
    pub fn clients(&self) -> HashMap<Arc<str>, ClientInfo> {
        self.clients
            .iter()
            .map(|(c, (info, _))| (c.clone(), info.clone()))
            .collect()
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
        let exp = Instant::now() + std::time::Duration::from_secs(60);
        assert!(p.add(info("ann", "c1"), exp));
        assert!(!p.add(info("ann", "c2"), exp));
        assert!(!p.add(info("ann", "c3"), exp));
        assert!(p.add(info("bob", "c4"), exp));
        assert_eq!(
            p.stats(),
            PresenceStatsResult {
                num_clients: 4,
                num_users: 2
            }
        );
        assert!(
            !p.add(info("ann", "c1"), exp),
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

    #[tokio::test(start_paused = true)]
    async fn unrefreshed_entries_expire_with_the_users_last_client() {
        let mut p = PresenceSet::default();
        let now = Instant::now();
        let lease = std::time::Duration::from_secs(10);
        p.add(info("ann", "c1"), now + lease);
        p.add(info("ann", "c2"), now + lease);
        p.add(info("bob", "c3"), now + lease);
        tokio::time::advance(lease / 2).await;
        // c1 and c3 are refreshed by their node; c2's node died.
        p.add(info("ann", "c1"), Instant::now() + lease);
        p.add(info("bob", "c3"), Instant::now() + lease);
        assert!(p.expire(Instant::now()).is_empty());
        tokio::time::advance(lease / 2).await;
        let gone = p.expire(Instant::now());
        assert_eq!(gone.len(), 1);
        assert_eq!((&*gone[0].0.client, gone[0].1), ("c2", false));
        assert_eq!(p.stats().num_users, 2);
        tokio::time::advance(lease).await;
        let mut gone: Vec<_> = p
            .expire(Instant::now())
            .into_iter()
            .map(|(i, last)| (i.client, last))
            .collect();
        gone.sort();
        assert_eq!(gone, vec![("c1".into(), true), ("c3".into(), true)]);
        assert!(p.is_empty());
    }
}
