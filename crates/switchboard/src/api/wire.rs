//! Request and result shapes of the server API, spelled as Centrifugo's HTTP API spells
//! them, so its clients (`cent` and friends) work unchanged. The OpenAPI document is
//! generated from these same types.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_protocol::{ClientInfo, Publication};
use utoipa::ToSchema;

use super::inbox::{
    InboxMarksView, InboxReadRequest, InboxReadersRequest, InboxReadersResult, InboxStatusRequest,
    InboxStatusResult,
};

/// Any JSON value, kept as the caller wrote it.
pub type RawJson = Box<RawValue>;

/// `publish`: send data into one channel.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PublishRequest {
    /// Channel to publish into.
    #[schema(min_length = 1, example = "chat:index")]
    pub channel: String,
    /// Payload: any JSON value, delivered to subscribers as is.
    #[schema(value_type = serde_json::Value, example = json!({"text": "hello"}))]
    pub data: RawJson,
    /// Do not store this publication in the channel's history.
    #[serde(default)]
    pub skip_history: bool,
    /// String tags delivered with the publication.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Retries with the same key (per channel) within `api_idempotency_window` get the
    /// first result and publish nothing.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub idempotency_key: Option<String>,
}

/// `broadcast`: send the same data into many channels.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BroadcastRequest {
    /// Channels to publish into.
    #[schema(min_items = 1, example = json!(["user:1", "user:2"]))]
    pub channels: Vec<String>,
    /// Payload: any JSON value.
    #[schema(value_type = serde_json::Value)]
    pub data: RawJson,
    /// Do not store these publications in history.
    #[serde(default)]
    pub skip_history: bool,
    /// String tags delivered with each publication.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Idempotency key, applied per channel as for `publish`.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub idempotency_key: Option<String>,
}

/// `subscribe`: subscribe a user's connections to a channel (server-side subscription).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscribeRequest {
    /// User whose connections to subscribe.
    #[schema(min_length = 1)]
    pub user: String,
    /// Channel.
    #[schema(min_length = 1)]
    pub channel: String,
    /// Only this connection of the user.
    #[serde(default)]
    pub client: Option<String>,
}

/// `unsubscribe`: unsubscribe a user's connections from a channel.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UnsubscribeRequest {
    /// User whose connections to unsubscribe.
    #[schema(min_length = 1)]
    pub user: String,
    /// Channel.
    #[schema(min_length = 1)]
    pub channel: String,
    /// Only this connection of the user.
    #[serde(default)]
    pub client: Option<String>,
}

/// `disconnect`: close a user's connections.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DisconnectRequest {
    /// User whose connections to close.
    #[schema(min_length = 1)]
    pub user: String,
    /// Only this connection of the user.
    #[serde(default)]
    pub client: Option<String>,
    /// Connections of the user to keep.
    #[serde(default)]
    pub whitelist: Vec<String>,
    /// Close code and reason; without it, 3503 "force disconnect" (do not reconnect).
    #[serde(default, deserialize_with = "super::decode::optional_object")]
    pub disconnect: Option<DisconnectCode>,
}

/// A custom close code for `disconnect`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DisconnectCode {
    /// Application close code: 4000..=4499 makes official clients reconnect,
    /// 4500..=4999 makes them stay disconnected.
    #[serde(deserialize_with = "super::decode::integer")]
    #[schema(minimum = 4000, maximum = 4999)]
    pub code: u32,
    /// Reason sent in the close frame (cut to 123 bytes, the WebSocket limit).
    #[serde(default)]
    #[schema(max_length = 123)]
    pub reason: String,
}

/// `refresh`: change when a user's connections expire, or expire them now.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// User whose connections to refresh.
    #[schema(min_length = 1)]
    pub user: String,
    /// Only this connection of the user.
    #[serde(default)]
    pub client: Option<String>,
    /// Close the connections now as expired (3005).
    #[serde(default)]
    pub expired: bool,
    /// Unix time (seconds) at which the connections expire; 0 or absent: never.
    #[serde(default, deserialize_with = "super::decode::integer")]
    pub expire_at: i64,
}

