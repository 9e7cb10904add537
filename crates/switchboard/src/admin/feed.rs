//! The console's live feed: channels of the reserved namespace [`FEED_NAMESPACE`] that
//! only console connections may watch, into which the node pushes what the console
//! shows, every `admin.stats_interval`:
//!
//! - `_admin:stats`: every node (what the server API's `info` aggregates), the
//!   totals, and the channels with the most subscribers (`channels`);
//! - `_admin:presence:<channel>`: a channel's presence and its counts;
//! - `_admin:user:<user>`: a user's status on every node and their connections here.
//!
//! A view is computed by the node the console is connected to, once per interval for
//! all the consoles watching it there, and delivered to them only (not through the
//! engine). Nothing runs while no console watches: the loop starts with the first
//! watch and ends when the last one goes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_protocol::SharedJson;
use tokio::sync::Notify;

use super::FEED_NAMESPACE;
use crate::api::wire::{
    ChannelRequest, ChannelsRequest, Command, ErrorBody, InfoRequest, Reply, UserStatusRequest,
};
use crate::api::Api;
use crate::node::Node;
use crate::rules::Rules;

/// The stats view's channel.
pub const STATS: &str = "_admin:stats";
const PRESENCE_PREFIX: &str = "_admin:presence:";
const USER_PREFIX: &str = "_admin:user:";

/// Whether `channel` is in the feed's namespace.
pub fn is_feed(channel: &str) -> bool {
    channel
        .strip_prefix(FEED_NAMESPACE)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// One view of the feed.
#[derive(Debug, PartialEq, Eq)]
enum View<'a> {
    Stats,
    Presence(&'a str),
    User(&'a str),
}

impl<'a> View<'a> {
    /// The view a feed channel names, if any: a presence view names a channel of a
    /// configured namespace, a user view a user.
    fn parse(channel: &'a str, rules: &Rules) -> Option<Self> {
        if channel == STATS {
            return Some(Self::Stats);
        }
        if let Some(watched) = channel.strip_prefix(PRESENCE_PREFIX) {
            return rules
                .namespace(watched)
                .is_ok()
                .then_some(Self::Presence(watched));
        }
        channel
            .strip_prefix(USER_PREFIX)
            .filter(|u| !u.is_empty() && crate::channel::validate(channel, 1024).is_ok())
            .map(Self::User)
    }
}

/// Whether `channel` names a view of the feed (a console may watch it).
pub fn is_view(channel: &str, rules: &Rules) -> bool {
    View::parse(channel, rules).is_some()
}

/// The loop that computes the watched views: at most one per node.
#[derive(Debug, Default)]
pub struct Feed {
    running: AtomicBool,
    /// Computes at once (a new watcher should not wait a whole interval).
    wake: Notify,
}

impl Feed {
    /// Starts the loop unless it runs, and has it compute now.
    pub(crate) fn wake(&self, node: &Arc<Node>) {
        self.wake.notify_one();
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(node.clone()));
        }
    }
}

/// Computes and delivers the watched views every interval until none is watched.
async fn run(node: Arc<Node>) {
    let Some(console) = node.admin.clone() else {
        return;
    };
    let api = Api::new(node.clone());
    let interval = node.config.admin.stats_interval;
    loop {
        let watched = node.watched_feeds();
        if watched.is_empty() {
            console.feed.running.store(false, Ordering::Release);
            // A watch that came between the look and the store found the loop running
            // and did not start one: look again, and carry on if this loop is still
            // the one to run.
            if node.watched_feeds().is_empty() || console.feed.running.swap(true, Ordering::AcqRel)
            {
                return;
            }
            continue;
        }
        for channel in watched {
            let Some(view) = View::parse(&channel, &node.rules) else {
                continue;
            };
            if let Some(data) = compute(&api, &node, &view).await {
                node.deliver_local(&channel, data);
            }
        }
        tokio::select! {
            // Cancel-safe: sleeping holds no state.
            () = tokio::time::sleep(interval) => {}
            // Cancel-safe: a notification that arrives while nobody waits is kept.
            () = console.feed.wake.notified() => {}
            // Cancel-safe: holds no state.
            () = node.shutdown.cancelled() => return,
        }
    }
}

/// What `_admin:stats` carries.
#[derive(Serialize)]
struct Stats<'a> {
    /// Unix milliseconds.
    time: u64,
    /// The node that computed this (the console's).
    node: &'a str,
    /// Whether its engine answers.
    ready: bool,
    nodes: Option<serde_json::Value>,
    /// Channels with subscribers on any node.
    num_channels: usize,
    /// The `stats_channels` channels with the most subscribers, most first.
    channels: Vec<(String, u32)>,
    error: Option<ErrorBody>,
}

/// What `_admin:presence:<channel>` carries.
#[derive(Serialize)]
struct Presence<'a> {
    time: u64,
    channel: &'a str,
    presence: Option<serde_json::Value>,
    stats: Option<serde_json::Value>,
    error: Option<ErrorBody>,
}

