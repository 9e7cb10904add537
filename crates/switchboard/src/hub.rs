//! The hub: this node's index of channel -> sessions and user -> sessions.
//!
//! Sharded so a hot channel does not lock the world. Delivery never awaits a client:
//! it pushes into each session's bounded outbox and moves on.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use switchboard_protocol::{Disconnect, SharedJson};

use crate::delivery::Delivery;
use crate::engine::EventHandler;
use crate::event::{ChannelEvent, EventKind};
use crate::feed::{Feed, Place, RUN_MIN};
use crate::metrics::Metrics;
use crate::session::Session;

const CHANNEL_SHARDS: usize = 128;

type Index = HashMap<Arc<str>, Vec<Arc<Session>>>;
type ChannelIndex = HashMap<Arc<str>, Channel>;
const USER_SHARDS: usize = 32;

/// A local subscriber of a channel, with how it wants the channel's events when it
/// asked for anything but all of them as they are (`None`: the common case, which
/// costs the delivery loop one branch).
struct Subscriber {
    session: Arc<Session>,
    delivery: Option<Arc<Delivery>>,
}

/// How many subscribers ahead a fan-out asks for the recipient's session (see
/// [`Session::warm`]): a delivery that grows a run costs little more than the wait for
/// its lines, so they are asked for well ahead (6 spent less CPU per delivery than 3,
/// and 3 less than the 2 that suited the reads used before).
const WARM_AHEAD: usize = 6;

/// A channel's local subscribers.
#[derive(Default)]
struct Channel {
    subs: Vec<Subscriber>,
    /// Whether the node is subscribed upstream for them: set once the first
    /// subscriber's engine subscribe succeeded. Until then, later subscribers wait for
    /// the channel's upstream lock instead of joining at once ([`Hub::join_occupied`]).
    upstream: bool,
    /// While some subscriber takes deltas: what the next publication is a delta of.
    deltas: Option<Box<DeltaBase>>,
    /// Its recent events, while it has [`RUN_MIN`] subscribers or more (boxed: most
    /// channels have fewer, and every channel entry would carry it).
    feed: Option<Box<Feed>>,
}

/// The channel's last publication, kept while some local subscriber takes deltas.
#[derive(Default)]
struct DeltaBase {
    /// Subscribers taking deltas.
    takers: usize,
    /// Offset and payload of the last publication broadcast. Short sections only.
    last: Mutex<Option<(u64, SharedJson)>>,
}

impl Channel {
    fn subscribes(&self, session: &Session) -> bool {
        self.subs
            .iter()
            .any(|s| std::ptr::eq(Arc::as_ptr(&s.session), session))
    }

    fn add(&mut self, session: &Arc<Session>, delivery: Option<Arc<Delivery>>) {
        if self.subscribes(session) {
            return;
        }
        if delivery.as_deref().is_some_and(Delivery::takes_deltas) {
            self.deltas.get_or_insert_with(Box::default).takers += 1;
        }
        // Room for one at first: many channels have a single subscriber (a user's own),
        // and a first push would make room for four.
        self.subs
            .reserve_exact(usize::from(self.subs.capacity() == 0));
        self.subs.push(Subscriber {
            session: session.clone(),
            delivery,
        });
        if self.subs.len() >= RUN_MIN && self.feed.is_none() {
            self.feed = Some(Box::default());
        }
    }

    /// Removes `session`; false when it was not a subscriber.
    fn remove(&mut self, session: &Session) -> bool {
        let Some(at) = self
            .subs
            .iter()
            .position(|s| std::ptr::eq(Arc::as_ptr(&s.session), session))
        else {
            return false;
        };
        let gone = self.subs.swap_remove(at);
        if self.subs.len() < RUN_MIN {
            self.feed = None;
        }
        if gone.delivery.as_deref().is_some_and(Delivery::takes_deltas) {
            if let Some(d) = &mut self.deltas {
                d.takers -= 1;
                if d.takers == 0 {
                    self.deltas = None;
                }
            }
        }
        true
    }
}

