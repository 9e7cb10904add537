//! The inbox methods of the server API: a user's unread counts and positions, marking
//! read for a user, and who has read how far in a `read_receipts` channel. Request and
//! result shapes live here with their methods (see [`super::wire`] for the others);
//! [`super::decode`] checks the required fields first.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::wire::Response;
use super::Api;
use crate::inbox::Mark;

/// `inbox_status`: a user's positions and unread counts per inbox channel.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InboxStatusRequest {
    /// User id.
    #[schema(min_length = 1, example = "42")]
    pub user: String,
    /// Only these channels (each in an `inbox` namespace); empty: every channel in which
    /// the user has positions.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// One inbox channel of a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxChannelView {
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
    /// `offset - read`: publications after the read position.
    pub unread: u64,
}

/// Result of `inbox_status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxStatusResult {
    /// One entry per channel.
    pub channels: Vec<InboxChannelView>,
}

/// `inbox_read`: mark a user's inbox read up to an offset, as a client's `inbox.read`
/// does (the user's connections are told).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InboxReadRequest {
    /// User id.
    #[schema(min_length = 1, example = "42")]
    pub user: String,
    /// Channel in an `inbox` namespace.
    #[schema(min_length = 1, example = "user:42")]
    pub channel: String,
    /// Read up to this offset (capped at the stream's top).
    #[serde(deserialize_with = "super::decode::offset")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub offset: u64,
    /// The epoch of `offset`; empty: the stream's current one (another: error 112).
    #[serde(default)]
    pub epoch: String,
}

/// A user's positions in one channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxMarksView {
    /// Epoch of the offsets.
    pub epoch: String,
    /// Delivered offset.
    pub delivered: u64,
    /// Read offset.
    pub read: u64,
}

/// `inbox_readers`: who has read how far in a channel of a `read_receipts` namespace.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InboxReadersRequest {
    /// Channel.
    #[schema(min_length = 1, example = "conversation:42")]
    pub channel: String,
}

/// One member's read position.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReaderView {
    /// User id.
    pub user: String,
    /// Read offset (of the stream's current epoch).
    pub read: u64,
}

/// Result of `inbox_readers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxReadersResult {
    /// The stream's current epoch.
    pub epoch: String,
    /// Members with a read position in this epoch, by user id.
    pub readers: Vec<ReaderView>,
}

/// A user's positions and unread counts per inbox channel.
#[utoipa::path(post, path = "/api/inbox_status", tag = "inbox",
    request_body = InboxStatusRequest,
    responses((status = 200, description = "`result`, or `error` (102 unknown channel, 108 not an inbox channel)", body = Response<InboxStatusResult>)))]
pub(super) async fn inbox_status(
    api: &Api,
    req: InboxStatusRequest,
) -> Result<InboxStatusResult, ApiError> {
    let channels = api.node.inbox_status(&req.user, &req.channels).await?;
    Ok(InboxStatusResult {
        channels: channels
            .into_iter()
            .map(|c| InboxChannelView {
                channel: c.channel,
                epoch: c.epoch,
                offset: c.offset,
                delivered: c.delivered,
                read: c.read,
                unread: c.unread,
            })
            .collect(),
    })
}

/// Marks a user's inbox channel read up to an offset.
#[utoipa::path(post, path = "/api/inbox_read", tag = "inbox",
    request_body = InboxReadRequest,
    responses((status = 200, description = "`result`, or `error` (102, 108, 112 another epoch)", body = Response<InboxMarksView>)))]
pub(super) async fn inbox_read(
    api: &Api,
    req: InboxReadRequest,
) -> Result<InboxMarksView, ApiError> {
    let marks = api
        .node
        .inbox_mark(
            &req.user,
            &req.channel,
            Mark::Read,
            req.offset,
            &req.epoch,
            None,
        )
        .await?;
    Ok(InboxMarksView {
        epoch: marks.epoch,
        delivered: marks.delivered,
        read: marks.read,
    })
}

/// Who has read how far in a channel of a `read_receipts` namespace.
#[utoipa::path(post, path = "/api/inbox_readers", tag = "inbox",
    request_body = InboxReadersRequest,
    responses((status = 200, description = "`result`, or `error` (102, 108 no read_receipts)", body = Response<InboxReadersResult>)))]
pub(super) async fn inbox_readers(
    api: &Api,
    req: InboxReadersRequest,
) -> Result<InboxReadersResult, ApiError> {
    let (epoch, readers) = api.node.inbox_readers(&req.channel).await?;
    Ok(InboxReadersResult {
        epoch,
        readers: readers
            .into_iter()
            .map(|(user, m)| ReaderView { user, read: m.read })
            .collect(),
    })
}