/// `revoke_token`: no connection or subscription token with this `jti` is accepted
/// any more; connections holding one are closed (3500 "token revoked").
#[derive(Debug, Deserialize, ToSchema)]
pub struct RevokeTokenRequest {
    /// The token's id (`jti` claim).
    #[schema(min_length = 1)]
    pub uid: String,
    /// Unix seconds until which the revocation is remembered (the token's own `exp`
    /// is enough); 0 or absent: `token_revocation_ttl` from now.
    #[serde(default, deserialize_with = "super::decode::integer")]
    pub expire_at: i64,
}

/// `invalidate_user_tokens`: tokens of a user issued (`iat`) before a time are no
/// longer accepted; live connections and subscriptions holding one end at once.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InvalidateUserTokensRequest {
    /// User whose tokens to invalidate.
    #[schema(min_length = 1)]
    pub user: String,
    /// Unix seconds: tokens issued before are invalid (a token without `iat` too);
    /// 0 or absent: now.
    #[serde(default, deserialize_with = "super::decode::integer")]
    pub issued_before: i64,
    /// Unix seconds until which the record is remembered; 0 or absent:
    /// `token_revocation_ttl` from now.
    #[serde(default, deserialize_with = "super::decode::integer")]
    pub expire_at: i64,
    /// Only the subscription tokens for this channel.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub channel: Option<String>,
}

/// A request naming one channel (`presence`, `presence_stats`, `history_remove`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChannelRequest {
    /// Channel.
    #[schema(min_length = 1)]
    pub channel: String,
}

/// `history`: a channel's recent publications.
#[derive(Debug, Deserialize, ToSchema)]
pub struct HistoryRequest {
    /// Channel.
    #[schema(min_length = 1)]
    pub channel: String,
    /// Most publications to return; absent or 0: only the stream position; negative:
    /// all that are kept.
    #[serde(default, deserialize_with = "super::decode::optional_integer")]
    pub limit: Option<i32>,
    /// Only publications after this position.
    #[serde(default, deserialize_with = "super::decode::optional_object")]
    pub since: Option<StreamPosition>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// A position in a channel's stream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
pub struct StreamPosition {
    /// Offset of a publication.
    #[serde(default, deserialize_with = "super::decode::integer")]
    #[schema(maximum = 9_223_372_036_854_775_807_u64)]
    pub offset: u64,
    /// Epoch of the stream: offsets of different epochs are not comparable.
    #[serde(default)]
    pub epoch: String,
}

/// `channels`: channels with subscribers on any node.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ChannelsRequest {
    /// Only channels matching this glob (`*` any run of characters, `?` one character,
    /// `\` escapes).
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub pattern: Option<String>,
}

/// `info`: takes no parameters.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct InfoRequest {}

/// `batch`: several commands in one request, run in order.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// Commands, each an object with one key naming the method.
    pub commands: Vec<Command>,
    /// Accepted for compatibility; commands always run in order.
    #[serde(default)]
    pub parallel: bool,
}

/// One API command, as a batch spells it: `{"publish": {...}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// See `POST /api/publish`.
    Publish(PublishRequest),
    /// See `POST /api/broadcast`.
    Broadcast(BroadcastRequest),
    /// See `POST /api/subscribe`.
    Subscribe(SubscribeRequest),
    /// See `POST /api/unsubscribe`.
    Unsubscribe(UnsubscribeRequest),
    /// See `POST /api/disconnect`.
    Disconnect(DisconnectRequest),
    /// See `POST /api/refresh`.
    Refresh(RefreshRequest),
    /// See `POST /api/presence`.
    Presence(ChannelRequest),
    /// See `POST /api/presence_stats`.
    PresenceStats(ChannelRequest),
    /// See `POST /api/history`.
    History(HistoryRequest),
    /// See `POST /api/history_remove`.
    HistoryRemove(ChannelRequest),
    /// See `POST /api/channels`.
    Channels(ChannelsRequest),
    /// See `POST /api/info`.
    Info(InfoRequest),
    /// See `POST /api/user_status`.
    UserStatus(UserStatusRequest),
    /// See `POST /api/revoke_token`.
    RevokeToken(RevokeTokenRequest),
    /// See `POST /api/invalidate_user_tokens`.
    InvalidateUserTokens(InvalidateUserTokensRequest),
    /// See `POST /api/inbox_status`.
    InboxStatus(InboxStatusRequest),
    /// See `POST /api/inbox_read`.
    InboxRead(InboxReadRequest),
    /// See `POST /api/inbox_readers`.
    InboxReaders(InboxReadersRequest),
}