impl DeltaBase {
    /// Gives `event` the previous payload when it directly follows it, and keeps its
    /// own for the next. Broadcasts of one channel come in order (the engine delivers
    /// each channel's events one at a time), and the offset check keeps a gap from
    /// ever pairing a delta with the wrong base.
    fn note(&self, event: &ChannelEvent) {
        let EventKind::Publication(p) = &event.kind else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((offset, data)) = last.as_ref() {
            if p.offset > 0 && offset.checked_add(1) == Some(p.offset) {
                event.set_base(data.clone());
            }
        }
        *last = (p.offset > 0).then(|| (p.offset, p.data.clone()));
    }

    /// Takes the stream's publication at `offset` (read from history) as the base of
    /// the next one, unless a broadcast already gave one: the first live publication
    /// after a recovery is then a delta too, even for the channel's only delta taker.
    fn seed(&self, offset: u64, data: &SharedJson) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none() {
            *last = Some((offset, data.clone()));
        }
    }
}

/// Node-local index of sessions.
pub struct Hub {
    /// Read-locked per delivery, write-locked per (un)subscribe.
    channels: Box<[RwLock<ChannelIndex>]>,
    /// Short critical sections only.
    users: Box<[Mutex<Index>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Where deliveries are counted per namespace, when the hub belongs to a node.
    metrics: Option<Arc<Metrics>>,
    /// Sessions that watch channels without subscribing (operator consoles): delivered
    /// to like subscribers, never counted in [`Hub::channels`]. Usually empty, so a
    /// delivery looks at `watched` before taking this lock. Short sections only.
    watchers: Mutex<Index>,
    /// How many channels have watchers.
    watched: AtomicUsize,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            channels: (0..CHANNEL_SHARDS).map(|_| RwLock::default()).collect(),
            users: (0..USER_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            metrics: None,
            watchers: Mutex::default(),
            watched: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    /// A hub that counts its deliveries per namespace into `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    fn index(&self, key: &str, n: usize) -> usize {
        (self.hasher.hash_one(key) as usize) % n
    }

    /// The channel's shard of the index, to read (every delivery).
    fn shard(&self, channel: &str) -> RwLockReadGuard<'_, ChannelIndex> {
        self.channels[self.index(channel, CHANNEL_SHARDS)]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The channel's shard of the index, to change (every subscribe and unsubscribe).
    fn shard_mut(&self, channel: &str) -> RwLockWriteGuard<'_, ChannelIndex> {
        self.channels[self.index(channel, CHANNEL_SHARDS)]
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber, with how it wants the channel's events (`None`: all, as
    /// they are). Returns true when it is the channel's first on this node.
    pub fn subscribe(
        &self,
        channel: &Arc<str>,
        session: &Arc<Session>,
        delivery: Option<Arc<Delivery>>,
    ) -> bool {
        let mut shard = self.shard_mut(channel);
        let entry = shard.entry(channel.clone()).or_default();
        entry.add(session, delivery);
        entry.subs.len() == 1
    }

    /// Adds a subscriber to a channel that has local subscribers and is subscribed
    /// upstream already, which needs no upstream change: a burst of subscribes to one
    /// channel then never queues on the channel's upstream lock. Returns false, adding
    /// nothing, when the channel has no local subscriber or its first one's upstream
    /// subscribe is under way (see [`crate::upstream::Upstream::subscribe`]).
    pub fn join_occupied(
        &self,
        channel: &Arc<str>,
        session: &Arc<Session>,
        delivery: Option<Arc<Delivery>>,
    ) -> bool {
        let mut shard = self.shard_mut(channel);
        match shard.get_mut(channel) {
            Some(entry) if entry.upstream => {
                entry.add(session, delivery);
                true
            }
            _ => false,
        }
    }

    /// Notes that the node is subscribed upstream for the channel's local subscribers.
    pub fn set_upstream(&self, channel: &str) {
        let mut shard = self.shard_mut(channel);
        if let Some(entry) = shard.get_mut(channel) {
            entry.upstream = true;
        }
    }

    /// Gives `channel`'s delta subscribers a base for the publication after `offset`
    /// when none is known yet: `data` is the stream's publication at `offset`, which a
    /// subscriber just recovered up to.
    pub fn seed_delta_base(&self, channel: &str, offset: u64, data: &SharedJson) {
        let shard = self.shard(channel);
        if let Some(d) = shard.get(channel).and_then(|c| c.deltas.as_ref()) {
            d.seed(offset, data);
        }
    }

    /// Removes a subscriber. Returns true when the channel has none left on this node.
    pub fn unsubscribe(&self, channel: &str, session: &Session) -> bool {
        let mut shard = self.shard_mut(channel);
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        if !entry.remove(session) {
            return false;
        }
        if entry.subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Removes a subscriber unless it is the channel's last on this node, which needs
    /// no upstream change (the counterpart of [`Hub::join_occupied`]). Returns false,
    /// removing nothing, when it is the last (or the channel's upstream subscribe is
    /// under way): the caller then unsubscribes under the channel's upstream lock.
    pub fn leave_occupied(&self, channel: &str, session: &Session) -> bool {
        let mut shard = self.shard_mut(channel);
        match shard.get_mut(channel) {
            // Not subscribed here: nothing to do, with or without the lock.
            None => true,
            Some(entry) if entry.upstream && entry.subs.len() > 1 => {
                entry.remove(session);
                true
            }
            Some(entry) => !entry.subscribes(session),
        }
    }

    /// Delivers an event to every local subscriber of its channel (and its watchers).
    /// Returns how many subscribers.
    pub fn broadcast(&self, event: &Arc<ChannelEvent>) -> usize {
        let delivered = {
            let shard = self.shard(&event.channel);
            match shard.get(&event.channel) {
                Some(channel) => {
                    if let Some(d) = &channel.deltas {
                        d.note(event);
                    }
                    // A busy channel's plain subscribers queue runs of its feed.
                    let placed = channel.feed.as_ref().and_then(|f| f.append(event));
                    let place = placed.as_ref().map(|(chunk, at)| Place { chunk, at: *at });
                    let mut delivered = 0;
                    for (i, s) in channel.subs.iter().enumerate() {
                        if let Some(ahead) = channel.subs.get(i + WARM_AHEAD) {
                            ahead.session.warm();
                        }
                        if let Some(d) = &s.delivery {
                            if !d.admits(event) {
                                s.session.filtered_out(event);
                                continue;
                            }
                        }
                        s.session.deliver(event, s.delivery.as_deref(), place);
                        delivered += 1;
                    }
                    if let Some(m) = &self.metrics {
                        m.namespaces.delivered(&event.channel, delivered);
                    }
                    delivered
                }
                None => 0,
            }
        };
        if self.watched.load(Ordering::Acquire) > 0 {
            for s in self.watchers_of(&event.channel) {
                s.deliver(event, None, None);
            }
        }
        delivered
    }

    /// Whether the channel has subscribers on this node (watchers aside).
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.shard(channel).contains_key(channel)
    }

    /// The channel's subscribers on this node (watchers aside), for a transport's own
    /// pushes about the channel.
    pub fn subscribers(&self, channel: &str) -> Vec<Arc<Session>> {
        self.shard(channel)
            .get(channel)
            .map(|c| c.subs.iter().map(|s| s.session.clone()).collect())
            .unwrap_or_default()
    }

    fn watcher_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watchers_of(&self, channel: &str) -> Vec<Arc<Session>> {
        self.watcher_index()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// Adds a watcher: it receives the channel's events but is no subscriber (not
    /// counted, no presence). Returns true when it is the channel's first watcher.
    pub fn watch(&self, channel: &Arc<str>, session: &Arc<Session>) -> bool {
        let mut watchers = self.watcher_index();
        let list = watchers.entry(channel.clone()).or_default();
        if !list.iter().any(|s| Arc::ptr_eq(s, session)) {
            list.push(session.clone());
        }
        let first = list.len() == 1;
        if first {
            self.watched.fetch_add(1, Ordering::AcqRel);
        }
        first
    }

    /// Removes a watcher. Returns true when the channel has no watcher left.
    pub fn unwatch(&self, channel: &str, session: &Session) -> bool {
        let mut watchers = self.watcher_index();
        let Some(list) = watchers.get_mut(channel) else {
            return false;
        };
        list.retain(|s| !std::ptr::eq(Arc::as_ptr(s), session));
        if list.is_empty() {
            watchers.remove(channel);
            self.watched.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// Whether the channel has watchers on this node.
    pub fn is_watched(&self, channel: &str) -> bool {
        self.watched.load(Ordering::Acquire) > 0 && self.watcher_index().contains_key(channel)
    }

    /// Channels with watchers on this node.
    pub fn watched_channels(&self) -> Vec<Arc<str>> {
        if self.watched.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.watcher_index().keys().cloned().collect()
    }

    /// Channels with local subscribers and their counts.
    pub fn channels(&self) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.channels.iter() {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.iter().map(|(k, v)| (k.clone(), v.subs.len())));
        }
        out
    }

    /// Registers an authenticated session under its user unless the user already has
    /// `limit` sessions (0 = no limit). Returns false when the limit is reached.
    pub fn add_user_session(&self, user: &Arc<str>, session: &Arc<Session>, limit: usize) -> bool {
        let mut shard = self.users[self.index(user, USER_SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let list = shard.entry(user.clone()).or_default();
        if limit > 0 && list.len() >= limit {
            if list.is_empty() {
                shard.remove(user);
            }
            return false;
        }
        // Room for one at first: most users are connected once (see `Channel::add`).
        list.reserve_exact(usize::from(list.capacity() == 0));
        list.push(session.clone());
        true
    }

    /// Unregisters a session. Returns how many sessions the user has left.
    pub fn remove_user_session(&self, user: &str, session: &Session) -> usize {
        let mut shard = self.users[self.index(user, USER_SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(list) = shard.get_mut(user) else {
            return 0;
        };
        list.retain(|s| !std::ptr::eq(Arc::as_ptr(s), session));
        let left = list.len();
        if left == 0 {
            shard.remove(user);
        }
        left
    }

    /// The sessions of a user on this node.
    pub fn user_sessions(&self, user: &str) -> Vec<Arc<Session>> {
        self.users[self.index(user, USER_SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Every authenticated session on this node (anonymous ones excepted).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut out = Vec::new();
        for shard in self.users.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.values().flatten().cloned());
        }
        out
    }

    /// Users with a session on this node.
    pub fn users(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in self.users.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.keys().cloned());
        }
        out
    }

    /// Distinct users and sessions on this node.
    pub fn counts(&self) -> (usize, usize) {
        let mut users = 0;
        let mut clients = 0;
        for shard in self.users.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            users += shard.len();
            clients += shard.values().map(Vec::len).sum::<usize>();
        }
        (users, clients)
    }
}

impl EventHandler for Hub {
    fn on_event(&self, channel: &Arc<str>, kind: EventKind) {
        self.broadcast(&ChannelEvent::new(channel.clone(), kind));
    }

    fn on_lost(&self, channel: &Arc<str>) {
        let mut subs: Vec<Arc<Session>> = self
            .shard(channel)
            .get(channel)
            .map(|c| c.subs.iter().map(|s| s.session.clone()).collect())
            .unwrap_or_default();
        if self.watched.load(Ordering::Acquire) > 0 {
            subs.extend(self.watchers_of(channel));
        }
        if !subs.is_empty() {
            tracing::warn!(%channel, sessions = subs.len(), "missed events: subscribers reconnect to recover");
        }
        // Reconnecting, each client recovers from history what it missed (or learns
        // it can not), instead of silently skipping it.
        for s in subs {
            s.close(Disconnect::INSUFFICIENT_STATE);
        }
    }
}
