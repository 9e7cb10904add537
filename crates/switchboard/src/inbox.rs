//! The inbox: each user's delivered and read positions in the streams of inbox
//! channels (the personal channel, and namespaces with `inbox = true`), so that a
//! session subscribing with no position gets what the user has not received yet, and
//! read state follows the user from device to device.
//!
//! The positions sit behind [`InboxStore`], so the nodes of a shared engine keep them
//! together; [`MemoryInbox`] keeps them in this process, one [`UserInbox`] per user
//! (the unit a durable store persists).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use switchboard_protocol::StreamPosition;
use tokio::time::Instant;

use crate::engine::EngineError;

/// One user's positions in one channel's stream. Offsets belong to `epoch`: a stream
/// that changed epoch starts again from 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// The stream's epoch the offsets belong to.
    pub epoch: String,
    /// The last offset handed to one of the user's connections (or acknowledged).
    pub delivered: u64,
    /// The last offset the user marked read; never above `delivered`.
    pub read: u64,
}

/// Which position a client acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Received: the inbox does not hand it out again.
    Delivered,
    /// Read (implies delivered).
    Read,
}

impl Marks {
    /// The marks after moving `mark` to `position`, and whether anything changed.
    /// Positions never move back within an epoch; another epoch starts over.
    pub fn advanced(&self, mark: Mark, position: &StreamPosition) -> (Self, bool) {
        let mut next = if self.epoch == position.epoch {
            self.clone()
        } else {
            Self {
                epoch: position.epoch.clone(),
                delivered: 0,
                read: 0,
            }
        };
        let mut changed = next.epoch != self.epoch;
        match mark {
            Mark::Delivered => {
                changed |= position.offset > next.delivered;
                next.delivered = next.delivered.max(position.offset);
            }
            Mark::Read => {
                changed |= position.offset > next.read;
                next.read = next.read.max(position.offset);
                next.delivered = next.delivered.max(next.read);
            }
        }
        (next, changed)
    }
}

/// Where inbox positions live.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// `user`'s positions in `channel`, if any were recorded.
    ///
    /// # Errors
    /// The backing store failed.
    async fn marks(&self, user: &str, channel: &str) -> Result<Option<Marks>, EngineError>;

    /// Every channel in which `user` has positions.
    ///
    /// # Errors
    /// The backing store failed.
    async fn user_marks(&self, user: &str) -> Result<BTreeMap<String, Marks>, EngineError>;

    /// Moves `user`'s `mark` in `channel` forward to `position` (never back within an
    /// epoch), keeping the record `keep` from now. With `receipts`, the channel's list
    /// of readers records the user's read position too. Returns the marks after, and
    /// whether they changed.
    ///
    /// # Errors
    /// The backing store failed.
    async fn advance(
        &self,
        user: &str,
        channel: &str,
        mark: Mark,
        position: &StreamPosition,
        keep: Duration,
        receipts: bool,
    ) -> Result<(Marks, bool), EngineError>;

    /// The read positions of a `read_receipts` channel's members, by user.
    ///
    /// # Errors
    /// The backing store failed.
    async fn readers(&self, channel: &str) -> Result<BTreeMap<String, Marks>, EngineError>;

    /// Drops records past their `keep`; called about once a minute.
    async fn maintain(&self) {}
}

/// One user's inbox: their positions per channel. What a durable store persists
/// (with [`MemoryInbox::export`] / [`MemoryInbox::import`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserInbox {
    /// Positions per channel.
    pub channels: BTreeMap<String, Marks>,
    /// Unix ms after which the record may be dropped (renewed by every write).
    pub expires_at_ms: u64,
}

#[derive(Default)]
struct State {
    users: HashMap<Arc<str>, (UserInbox, Instant)>,
    /// Users with a read position per `read_receipts` channel (an index: the positions
    /// are in `users`).
    readers: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

/// Inbox positions in this process.
#[derive(Default)]
pub struct MemoryInbox {
    /// Short critical sections only, never across an await.
    state: Mutex<State>,
}

impl MemoryInbox {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every user's inbox, for a durable store to save.
    pub fn export(&self) -> BTreeMap<String, UserInbox> {
        self.state()
            .users
            .iter()
            .map(|(u, (inbox, _))| (u.to_string(), inbox.clone()))
            .collect()
    }

    /// `user`'s inbox, for a durable store to save after it changed.
    pub fn user(&self, user: &str) -> Option<UserInbox> {
        self.state().users.get(user).map(|(inbox, _)| inbox.clone())
    }

    /// Drops records past their `keep`, returning the users dropped.
    pub fn sweep(&self) -> Vec<Arc<str>> {
        let now = Instant::now();
        let mut st = self.state();
        let mut gone = Vec::new();
        st.users.retain(|user, (_, expires)| {
            let keep = *expires > now;
            if !keep {
                gone.push(user.clone());
            }
            keep
        });
        let State { users, readers } = &mut *st;
        readers.retain(|_, set| {
            set.retain(|u| users.contains_key(u));
            !set.is_empty()
        });
        gone
    }

