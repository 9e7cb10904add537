//! The node's side of the inbox: delivered positions noted as publications reach the
//! users' connections (written to the store in the background), and receipts:
//! marking delivered or read, syncing a read to the user's other connections on every
//! node, read receipts in channels that enable them, and what the server API reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_protocol::{Publication, SharedJson, StreamPosition};

use super::{Node, NodeError};
use crate::cluster::UserCommand;
use crate::config::NamespaceConfig;
use crate::engine::HistoryQuery;
use crate::event::{Control, Outgoing};
use crate::inbox::{Mark, Marks};

/// The publication tag `event` of read receipts: Socket.IO clients get them as this
/// event, Centrifugo clients as publications carrying the tag.
pub const RECEIPT_EVENT: &str = "inbox:receipt";

/// How long inbox positions outlive their last change: as long as a stream's epoch and
/// offset do, so a user back after a long absence is told what was lost.
pub fn inbox_keep(ns: &NamespaceConfig) -> Duration {
    ns.history_ttl.max(Duration::from_secs(7 * 24 * 3600))
}

/// A user and an inbox channel.
type UserChannel = (Arc<str>, Arc<str>);

/// Delivered positions noted on the delivery path, not yet in the store: the last
/// offset per (user, channel). Short critical sections only.
#[derive(Default)]
pub(crate) struct PendingMarks {
    marks: Mutex<HashMap<UserChannel, StreamPosition>>,
    wake: tokio::sync::Notify,
}

/// A user's inbox in one channel, as the server API reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxChannel {
    /// Channel.
    pub channel: String,
    /// The stream's current epoch.
    pub epoch: String,
    /// The stream's top offset.
    pub offset: u64,
    /// Last offset handed to one of the user's connections (0: none of this epoch).
    pub delivered: u64,
    /// Last offset the user marked read (0: none of this epoch).
    pub read: u64,
    /// Publications after `read` (the stream's top minus `read`; some may have left
    /// history already).
    pub unread: u64,
}

/// What a read-sync push and a read receipt carry.
#[derive(Debug, Clone, Serialize)]
pub struct InboxUpdate {
    /// Whose positions (absent in the sync push: it goes to that user only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Channel.
    pub channel: String,
    /// Epoch of the offsets.
    pub epoch: String,
    /// Delivered offset.
    pub delivered: u64,
    /// Read offset.
    pub read: u64,
}

/// The `message` push (Centrifugo) announcing a moved read position:
/// `{"type":"inbox.read","channel","epoch","delivered","read"}`.
pub fn read_push_data(channel: &str, marks: &Marks) -> Option<SharedJson> {
    to_shared(&serde_json::json!({
        "type": "inbox.read",
        "channel": channel,
        "epoch": marks.epoch,
        "delivered": marks.delivered,
        "read": marks.read,
    }))
}

impl Node {
    /// Notes that the publication at `offset` of `channel` (stream epoch `epoch`) was
    /// queued to a connection of `user`. Never blocks: the store is written in the
    /// background (see [`Node::flush_inbox`]).
    pub fn note_delivered(
        &self,
        user: &Arc<str>,
        channel: &Arc<str>,
        epoch: &Arc<str>,
        offset: u64,
    ) {
        let mut marks = self
            .inbox_pending
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = marks
            .entry((user.clone(), channel.clone()))
            .or_insert_with(|| StreamPosition {
                offset,
                epoch: epoch.to_string(),
            });
        if *entry.epoch != **epoch || entry.offset < offset {
            entry.offset = offset;
            entry.epoch = epoch.to_string();
        }
        drop(marks);
        self.inbox_pending.wake.notify_one();
    }