/// `user_status`: online state, connections and last-seen time of up to 1000 users.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UserStatusRequest {
    /// User ids (at most 1000).
    #[schema(max_items = 1000)]
    pub users: Vec<String>,
}

/// One user's status.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStatusView {
    /// User id.
    pub user: String,
    /// Whether the user is online (a connection, or the last one closed within the
    /// offline debounce).
    pub online: bool,
    /// Open connections.
    pub connections: u32,
    /// Unix milliseconds of the last connect or disconnect; 0 if never seen.
    pub last_seen: u64,
}

/// Result of `user_status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStatusResult {
    /// One status per requested user, in order.
    pub statuses: Vec<UserStatusView>,
}

/// An API error as callers see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Error code (Centrifugo's table: 100 internal, 101 unauthorized, 102 unknown
    /// channel, 104 method not found, 107 bad request, 108 not available, 112
    /// unrecoverable position).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

/// The body of a failed request (401, 400, 404, 413).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// The body of `POST /api/<method>`: `result` on success, `error` otherwise.
#[derive(Debug, Serialize, ToSchema)]
pub struct Response<T> {
    /// The method's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// Why the call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl<T> Response<T> {
    /// A successful response.
    pub fn ok(result: T) -> Self {
        Self {
            result: Some(result),
            error: None,
        }
    }

    /// A failed response.
    pub fn err(error: ErrorBody) -> Self {
        Self {
            result: None,
            error: Some(error),
        }
    }
}

/// Result of `publish`: the publication's position in the channel's stream.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PublishResult {
    /// Offset in the stream (0 when the channel keeps no history).
    pub offset: u64,
    /// Epoch of the stream (empty when the channel keeps no history).
    pub epoch: String,
}

/// Result of `broadcast`: one response per channel, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastResult {
    /// One publish response per channel.
    pub responses: Vec<Response<PublishResult>>,
}

/// An empty result: `{}`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Empty {}

/// Who is connected: a connection's user and id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientInfoView {
    /// User id.
    pub user: String,
    /// Connection id.
    pub client: String,
    /// Public connection info from the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub conn_info: Option<switchboard_protocol::SharedJson>,
    /// Public channel info from the subscription token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub chan_info: Option<switchboard_protocol::SharedJson>,
}

impl From<ClientInfo> for ClientInfoView {
    fn from(c: ClientInfo) -> Self {
        Self {
            user: c.user.to_string(),
            client: c.client.to_string(),
            conn_info: c.conn_info,
            chan_info: c.chan_info,
        }
    }
}

/// Result of `presence`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceResult {
    /// Connection id -> who.
    pub presence: HashMap<String, ClientInfoView>,
}

/// Result of `presence_stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceStatsResult {
    /// Connections in the channel.
    pub num_clients: u32,
    /// Distinct users in the channel.
    pub num_users: u32,
}

/// One publication in `history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicationView {
    /// Payload.
    #[schema(value_type = serde_json::Value)]
    pub data: switchboard_protocol::SharedJson,
    /// Publisher, when a client published it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfoView>,
    /// Offset in the stream.
    pub offset: u64,
    /// Tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

impl From<Publication> for PublicationView {
    fn from(p: Publication) -> Self {
        Self {
            data: p.data,
            info: p.info.map(ClientInfoView::from),
            offset: p.offset,
            tags: p.tags.map(|t| (*t).clone()),
        }
    }
}