/// What `_admin:user:<user>` carries.
#[derive(Serialize)]
struct User<'a> {
    time: u64,
    user: &'a str,
    status: Option<serde_json::Value>,
    /// The user's connections on this node.
    connections: Vec<Connection>,
    node: &'a str,
}

/// One connection of a user on this node.
#[derive(Serialize)]
struct Connection {
    client: String,
    channels: Vec<String>,
    expires_at: Option<u64>,
}

/// Runs one command through the server API's code path: its `result` as JSON.
async fn call(api: &Api, command: Command) -> Result<serde_json::Value, ErrorBody> {
    let reply = api.execute(command).await.map_err(|e| e.classify().1)?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&reply.to_response_json()).unwrap_or_default();
    Ok(value["result"].take())
}

async fn compute(api: &Api, node: &Node, view: &View<'_>) -> Option<SharedJson> {
    let time = crate::status::now_ms();
    let json = match *view {
        View::Stats => {
            let (info, channels, ready) = tokio::join!(
                call(api, Command::Info(InfoRequest {})),
                api.execute(Command::Channels(ChannelsRequest { pattern: None })),
                node.ready(),
            );
            let (mut top, num_channels) = match channels {
                Ok(Reply::Channels(r)) => {
                    let n = r.channels.len();
                    let top: Vec<(String, u32)> = r
                        .channels
                        .into_iter()
                        .map(|(name, info)| (name, info.num_clients))
                        .collect();
                    (top, n)
                }
                _ => (Vec::new(), 0),
            };
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(node.config.admin.stats_channels);
            let (nodes, error) = match info {
                Ok(v) => (Some(v["nodes"].clone()), None),
                Err(e) => (None, Some(e)),
            };
            serde_json::to_string(&Stats {
                time,
                node: &node.name,
                ready,
                nodes,
                num_channels,
                channels: top,
                error,
            })
        }
        View::Presence(channel) => {
            let request = || ChannelRequest {
                channel: channel.to_owned(),
            };
            let (presence, stats) = tokio::join!(
                call(api, Command::Presence(request())),
                call(api, Command::PresenceStats(request())),
            );
            let error = presence.as_ref().err().cloned();
            serde_json::to_string(&Presence {
                time,
                channel,
                presence: presence.ok().map(|mut p| p["presence"].take()),
                stats: stats.ok(),
                error,
            })
        }
        View::User(user) => {
            let status = call(
                api,
                Command::UserStatus(UserStatusRequest {
                    users: vec![user.to_owned()],
                }),
            )
            .await
            .ok()
            .map(|mut s| s["statuses"][0].take());
            let connections = node
                .user_sessions(user, None)
                .into_iter()
                .map(|s| Connection {
                    client: s.id.to_string(),
                    channels: s.channels().iter().map(ToString::to_string).collect(),
                    expires_at: s.expires_at(),
                })
                .collect();
            serde_json::to_string(&User {
                time,
                user,
                status,
                connections,
                node: &node.name,
            })
        }
    };
    let raw = RawValue::from_string(json.ok()?).ok()?;
    Some(SharedJson::from(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_named_by_their_channel() {
        let rules = Rules::new(&crate::Config::default());
        assert_eq!(View::parse("_admin:stats", &rules), Some(View::Stats));
        assert_eq!(
            View::parse("_admin:presence:user:42", &rules),
            Some(View::Presence("user:42"))
        );
        assert_eq!(View::parse("_admin:presence:nope:1", &rules), None);
        assert_eq!(
            View::parse("_admin:user:42", &rules),
            Some(View::User("42"))
        );
        assert_eq!(View::parse("_admin:user:", &rules), None);
        assert_eq!(View::parse("_admin:other", &rules), None);
        assert!(is_feed("_admin:stats") && is_feed("_admin:x"));
        assert!(!is_feed("_adminx:stats") && !is_feed("user:42") && !is_feed("_admin"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_only_while_a_view_is_watched() {
        use crate::event::{Codec, Frame};
        static CODEC: std::sync::LazyLock<Codec> = std::sync::LazyLock::new(|| {
            Codec::register("feed-test", |_, _| Frame::from_static(""))
        });
        let mut config = crate::Config::default();
        config.admin.enabled = true;
        config.admin.password = "pw".into();
        let interval = config.admin.stats_interval;
        let node = Node::new(config).unwrap();
        let console = node.admin.clone().unwrap();
        let running = || console.feed.running.load(Ordering::Acquire);
        assert!(!running(), "nothing runs before a console watches");
        let session = crate::session::Session::new(node.clone(), &CODEC);
        let stats: Arc<str> = STATS.into();
        node.watch_channel(&stats, &session).await.unwrap();
        assert!(running());
        node.unwatch_channel(&stats, &session).await;
        // The loop notices at its next round and ends.
        for _ in 0..3 {
            tokio::time::sleep(interval).await;
        }
        assert!(!running(), "nothing runs once no console watches");
        node.watch_channel(&stats, &session).await.unwrap();
        assert!(running(), "and it starts again with the next watch");
    }
}