    /// Writes the delivered positions noted so far to the store.
    pub async fn flush_inbox(&self) {
        let marks = std::mem::take(
            &mut *self
                .inbox_pending
                .marks
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for ((user, channel), position) in marks {
            let Ok(ns) = self.rules.namespace(&channel) else {
                continue;
            };
            let keep = inbox_keep(ns);
            if let Err(e) = self
                .inbox
                .advance(&user, &channel, Mark::Delivered, &position, keep, false)
                .await
            {
                tracing::warn!(%user, %channel, error = %e, "delivered position not stored");
            }
        }
    }

    /// Writes the delivered position noted for `user` in `channel`, if one waits: a
    /// session about to read it must not get what another of the user's connections
    /// was just handed.
    pub(crate) async fn flush_inbox_of(&self, user: &str, channel: &str) {
        let key: UserChannel = (user.into(), channel.into());
        let position = self
            .inbox_pending
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let (Some(position), Ok(ns)) = (position, self.rules.namespace(channel)) else {
            return;
        };
        let keep = inbox_keep(ns);
        if let Err(e) = self
            .inbox
            .advance(user, channel, Mark::Delivered, &position, keep, false)
            .await
        {
            tracing::warn!(%user, %channel, error = %e, "delivered position not stored");
        }
    }

    /// Writes noted delivered positions as they come, until shutdown (and once more
    /// then).
    pub(crate) fn spawn_inbox_flusher(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                // Both arms are cancel-safe: a `Notify` keeps a permit for a waiter
                // that is not there yet, and a cancellation.
                tokio::select! {
                    () = node.inbox_pending.wake.notified() => node.flush_inbox().await,
                    () = node.shutdown.cancelled() => {
                        node.flush_inbox().await;
                        return;
                    }
                }
            }
        });
    }

    /// `user`'s positions in `channel`, if any.
    ///
    /// # Errors
    /// An engine failure.
    pub async fn inbox_marks(&self, user: &str, channel: &str) -> Result<Option<Marks>, NodeError> {
        Ok(self.inbox.marks(user, channel).await?)
    }

    /// Records that the subscription of `user` to `channel` handed out everything up to
    /// `top`. Failures are logged: the subscription stands, and the next one may hand
    /// out some publications again.
    pub(crate) async fn inbox_subscribed(
        &self,
        user: &str,
        channel: &str,
        ns: &NamespaceConfig,
        top: &StreamPosition,
    ) {
        if let Err(e) = self
            .inbox
            .advance(user, channel, Mark::Delivered, top, inbox_keep(ns), false)
            .await
        {
            tracing::warn!(%user, %channel, error = %e, "delivered position not stored");
        }
    }

    /// Moves `user`'s `mark` in `channel` to `offset` (of `epoch`; empty: the stream's
    /// current one), capped at the stream's top. A read that moved is pushed to the
    /// user's connections on every node but `except`, and, where the namespace has
    /// `read_receipts`, published to the channel's subscribers.
    ///
    /// # Errors
    /// Unknown channel; `NotAvailable` outside an inbox namespace;
    /// `UnrecoverablePosition` for another epoch than the stream's; an engine failure.
    pub async fn inbox_mark(
        &self,
        user: &str,
        channel: &str,
        mark: Mark,
        offset: u64,
        epoch: &str,
        except: Option<&str>,
    ) -> Result<Marks, NodeError> {
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.inbox || user.is_empty() {
            return Err(NodeError::NotAvailable);
        }
        let top = self.stream_top(channel, &ns).await?;
        if !epoch.is_empty() && epoch != top.epoch {
            return Err(NodeError::UnrecoverablePosition);
        }
        let position = StreamPosition {
            offset: offset.min(top.offset),
            epoch: top.epoch,
        };
        let (marks, changed) = self
            .inbox
            .advance(
                user,
                channel,
                mark,
                &position,
                inbox_keep(&ns),
                ns.read_receipts,
            )
            .await?;
        if changed && mark == Mark::Read {
            let sync = UserCommand::InboxRead {
                user: user.to_owned(),
                channel: channel.to_owned(),
                marks: marks.clone(),
                except: except.map(str::to_owned),
            };
            if let Err(e) = self.run_everywhere(sync).await {
                tracing::warn!(%user, %channel, error = %e, "read not synced to other nodes");
            }
            if ns.read_receipts {
                self.publish_receipt(user, channel, &marks).await;
            }
        }
        Ok(marks)
    }

    async fn publish_receipt(&self, user: &str, channel: &str, marks: &Marks) {
        let update = InboxUpdate {
            user: Some(user.to_owned()),
            channel: channel.to_owned(),
            epoch: marks.epoch.clone(),
            delivered: marks.delivered,
            read: marks.read,
        };
        let Some(data) = to_shared(&update) else {
            return;
        };
        let tags = BTreeMap::from([(
            crate::transport::socketio::EVENT_TAG.to_owned(),
            RECEIPT_EVENT.to_owned(),
        )]);
        let channel: Arc<str> = channel.into();
        let publication = Publication {
            data,
            info: None,
            offset: 0,
            tags: Some(Arc::new(tags)),
            exclude_client: None,
        };
        // Not kept in history: the readers list is the record.
        if let Err(e) = self.engine.publish(&channel, publication, None).await {
            tracing::warn!(%channel, error = %e, "read receipt not published");
        }
    }

    /// Pushes a read position to `user`'s connections on this node, but `except`.
    pub(crate) fn push_inbox_read(
        &self,
        user: &str,
        channel: &str,
        marks: &Marks,
        except: Option<&str>,
    ) {
        let channel: Arc<str> = channel.into();
        for s in self.user_sessions(user, None) {
            if except.is_some_and(|c| *c == *s.id) {
                continue;
            }
            s.enqueue(Outgoing::Control(Box::new(Control::InboxRead {
                channel: channel.clone(),
                marks: marks.clone(),
            })));
        }
    }

    /// The stream's current position (created if it did not exist, so that its epoch
    /// holds for what follows).
    async fn stream_top(
        &self,
        channel: &str,
        ns: &NamespaceConfig,
    ) -> Result<StreamPosition, NodeError> {
        let h = self
            .engine
            .history(
                channel,
                HistoryQuery {
                    limit: Some(0),
                    ensure: self.history_options(ns),
                    ..HistoryQuery::default()
                },
            )
            .await?;
        Ok(StreamPosition {
            offset: h.offset,
            epoch: h.epoch,
        })
    }

    /// `user`'s inbox in each channel where they have positions (only `channels`,
    /// when given), with unread counts.
    ///
    /// # Errors
    /// An engine failure.
    pub async fn inbox_status(
        &self,
        user: &str,
        channels: &[String],
    ) -> Result<Vec<InboxChannel>, NodeError> {
        let mut marks = self.inbox.user_marks(user).await?;
        let asked = !channels.is_empty();
        let wanted: Vec<String> = if asked {
            channels.to_vec()
        } else {
            marks.keys().cloned().collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for channel in wanted {
            let ns = match self.rules.namespace(&channel) {
                Ok(ns) if ns.inbox => ns.clone(),
                // Positions left from a namespace configured differently before.
                _ if !asked => continue,
                Ok(_) => return Err(NodeError::NotAvailable),
                Err(e) => return Err(e.into()),
            };
            let top = self.stream_top(&channel, &ns).await?;
            let m = marks
                .remove(&channel)
                .filter(|m| m.epoch == top.epoch)
                .unwrap_or_default();
            out.push(InboxChannel {
                channel,
                unread: top.offset.saturating_sub(m.read),
                epoch: top.epoch,
                offset: top.offset,
                delivered: m.delivered,
                read: m.read,
            });
        }
        Ok(out)
    }

    /// The stream's epoch and the read positions (of that epoch) of the members of a
    /// `read_receipts` channel, by user.
    ///
    /// # Errors
    /// Unknown channel, `NotAvailable` without `read_receipts`, an engine failure.
    pub async fn inbox_readers(
        &self,
        channel: &str,
    ) -> Result<(String, BTreeMap<String, Marks>), NodeError> {
        let ns = self.rules.namespace(channel)?.clone();
        if !ns.read_receipts {
            return Err(NodeError::NotAvailable);
        }
        let top = self.stream_top(channel, &ns).await?;
        let mut readers = self.inbox.readers(channel).await?;
        readers.retain(|_, m| m.epoch == top.epoch);
        Ok((top.epoch, readers))
    }
}

fn to_shared(v: &impl Serialize) -> Option<SharedJson> {
    let json = serde_json::to_string(v).ok()?;
    serde_json::value::RawValue::from_string(json)
        .ok()
        .map(SharedJson::from)
}
