//! The node's one Redis pub/sub connection: one upstream subscription per channel with
//! local subscribers, events decoded once and handed to the hub, reconnection with
//! backoff and resubscription, and detection of missed events.
//!
//! On a Redis Cluster the subscriptions are sharded (`SSUBSCRIBE`): each goes to the
//! shard owning its channel's slot, over the cluster connection, which subscribes
//! again by itself after a reconnect.
//!
//! Messages are `p <offset> <epoch> <publication JSON>` (offset 0 and epoch `-` when
//! the channel keeps no history), `j <client info JSON>` and `l <client info JSON>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use switchboard_protocol::{ClientInfo, Publication};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::connection::Feed;
use super::Keys;
use crate::engine::{EngineError, EventHandler};
use crate::event::EventKind;

/// Where a channel's stream was when this node last heard of it.
#[derive(Debug, Default)]
struct Position {
    epoch: String,
    offset: u64,
}

/// State shared by the pub/sub task and the engine's subscribe calls.
pub(super) struct Subscriber {
    keys: Keys,
    /// Channels this node wants, with the last position seen in each. Short critical
    /// sections only (one per received message), never across an await.
    channels: Mutex<HashMap<Arc<str>, Option<Position>>>,
    /// Where (un)subscribe commands go; `None` while reconnecting. Cloned out of the
    /// lock before use.
    sink: Mutex<Option<Sink>>,
    connected: AtomicBool,
    timeout: Duration,
}

/// The command half of the pub/sub link.
#[derive(Clone)]
enum Sink {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

impl Sink {
    async fn subscribe(&mut self, name: String) -> redis::RedisResult<()> {
        match self {
            Self::Single(s) => s.subscribe(name).await,
            Self::Cluster(c) => c.ssubscribe(name).await,
        }
    }