/// Result of `history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResult {
    /// Publications, oldest first unless `reverse`.
    pub publications: Vec<PublicationView>,
    /// Offset of the newest publication in the stream.
    pub offset: u64,
    /// Epoch of the stream.
    pub epoch: String,
}

/// A channel in `channels`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelInfo {
    /// Connections subscribed to the channel, summed over the nodes.
    pub num_clients: u32,
}

/// Result of `channels`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelsResult {
    /// Channel -> info.
    pub channels: BTreeMap<String, ChannelInfo>,
}

/// One node in `info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeInfo {
    /// Unique id of this process.
    pub uid: String,
    /// Node name (`node_name`, or a random one).
    pub name: String,
    /// Server version.
    pub version: String,
    /// Authenticated connections.
    pub num_clients: u32,
    /// Distinct connected users.
    pub num_users: u32,
    /// Channels with subscribers on this node.
    pub num_channels: u32,
    /// Subscriptions on this node.
    pub num_subs: u32,
    /// Seconds since start.
    pub uptime: u32,
}

/// Result of `info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InfoResult {
    /// This node (each node answers for itself).
    pub nodes: Vec<NodeInfo>,
}

/// What a command returns, as a batch spells it: `{"publish": {...}}` or `{"error": ...}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The command failed.
    Error(ErrorBody),
    /// See `publish`.
    Publish(PublishResult),
    /// See `broadcast`.
    Broadcast(BroadcastResult),
    /// See `subscribe`.
    Subscribe(Empty),
    /// See `unsubscribe`.
    Unsubscribe(Empty),
    /// See `disconnect`.
    Disconnect(Empty),
    /// See `refresh`.
    Refresh(Empty),
    /// See `presence`.
    Presence(PresenceResult),
    /// See `presence_stats`.
    PresenceStats(PresenceStatsResult),
    /// See `history`.
    History(HistoryResult),
    /// See `history_remove`.
    HistoryRemove(Empty),
    /// See `channels`.
    Channels(ChannelsResult),
    /// See `info`.
    Info(InfoResult),
    /// See `user_status`.
    UserStatus(UserStatusResult),
    /// See `revoke_token`.
    RevokeToken(Empty),
    /// See `invalidate_user_tokens`.
    InvalidateUserTokens(Empty),
    /// See `inbox_status`.
    InboxStatus(InboxStatusResult),
    /// See `inbox_read`.
    InboxRead(InboxMarksView),
    /// See `inbox_readers`.
    InboxReaders(InboxReadersResult),
}

impl Reply {
    /// The body of `POST /api/<method>`: `{"result": ...}` or `{"error": ...}`.
    pub fn to_response_json(&self) -> Vec<u8> {
        fn ok<T: Serialize>(r: &T) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(&Response::ok(r))
        }
        let encoded = match self {
            Self::Error(e) => serde_json::to_vec(&Response::<()>::err(e.clone())),
            Self::Publish(r) => ok(r),
            Self::Broadcast(r) => ok(r),
            Self::Subscribe(r)
            | Self::Unsubscribe(r)
            | Self::Disconnect(r)
            | Self::Refresh(r)
            | Self::HistoryRemove(r)
            | Self::RevokeToken(r)
            | Self::InvalidateUserTokens(r) => ok(r),
            Self::Presence(r) => ok(r),
            Self::PresenceStats(r) => ok(r),
            Self::History(r) => ok(r),
            Self::Channels(r) => ok(r),
            Self::Info(r) => ok(r),
            Self::UserStatus(r) => ok(r),
            Self::InboxStatus(r) => ok(r),
            Self::InboxRead(r) => ok(r),
            Self::InboxReaders(r) => ok(r),
        };
        // Serializing these plain structs (strings, numbers, valid raw JSON) can not fail.
        encoded.unwrap_or_else(|_| {
            br#"{"error":{"code":100,"message":"internal server error"}}"#.to_vec()
        })
    }
}

/// Result of `batch`: one reply per command, in order (not wrapped in `result`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// Replies.
    pub replies: Vec<Reply>,
}
