//! A session's subscriptions by channel: a vector sorted by channel name, not a hash
//! map. Every idle connection holds one, and most hold a few entries: a hash map keeps
//! room for at least 3 (4 slots) and grows by doubling, a vector here holds what it
//! has up to [`EXACT_UP_TO`] entries, and finds a channel by binary search at any size
//! (`client.max_channels_per_connection` is 128 by default).

use std::sync::Arc;

/// Up to this many entries the table grows one slot at a time; then by doubling.
const EXACT_UP_TO: usize = 4;

/// Subscriptions (`V`) by channel name.
pub(super) struct Subs<V> {
    entries: Vec<(Arc<str>, V)>,
}

impl<V> Default for Subs<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> Subs<V> {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(ch, _)| ch.as_ref().cmp(channel))
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn contains_key(&self, channel: &str) -> bool {
        self.find(channel).is_ok()
    }

    pub(super) fn get(&self, channel: &str) -> Option<&V> {
        let at = self.find(channel).ok()?;
        Some(&self.entries[at].1)
    }

    pub(super) fn get_mut(&mut self, channel: &str) -> Option<&mut V> {
        let at = self.find(channel).ok()?;
        Some(&mut self.entries[at].1)
    }

    /// Adds or replaces the subscription to `channel`; returns the one replaced.
    pub(super) fn insert(&mut self, channel: Arc<str>, value: V) -> Option<V> {
        match self.find(&channel) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                let len = self.entries.len();
                if len == self.entries.capacity() {
                    self.entries
                        .reserve_exact(if len < EXACT_UP_TO { 1 } else { len });
                }
                self.entries.insert(at, (channel, value));
                None
            }
        }
    }

    /// Removes the subscription to `channel`: its channel name as kept, and itself.
    pub(super) fn remove_entry(&mut self, channel: &str) -> Option<(Arc<str>, V)> {
        let at = self.find(channel).ok()?;
        let entry = self.entries.remove(at);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(entry)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        self.entries.iter().map(|(ch, v)| (ch, v))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.entries.iter().map(|(ch, _)| ch)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_replaces_and_removes_by_channel_and_holds_only_what_it_has() {
        let mut subs = Subs::default();
        let names: Vec<String> = (0..40).rev().map(|i| format!("ch:{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(subs.insert(n.as_str().into(), i), None);
            if i < EXACT_UP_TO {
                assert_eq!(subs.entries.capacity(), i + 1);
            }
        }
        assert_eq!(subs.len(), 40);
        assert_eq!(subs.insert("ch:7".into(), 100), Some(32));
        assert_eq!(subs.get("ch:7"), Some(&100));
        *subs.get_mut("ch:0").unwrap() = 7;
        assert_eq!(subs.get("ch:0"), Some(&7));
        assert!(!subs.contains_key("ch:40"));
        let keys: Vec<&str> = subs.keys().map(|k| k.as_ref()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        for n in &names {
            assert!(subs.remove_entry(n).is_some(), "{n}");
            assert!(subs.remove_entry(n).is_none());
        }
        assert_eq!(subs.entries.capacity(), 0);
        assert_eq!(subs.values().count(), 0);
    }
}