    async fn unsubscribe(&mut self, name: String) -> redis::RedisResult<()> {
        match self {
            Self::Single(s) => s.unsubscribe(name).await,
            Self::Cluster(c) => c.sunsubscribe(name).await,
        }
    }
}

impl Subscriber {
    /// Starts the pub/sub task.
    pub(super) fn spawn(
        feed: Feed,
        keys: Keys,
        handler: Arc<dyn EventHandler>,
        connect_timeout: Duration,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            keys,
            channels: Mutex::default(),
            sink: Mutex::default(),
            connected: AtomicBool::new(false),
            timeout,
        });
        match feed {
            Feed::Single(client) => {
                tokio::spawn(me.clone().run(*client, handler, connect_timeout, shutdown));
            }
            Feed::Cluster(conn, pushes) => {
                tokio::spawn(me.clone().run_cluster(conn, pushes, handler, shutdown));
            }
        }
        me
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<Arc<str>, Option<Position>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current_sink(&self) -> Option<Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_sink(&self, sink: Option<Sink>) {
        self.connected.store(sink.is_some(), Ordering::Release);
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// Whether the pub/sub connection is up.
    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Subscribes upstream; returns once Redis confirmed, so no later publication of
    /// the channel can be missed.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let name = Arc::<str>::from(channel);
        self.channels().insert(name.clone(), None);
        let result = match self.current_sink() {
            Some(mut sink) => {
                match tokio::time::timeout(self.timeout, sink.subscribe(self.keys.pubsub(channel)))
                    .await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(EngineError::Unavailable(e.to_string())),
                    Err(_) => Err(EngineError::Unavailable("redis subscribe timed out".into())),
                }
            }
            None => Err(EngineError::Unavailable(
                "redis pub/sub reconnecting".into(),
            )),
        };
        if result.is_err() {
            self.channels().remove(&name);
        }
        result
    }

    /// Unsubscribes upstream. The channel is forgotten even if Redis is unreachable:
    /// a reconnect does not subscribe it again.
    pub(super) async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.channels().remove(channel);
        let Some(mut sink) = self.current_sink() else {
            return Ok(());
        };
        match tokio::time::timeout(self.timeout, sink.unsubscribe(self.keys.pubsub(channel))).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Unavailable(e.to_string())),
            Err(_) => Err(EngineError::Unavailable(
                "redis unsubscribe timed out".into(),
            )),
        }
    }

    async fn run(
        self: Arc<Self>,
        client: redis::Client,
        handler: Arc<dyn EventHandler>,
        connect_timeout: Duration,
        shutdown: CancellationToken,
    ) {
        const MIN_BACKOFF: Duration = Duration::from_millis(50);
        const MAX_BACKOFF: Duration = Duration::from_secs(2);
        let mut backoff = MIN_BACKOFF;
        let mut lost_connection = false;
        loop {
            let connect = tokio::time::timeout(connect_timeout, client.get_async_pubsub());
            // Both arms are cancel-safe: a dropped connect attempt is simply retried.
            let pubsub = tokio::select! {
                r = connect => r,
                () = shutdown.cancelled() => return,
            };
            let pubsub = match pubsub {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub: connect failed");
                    if sleep_or_stop(backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(retry_in = ?backoff, "redis pub/sub: connect timed out");
                    if sleep_or_stop(backoff, &shutdown).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let control = self.keys.control();
            let wanted: Vec<String> = std::iter::once(control.clone())
                .chain(self.channels().keys().map(|c| self.keys.pubsub(c)))
                .collect();
            let resubscribe = tokio::time::timeout(self.timeout, sink.subscribe(&wanted));
            if !matches!(resubscribe.await, Ok(Ok(()))) {
                tracing::warn!("redis pub/sub: resubscribe failed");
                if sleep_or_stop(backoff, &shutdown).await {
                    return;
                }
                continue;
            }
            // Subscribe calls from now on go to this connection; one that raced the
            // snapshot above is simply sent twice (Redis ignores the repeat).
            self.set_sink(Some(Sink::Single(sink)));
            backoff = MIN_BACKOFF;
            if lost_connection {
                tracing::info!(channels = wanted.len() - 1, "redis pub/sub: reconnected");
            }
            loop {
                // Both arms are cancel-safe (a stream's next item, a cancellation).
                let msg = tokio::select! {
                    m = stream.next() => m,
                    () = shutdown.cancelled() => return,
                };
                let Some(msg) = msg else { break };
                self.dispatch(
                    msg.get_channel_name(),
                    &control,
                    msg.get_payload_bytes(),
                    &*handler,
                );
            }
            self.set_sink(None);
            lost_connection = true;
            tracing::warn!("redis pub/sub: connection lost, reconnecting");
        }
    }

    /// The pub/sub task on a cluster: hands over the sharded messages the cluster
    /// connection pushes. The subscriptions (the control channel's first) are made again
    /// after any shard's connection broke, retried with backoff until every one is
    /// confirmed: the cluster connection re-establishes some by itself, not reliably all.
    /// Until then the node is not ready.
    async fn run_cluster(
        self: Arc<Self>,
        conn: ClusterConnection,
        mut pushes: UnboundedReceiver<PushInfo>,
        handler: Arc<dyn EventHandler>,
        shutdown: CancellationToken,
    ) {
        const MIN_BACKOFF: Duration = Duration::from_millis(50);
        const MAX_BACKOFF: Duration = Duration::from_secs(2);
        let control = self.keys.control();
        *self.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(Sink::Cluster(conn.clone()));
        let mut backoff = MIN_BACKOFF;
        let mut resubscribe = Some(tokio::time::Instant::now());
        loop {
            let at = resubscribe.unwrap_or_else(tokio::time::Instant::now);
            // Every arm is cancel-safe (a channel receive, a sleep, a cancellation).
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { return };
                    match (push.kind, push.data.as_slice()) {
                        (
                            PushKind::SMessage,
                            [Value::BulkString(name), Value::BulkString(payload)],
                        ) => {
                            if let Ok(name) = std::str::from_utf8(name) {
                                self.dispatch(name, &control, payload, &*handler);
                            }
                        }
                        (PushKind::Disconnection, _) => {
                            tracing::warn!("redis cluster pub/sub: a shard connection was lost");
                            self.connected.store(false, Ordering::Release);
                            resubscribe.get_or_insert(tokio::time::Instant::now() + backoff);
                        }
                        _ => {}
                    }
                }
                () = tokio::time::sleep_until(at), if resubscribe.is_some() => {
                    if self.resubscribe_cluster(&conn, &control).await {
                        resubscribe = None;
                        backoff = MIN_BACKOFF;
                        self.connected.store(true, Ordering::Release);
                    } else {
                        tracing::warn!(retry_in = ?backoff, "redis cluster pub/sub: resubscribe failed");
                        resubscribe = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Subscribes (again) to the control channel and every wanted channel; true when
    /// all were confirmed. Subscribing twice is harmless (Redis confirms and delivers
    /// once).
    async fn resubscribe_cluster(&self, conn: &ClusterConnection, control: &str) -> bool {
        let names: Vec<String> = std::iter::once(control.to_owned())
            .chain(self.channels().keys().map(|c| self.keys.pubsub(c)))
            .collect();
        // Concurrent commands are pipelined on each shard's connection.
        let results = futures_util::future::join_all(names.iter().map(|name| {
            let mut conn = conn.clone();
            async move { tokio::time::timeout(self.timeout, conn.ssubscribe(name)).await }
        }))
        .await;
        if !results.iter().all(|r| matches!(r, Ok(Ok(())))) {
            return false;
        }
        // A channel given up while this ran must not stay subscribed.
        for name in names.iter().skip(1) {
            let gone = self
                .keys
                .channel_of(name)
                .is_some_and(|c| !self.channels().contains_key(c));
            if gone {
                let mut conn = conn.clone();
                let _ = tokio::time::timeout(self.timeout, conn.sunsubscribe(name)).await;
            }
        }
        true
    }

    /// Routes one pub/sub message: a command between nodes, or a channel's event.
    fn dispatch(&self, name: &str, control: &str, payload: &[u8], handler: &dyn EventHandler) {
        if name == control {
            handler.on_control(payload);
        } else if let Some(channel) = self.keys.channel_of(name) {
            self.handle(channel, payload, handler);
        }
    }

    /// Decodes one message and hands it to the hub; a gap in a channel's offsets (or a
    /// new epoch) means this node missed publications, which its subscribers learn.
    fn handle(&self, channel: &str, payload: &[u8], handler: &dyn EventHandler) {
        let Some((tag, rest)) = payload.split_first() else {
            return;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        let kind = match tag {
            b'p' => {
                let Some((offset, epoch, json)) = split_publication(rest) else {
                    return;
                };
                let Ok(mut publication) = serde_json::from_slice::<Publication>(json) else {
                    tracing::warn!(%channel, "redis pub/sub: undecodable publication");
                    return;
                };
                publication.offset = offset;
                let (name, lost) = {
                    let mut channels = self.channels();
                    let Some((name, _)) = channels.get_key_value(channel) else {
                        return;
                    };
                    let name = name.clone();
                    let lost = match channels.get_mut(channel) {
                        Some(pos) if offset > 0 => track(pos, epoch, offset),
                        _ => false,
                    };
                    (name, lost)
                };
                if lost {
                    handler.on_lost(&name);
                }
                handler.on_event(&name, EventKind::Publication(publication));
                return;
            }
            b'j' | b'l' => {
                let Ok(info) = serde_json::from_slice::<ClientInfo>(rest) else {
                    return;
                };
                if *tag == b'j' {
                    EventKind::Join(info)
                } else {
                    EventKind::Leave(info)
                }
            }
            _ => return,
        };
        let name = {
            let channels = self.channels();
            let Some((name, _)) = channels.get_key_value(channel) else {
                return;
            };
            name.clone()
        };
        handler.on_event(&name, kind);
    }
}

/// Records a publication at `epoch`/`offset`; true when publications were skipped
/// since the last one seen.
fn track(pos: &mut Option<Position>, epoch: &str, offset: u64) -> bool {
    let lost = match pos {
        Some(p) => p.epoch != epoch || offset > p.offset + 1,
        None => false,
    };
    *pos = Some(Position {
        epoch: epoch.to_owned(),
        offset,
    });
    lost
}

/// Splits `<offset> <epoch> <json>`.
fn split_publication(rest: &[u8]) -> Option<(u64, &str, &[u8])> {
    let mut parts = rest.splitn(3, |b| *b == b' ');
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    Some((offset, epoch, parts.next()?))
}

/// Sleeps; true when shutdown came first.
async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_new_epochs_are_losses() {
        let mut pos = None;
        assert!(!track(&mut pos, "e1", 5), "first publication seen");
        assert!(!track(&mut pos, "e1", 6));
        assert!(track(&mut pos, "e1", 8), "7 was missed");
        assert!(track(&mut pos, "e2", 1), "the stream was reset");
        assert!(!track(&mut pos, "e2", 2));
    }

    #[test]
    fn publication_messages_split() {
        assert_eq!(
            split_publication(br#"3 ab12 {"data":1}"#),
            Some((3, "ab12", &br#"{"data":1}"#[..]))
        );
        assert_eq!(split_publication(b"x y z"), None);
    }
}
