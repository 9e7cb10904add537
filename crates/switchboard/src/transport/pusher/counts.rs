//! `pusher_internal:subscription_count`, for the apps whose `subscription_count` is on:
//! how many connections share a channel, told to its Pusher subscribers on this node
//! when the number moves or someone new subscribed, at most once per
//! `pusher.subscription_count_interval` per channel, so a channel that many join at
//! once gets one event per interval, not one per join. The number is the HTTP API's
//! `subscription_count`: connections of every protocol, on every live node (the
//! others' as of their last heartbeat). Presence channels count members instead, as
//! Pusher has it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::time::MissedTickBehavior;

use super::names::{self, Kind};
use super::wire::{self, CODEC};
use crate::config::PusherConfig;
use crate::event::{Frame, Outgoing};
use crate::node::{Node, NodeError};
use crate::session::Session;

/// New Pusher subscribers since the last round, noted by their connections once
/// their subscription is confirmed, for the task that tells the counts.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Short sections only.
    joined: Mutex<Vec<(Arc<str>, Arc<Session>)>>,
}

impl Counts {
    /// Starts telling counts on `node`, when an app asks for them.
    pub(super) fn start(node: &Arc<Node>) -> Option<Arc<Self>> {
        if !node.config.pusher.apps().any(|app| app.subscription_count) {
            return None;
        }
        let counts = Arc::new(Self::default());
        tokio::spawn(run(node.clone(), counts.clone()));
        Some(counts)
    }

    /// Notes `session`'s new subscription to `channel`, confirmed: the next round
    /// tells it the count, even if the number did not move (someone left meanwhile).
    pub(super) fn joined(&self, channel: &str, session: &Arc<Session>) {
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        joined.push((channel.into(), session.clone()));
    }

    fn take_joined(&self) -> Vec<(Arc<str>, Arc<Session>)> {
        std::mem::take(&mut *self.joined.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Whether `channel`'s Pusher subscribers are told its count: its app asks for counts
/// and it is no presence channel.
pub(super) fn counted(pusher: &PusherConfig, channel: &str) -> bool {
    let app = pusher.app_of_namespace(crate::channel::namespace(channel));
    app.is_some_and(|app| app.subscription_count)
        && Kind::of(&names::to_pusher(pusher, channel)) != Kind::Presence
}

/// Connections subscribed to each channel, summed over the live nodes (the others'
/// counts as of their last heartbeat), by switchboard channel.
///
/// # Errors
/// The engine could not list the nodes.
pub(super) async fn subscription_counts(node: &Node) -> Result<BTreeMap<String, u32>, NodeError> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for status in node.cluster_status().await? {
        for (channel, n) in status.channels {
            let total = counts.entry(channel).or_default();
            *total = total.saturating_add(n);
        }
    }
    Ok(counts)
}

/// One round per interval until the node shuts down.
async fn run(node: Arc<Node>, counts: Arc<Counts>) {
    let mut tick = tokio::time::interval(node.config.pusher.subscription_count_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut told = Told::default();
    loop {
        tokio::select! {
            // Cancel-safe: a timer.
            _ = tick.tick() => {}
            // Cancel-safe: a cancellation.
            () = node.shutdown.cancelled() => return,
        }
        if let Err(e) = round(&node, &counts, &mut told).await {
            tracing::warn!(error = %e, "pusher subscription counts");
        }
    }
}

/// Tells the subscribers of the counted channels on this node what moved.
async fn round(node: &Node, counts: &Counts, told: &mut Told) -> Result<(), NodeError> {
    let pusher = &node.config.pusher;
    let local: Vec<Arc<str>> = node
        .local_channels()
        .into_iter()
        .map(|(channel, _)| channel)
        .filter(|channel| counted(pusher, channel))
        .collect();
    let joined = counts.take_joined();
    if local.is_empty() {
        told.counts.clear();
        return Ok(());
    }
    let totals = subscription_counts(node).await?;
    let now: Vec<(Arc<str>, u32)> = local
        .into_iter()
        .map(|channel| {
            let n = totals.get(&*channel).copied().unwrap_or(0);
            (channel, n)
        })
        .collect();
    let moved = told.round(now);
    for (channel, n) in &moved {
        // Encoded once for all of the channel's Pusher subscribers here.
        let frame = count_frame(pusher, channel, *n);
        for session in node.local_subscribers(channel) {
            if session.codec_name() == CODEC.name {
                // A subscriber still waiting for its confirmation is told as a newcomer.
                session.push_about(channel, Outgoing::frame(frame.clone()));
            }
        }
    }
    for (channel, session) in joined {
        if moved.iter().any(|(c, _)| *c == channel) {
            continue;
        }
        if let Some(n) = told.counts.get(&channel) {
            session.push_about(&channel, Outgoing::frame(count_frame(pusher, &channel, *n)));
        }
    }
    Ok(())
}

fn count_frame(pusher: &PusherConfig, channel: &str, n: u32) -> Frame {
    Frame::from(wire::subscription_count(
        &names::to_pusher(pusher, channel),
        n,
    ))
}

/// What each channel's subscribers on this node were last told.
#[derive(Debug, Default)]
struct Told {
    counts: HashMap<Arc<str>, u32>,
}

impl Told {
    /// The channels whose subscribers are told, with their counts, given every counted
    /// channel with subscribers here and its count now: those whose count moved since
    /// it was last told. Forgets the channels no longer here.
    fn round(&mut self, now: Vec<(Arc<str>, u32)>) -> Vec<(Arc<str>, u32)> {
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(now.len());
        for (channel, n) in now {
            if self.counts.get(&channel) != Some(&n) {
                out.push((channel.clone(), n));
            }
            next.insert(channel, n);
        }
        self.counts = next;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(counts: &[(&str, u32)]) -> Vec<(Arc<str>, u32)> {
        counts.iter().map(|(c, n)| (Arc::from(*c), *n)).collect()
    }

    #[test]
    fn a_burst_between_rounds_is_told_once_with_the_latest_count() {
        let mut told = Told::default();
        assert_eq!(told.round(now(&[("a", 1)])), now(&[("a", 1)]));
        // Nine joins (and a leave) between two rounds: one event, the count as it is.
        assert_eq!(
            told.round(now(&[("a", 9), ("b", 2)])),
            now(&[("a", 9), ("b", 2)])
        );
        assert_eq!(
            told.round(now(&[("a", 9), ("b", 2)])),
            now(&[]),
            "nothing moved"
        );
        // A channel gone from this node is forgotten: back, it is told again.
        assert_eq!(told.round(now(&[("b", 2)])), now(&[]));
        assert_eq!(told.round(now(&[("a", 9), ("b", 2)])), now(&[("a", 9)]));
    }
}