    /// Loads users' inboxes saved by [`MemoryInbox::export`]; `receipts` says which
    /// channels keep a list of readers. Records past their expiry are skipped.
    pub fn import(&self, users: BTreeMap<String, UserInbox>, receipts: impl Fn(&str) -> bool) {
        let now_ms = crate::status::now_ms();
        let now = Instant::now();
        let mut st = self.state();
        for (user, inbox) in users {
            if inbox.expires_at_ms <= now_ms {
                continue;
            }
            let user: Arc<str> = user.into();
            for channel in inbox.channels.keys().filter(|c| receipts(c)) {
                st.readers
                    .entry(Arc::from(channel.as_str()))
                    .or_default()
                    .insert(user.clone());
            }
            let left = Duration::from_millis(inbox.expires_at_ms - now_ms);
            st.users.insert(user, (inbox, now + left));
        }
    }
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn marks(&self, user: &str, channel: &str) -> Result<Option<Marks>, EngineError> {
        Ok(self
            .state()
            .users
            .get(user)
            .and_then(|(inbox, _)| inbox.channels.get(channel).cloned()))
    }

    async fn user_marks(&self, user: &str) -> Result<BTreeMap<String, Marks>, EngineError> {
        Ok(self
            .state()
            .users
            .get(user)
            .map(|(inbox, _)| inbox.channels.clone())
            .unwrap_or_default())
    }

    async fn advance(
        &self,
        user: &str,
        channel: &str,
        mark: Mark,
        position: &StreamPosition,
        keep: Duration,
        receipts: bool,
    ) -> Result<(Marks, bool), EngineError> {
        let mut st = self.state();
        let user: Arc<str> = match st.users.get_key_value(user) {
            Some((u, _)) => u.clone(),
            None => user.into(),
        };
        let (inbox, expires) = st
            .users
            .entry(user.clone())
            .or_insert_with(|| (UserInbox::default(), Instant::now()));
        *expires = Instant::now() + keep;
        inbox.expires_at_ms = crate::status::now_ms()
            .saturating_add(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
        let current = inbox.channels.get(channel).cloned().unwrap_or_default();
        let (next, changed) = current.advanced(mark, position);
        if changed {
            inbox.channels.insert(channel.to_owned(), next.clone());
        }
        if receipts && mark == Mark::Read {
            st.readers
                .entry(Arc::from(channel))
                .or_default()
                .insert(user);
        }
        Ok((next, changed))
    }

    async fn readers(&self, channel: &str) -> Result<BTreeMap<String, Marks>, EngineError> {
        let st = self.state();
        let Some(users) = st.readers.get(channel) else {
            return Ok(BTreeMap::new());
        };
        Ok(users
            .iter()
            .filter_map(|u| {
                let marks = st.users.get(u)?.0.channels.get(channel)?;
                Some((u.to_string(), marks.clone()))
            })
            .collect())
    }

    async fn maintain(&self) {
        self.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        }
    }

    #[test]
    fn marks_move_forward_only_and_read_implies_delivered() {
        let m = Marks::default();
        let (m, changed) = m.advanced(Mark::Delivered, &at(5, "e"));
        assert!(changed);
        assert_eq!((m.delivered, m.read), (5, 0));
        let (m, changed) = m.advanced(Mark::Delivered, &at(3, "e"));
        assert!(!changed, "never back");
        assert_eq!(m.delivered, 5);
        let (m, changed) = m.advanced(Mark::Read, &at(7, "e"));
        assert!(changed);
        assert_eq!((m.delivered, m.read), (7, 7));
        // Another epoch starts over.
        let (m, changed) = m.advanced(Mark::Delivered, &at(2, "f"));
        assert!(changed);
        assert_eq!((m.epoch.as_str(), m.delivered, m.read), ("f", 2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_inbox_keeps_readers_and_expires() {
        let inbox = MemoryInbox::default();
        let keep = Duration::from_secs(60);
        inbox
            .advance("ann", "chat:1", Mark::Read, &at(4, "e"), keep, true)
            .await
            .unwrap();
        inbox
            .advance("bob", "chat:1", Mark::Delivered, &at(4, "e"), keep, true)
            .await
            .unwrap();
        let readers = inbox.readers("chat:1").await.unwrap();
        assert_eq!(readers.keys().collect::<Vec<_>>(), vec!["ann"]);
        assert_eq!(readers["ann"].read, 4);
        assert_eq!(
            inbox
                .marks("bob", "chat:1")
                .await
                .unwrap()
                .unwrap()
                .delivered,
            4
        );
        let saved = inbox.export();
        tokio::time::advance(Duration::from_secs(61)).await;
        inbox.maintain().await;
        assert!(inbox.marks("ann", "chat:1").await.unwrap().is_none());
        assert!(inbox.readers("chat:1").await.unwrap().is_empty());
        // What was exported comes back (its wall-clock expiry is still ahead).
        inbox.import(saved, |c| c == "chat:1");
        assert_eq!(inbox.readers("chat:1").await.unwrap()["ann"].read, 4);
    }
}
