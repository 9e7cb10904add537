//! A session's inbox channels: publications queued to it are noted delivered for its
//! user, and the client's receipts (`inbox.delivered`, `inbox.read`).

use serde::Deserialize;

use super::*;
use crate::event::EventKind;
use crate::inbox::{Mark, Marks};

/// A receipt from the client: `{"channel", "offset", "epoch"?}`.
#[derive(Debug, Deserialize)]
pub struct Receipt {
    /// An inbox channel the client is subscribed to.
    pub channel: String,
    /// The last offset received or read.
    pub offset: u64,
    /// The stream epoch of `offset`; absent or empty: the subscription's.
    #[serde(default)]
    pub epoch: String,
}

impl Session {
    /// Starts noting deliveries of `channel` (stream epoch `epoch`) for `user`.
    pub(super) fn track_inbox(&self, channel: &Arc<str>, user: &Arc<str>, epoch: &str) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let inbox = inbox.get_or_insert_with(Box::default);
        inbox.insert(channel.clone(), (Arc::from(epoch), user.clone()));
        self.has_inbox.store(true, Ordering::Release);
    }

    pub(super) fn untrack_inbox(&self, channel: &str) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = inbox.as_mut() {
            map.remove(channel);
            if map.is_empty() {
                *inbox = None;
            }
        }
        self.has_inbox.store(inbox.is_some(), Ordering::Release);
    }

    /// The publication at `offset` of `channel` is queued here: if it is an inbox
    /// channel, the user received it.
    pub(super) fn note_delivered(&self, channel: &Arc<str>, offset: u64) {
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((epoch, user)) = inbox.as_ref().and_then(|m| m.get(channel)) {
            self.node.note_delivered(user, channel, epoch, offset);
        }
    }

    /// `event` is not for this session: its subscription's tags filter keeps it away.
    /// A publication of an inbox channel was never owed to the user then, so it counts
    /// as delivered: a fresh session does not hand it out later, whether or not a
    /// publication that passes the filter came after it.
    pub fn filtered_out(&self, event: &ChannelEvent) {
        if let EventKind::Publication(p) = &event.kind {
            if p.offset > 0 && self.has_inbox.load(Ordering::Acquire) {
                self.note_delivered(&event.channel, p.offset);
            }
        }
    }

    /// The client acknowledges delivery (`Mark::Delivered`) or marks read up to an
    /// offset of an inbox channel it is subscribed to. A read is pushed to the user's
    /// other connections.
    ///
    /// # Errors
    /// `BadRequest` for a malformed receipt, `PermissionDenied` when not subscribed,
    /// `NotAvailable` outside an inbox namespace, `UnrecoverablePosition` for another
    /// epoch.
    pub async fn inbox_receipt(&self, mark: Mark, receipt: Receipt) -> SessionResult<Marks> {
        let identity = self.require_identity()?;
        let ns = self.subscribed_ns(&receipt.channel)?;
        if !ns.inbox {
            return Err(ErrorCode::NotAvailable.into());
        }
        let epoch = if receipt.epoch.is_empty() {
            let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox
                .as_ref()
                .and_then(|m| m.get(receipt.channel.as_str()))
                .map(|(e, _)| e.to_string())
                .unwrap_or_default()
        } else {
            receipt.epoch
        };
        Ok(self
            .node
            .inbox_mark(
                &identity.user,
                &receipt.channel,
                mark,
                receipt.offset,
                &epoch,
                Some(&self.id),
            )
            .await?)
    }

    /// The RPC methods `inbox.delivered` and `inbox.read`: `data` is a [`Receipt`];
    /// the answer is the positions after it (`{"epoch","delivered","read"}`).
    pub(super) async fn inbox_rpc(
        &self,
        mark: Mark,
        data: Option<SharedJson>,
    ) -> SessionResult<Option<SharedJson>> {
        let receipt: Receipt = data
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .ok_or(SessionError::Reply(ErrorCode::BadRequest))?;
        let marks = self.inbox_receipt(mark, receipt).await?;
        let json =
            serde_json::to_string(&marks).map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
        let raw = serde_json::value::RawValue::from_string(json)
            .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
        Ok(Some(SharedJson::from(raw)))
    }
}
