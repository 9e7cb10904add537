//! What the server sends: replies (carrying the command's id) and pushes (id 0).
//!
//! Publications and client infos are shared domain values (`Arc` inside), so one
//! value is stored in history and fanned out without copying its payload.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
pub use crate::command::StreamPosition;

/// Shared raw JSON: a payload encoded once, referenced everywhere.
pub type SharedJson = Arc<RawValue>;

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Who a publication, join or leave is about. Deserializable so an engine can carry it
/// between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    /// User id (`sub` of the token).
    pub user: Arc<str>,
    /// Connection id.
    pub client: Arc<str>,
    /// Public connection info (the token's `info` claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<SharedJson>,
    /// Public channel info (the subscription token's `info` claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<SharedJson>,
}

/// A message published into a channel. Deserializable so an engine can carry it between
/// nodes and keep it in a shared history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    /// Payload.
    pub data: SharedJson,
    /// Publisher, when a client published it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    /// Position in the channel's stream (0 when the channel keeps no history).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Free-form string tags set by the publisher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Arc<BTreeMap<String, String>>>,
    /// The one connection (client id) this publication skips: the sender of a
    /// Socket.IO `socket.to(room).emit` or a Pusher client event. Server-side only:
    /// engines keep it and carry it between nodes ([`Publication::stored`]), so a
    /// replay skips it too, and no client encoding sends it.
    #[serde(default, skip_serializing)]
    pub exclude_client: Option<Arc<str>>,
}

impl Publication {
    /// The publication as engines keep it (history) and carry it between nodes: what
    /// clients see, and [`Publication::exclude_client`].
    pub fn stored(&self) -> StoredPublication<'_> {
        StoredPublication {
            publication: self,
            exclude_client: self.exclude_client.as_deref(),
        }
    }
}

/// See [`Publication::stored`]; read back as a [`Publication`].
#[derive(Debug, Serialize)]
pub struct StoredPublication<'a> {
    #[serde(flatten)]
    publication: &'a Publication,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclude_client: Option<&'a str>,
}

/// An error in a reply.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReply {
    /// Numeric code (see [`ErrorCode`]).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
    /// Whether a retry may succeed.
    #[serde(skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl From<ErrorCode> for ErrorReply {
    fn from(code: ErrorCode) -> Self {
        Self {
            code: code.code(),
            message: code.message().to_owned(),
            temporary: code.temporary(),
        }
    }
}

/// Result of `connect`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ConnectResult {
    /// Connection id.
    pub client: String,
    /// Server version.
    pub version: String,
    /// Whether the connection expires (then `ttl` seconds remain).
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until the connection expires.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    /// Server-side subscriptions.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubscribeResult>,
    /// Server ping interval in seconds.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    /// Whether the server expects a pong to each ping.
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    /// Node id that accepted the connection.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The id an HTTP-streaming or SSE client names its session by in `/emulation`
    /// requests (and a unidirectional client's session); empty over WebSocket. Not the
    /// client id: that one is public (presence), this one lets its holder send commands.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// What the app backend's connect proxy gave the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<SharedJson>,
}

/// Result of `subscribe` (and of each server-side subscription).
#[derive(Debug, Clone, Default)]
pub struct SubscribeResult {
    /// Whether the subscription expires.
    pub expires: bool,
    /// Seconds until it expires.
    pub ttl: u32,
    /// Whether the channel keeps a stream the client can recover from.
    pub recoverable: bool,
    /// Stream epoch.
    pub epoch: String,
    /// Recovered publications.
    pub publications: Vec<Publication>,
    /// Whether all missed publications were recovered.
    pub recovered: bool,
    /// Stream offset at subscription time.
    pub offset: u64,
    /// Whether the stream is positioned.
    pub positioned: bool,
    /// Whether the client asked to recover.
    pub was_recovering: bool,
    /// What the app backend's proxy gave the subscriber.
    pub data: Option<SharedJson>,
    /// Whether publications come as fossil deltas (`delta: "fossil"` was negotiated).
    /// Then the recovered ones go as a chain ([`RecoveredDeltas`]), and, in JSON, every
    /// publication's `data` is a JSON string holding the payload's text or a delta of
    /// it, as Centrifugo sends them.
    pub delta: bool,
}

/// [`SubscribeResult`] as it goes on the wire in JSON.
#[derive(Serialize)]
struct SubscribeResultWire<'a> {
    #[serde(skip_serializing_if = "is_false")]
    expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    recoverable: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    epoch: &'a str,
    #[serde(skip_serializing_if = "Publications::is_empty")]
    publications: Publications<'a>,
    #[serde(skip_serializing_if = "is_false")]
    recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    positioned: bool,
    #[serde(skip_serializing_if = "is_false")]
    was_recovering: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a SharedJson>,
    #[serde(skip_serializing_if = "is_false")]
    delta: bool,
}

/// Publications of a subscribe result, their payloads as JSON strings when `as_text`.
struct Publications<'a> {
    list: &'a [Publication],
    as_text: bool,
}

impl Publications<'_> {
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Serialize for Publications<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.as_text {
            return self.list.serialize(s);
        }
        s.collect_seq(RecoveredDeltas::new(self.list, true).iter())
    }
}

impl Serialize for SubscribeResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SubscribeResultWire {
            expires: self.expires,
            ttl: self.ttl,
            recoverable: self.recoverable,
            epoch: &self.epoch,
            publications: Publications {
                list: &self.publications,
                as_text: self.delta,
            },
            recovered: self.recovered,
            offset: self.offset,
            positioned: self.positioned,
            was_recovering: self.was_recovering,
            data: self.data.as_ref(),
            delta: self.delta,
        }
        .serialize(s)
    }
}

/// A publication to a subscriber that negotiated fossil deltas: its payload is the
/// publication's JSON text (`delta: false`) or a fossil delta turning the previous
/// publication's text into it (`delta: true`). JSON carries the payload as a string,
/// so it must be UTF-8 there; Protobuf carries its bytes.
#[derive(Debug, Clone, Copy)]
pub struct DeltaPub<'a> {
    /// The publication (its `data` is replaced by `payload` on the wire).
    pub publication: &'a Publication,
    /// The payload's bytes.
    pub payload: &'a [u8],
    /// Whether the payload is a delta.
    pub delta: bool,
}

/// The publications a delta subscriber recovers in its subscribe reply, as Centrifugo
/// sends them: the first in full, each next one a fossil delta of the one before it
/// when that is shorter, else in full. The client applies them in order and ends up
/// holding the last one's payload, from which the live stream's deltas continue.
#[derive(Debug)]
pub struct RecoveredDeltas<'a> {
    list: &'a [Publication],
    /// Per publication, its delta of the previous one, when that is sent instead.
    patches: Vec<Option<Vec<u8>>>,
}

impl<'a> RecoveredDeltas<'a> {
    /// The chain of `list`. `text`: the encoding carries payloads as strings (JSON),
    /// so a delta that is not UTF-8 (a copy boundary splitting a character) goes full.
    pub fn new(list: &'a [Publication], text: bool) -> Self {
        let mut previous: Option<&[u8]> = None;
        let patches = list
            .iter()
            .map(|p| {
                let full = p.data.get().as_bytes();
                let base = previous.replace(full)?;
                Some(crate::fossil::create(base, full)).filter(|patch| {
                    patch.len() < full.len() && (!text || std::str::from_utf8(patch).is_ok())
                })
            })
            .collect();
        Self { list, patches }
    }

    /// Each publication with the payload it goes with.
    pub fn iter<'s>(&'s self) -> impl Iterator<Item = DeltaPub<'s>> + 's {
        let list: &'s [Publication] = self.list;
        list.iter()
            .zip(&self.patches)
            .map(|(publication, patch)| DeltaPub {
                publication,
                payload: patch
                    .as_deref()
                    .unwrap_or_else(|| publication.data.get().as_bytes()),
                delta: patch.is_some(),
            })
    }
}

#[derive(Serialize)]
struct DeltaPubWire<'a> {
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a ClientInfo>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "is_false")]
    delta: bool,
}

impl Serialize for DeltaPub<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let data = std::str::from_utf8(self.payload)
            .map_err(|_| serde::ser::Error::custom("a JSON delta must be UTF-8"))?;
        let p = self.publication;
        DeltaPubWire {
            data,
            info: p.info.as_ref(),
            offset: p.offset,
            tags: p.tags.as_deref(),
            delta: self.delta,
        }
        .serialize(s)
    }
}

/// Result of `presence`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PresenceResult {
    /// Client id to info.
    pub presence: HashMap<Arc<str>, ClientInfo>,
}

/// Result of `presence_stats`.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct PresenceStatsResult {
    /// Connections in the channel.
    pub num_clients: u32,
    /// Distinct users in the channel.
    pub num_users: u32,
}

/// Result of `history`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HistoryResult {
    /// Publications.
    pub publications: Vec<Publication>,
    /// Stream epoch.
    pub epoch: String,
    /// Stream top offset.
    pub offset: u64,
}

/// Result of `refresh`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RefreshResult {
    /// Connection id.
    pub client: String,
    /// Server version.
    pub version: String,
    /// Whether the connection expires.
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Result of `sub_refresh`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SubRefreshResult {
    /// Whether the subscription expires.
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    /// Seconds until it expires.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

/// Result of `rpc`.
#[derive(Debug, Clone, Serialize)]
pub struct RpcResult {
    /// Returned data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<SharedJson>,
}

/// An empty result object `{}`.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Empty {}

/// The body of a reply to a command.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ReplyBody {
    Error(ErrorReply),
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe(Empty),
    Publish(Empty),
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    Ping(Empty),
    Rpc(RpcResult),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
}

#[derive(Serialize)]
struct ReplyWire<'a> {
    id: u32,
    #[serde(flatten)]
    body: &'a ReplyBody,
}

/// Encodes a reply to command `id`.
pub fn encode_reply(id: u32, body: &ReplyBody) -> String {
    serde_json::to_string(&ReplyWire { id, body }).unwrap_or_else(|_| internal_error(id))
}

fn internal_error(id: u32) -> String {
    format!("{{\"id\":{id},\"error\":{{\"code\":100,\"message\":\"internal server error\",\"temporary\":true}}}}")
}

/// The body of an asynchronous push.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PushBody<'a> {
    Pub(&'a Publication),
    /// A publication to a subscriber that negotiated deltas.
    #[serde(rename = "pub")]
    DeltaPub(DeltaPub<'a>),
    Join {
        info: &'a ClientInfo,
    },
    Leave {
        info: &'a ClientInfo,
    },
    Unsubscribe {
        code: u32,
        reason: &'a str,
    },
    Subscribe(&'a SubscribeResult),
    Message {
        data: &'a RawValue,
    },
    Disconnect {
        code: u32,
        reason: &'a str,
    },
    Refresh {
        expires: bool,
        ttl: u32,
    },
    /// The connect result, as unidirectional transports push it.
    Connect(&'a ConnectResult),
}

#[derive(Serialize)]
struct PushInner<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    channel: &'a str,
    #[serde(flatten)]
    body: &'a PushBody<'a>,
}

#[derive(Serialize)]
struct PushWire<'a> {
    push: PushInner<'a>,
}

/// Encodes a push about `channel` (empty for connection-level pushes).
pub fn encode_push(channel: &str, body: &PushBody<'_>) -> String {
    serde_json::to_string(&PushWire {
        push: PushInner { channel, body },
    })
    .unwrap_or_else(|_| String::from("{}"))
}

/// Encodes a push without the `{"push": ...}` envelope, as unidirectional transports
/// send it (`{"channel":"chat:1","pub":{...}}`, `{"connect":{...}}`).
pub fn encode_bare_push(channel: &str, body: &PushBody<'_>) -> String {
    serde_json::to_string(&PushInner { channel, body }).unwrap_or_else(|_| String::from("{}"))
}

/// The server's ping: an empty object.
pub const PING: &str = "{}";

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> SharedJson {
        Arc::from(RawValue::from_string(s.to_owned()).unwrap())
    }

    #[test]
    fn reply_shapes() {
        let s = encode_reply(3, &ReplyBody::Error(ErrorCode::PermissionDenied.into()));
        assert_eq!(
            s,
            r#"{"id":3,"error":{"code":103,"message":"permission denied"}}"#
        );
        let s = encode_reply(4, &ReplyBody::Publish(Empty {}));
        assert_eq!(s, r#"{"id":4,"publish":{}}"#);
    }

    #[test]
    fn push_shape() {
        let p = Publication {
            data: raw(r#"{"x":1}"#),
            info: None,
            offset: 2,
            tags: None,
            exclude_client: None,
        };
        let s = encode_push("chat:1", &PushBody::Pub(&p));
        assert_eq!(
            s,
            r#"{"push":{"channel":"chat:1","pub":{"data":{"x":1},"offset":2}}}"#
        );
        let s = encode_push(
            "",
            &PushBody::Refresh {
                expires: true,
                ttl: 5,
            },
        );
        assert_eq!(s, r#"{"push":{"refresh":{"expires":true,"ttl":5}}}"#);
    }

    /// A document of 30 rows whose `n`th version changes one of them.
    fn version(n: u64) -> Publication {
        let rows: Vec<String> = (0..30)
            .map(|i| format!(r#"{{"row":{i},"rev":{}}}"#, if i == n { n } else { 0 }))
            .collect();
        Publication {
            data: raw(&format!(r#"{{"rows":[{}]}}"#, rows.join(","))),
            info: None,
            offset: n,
            tags: None,
            exclude_client: None,
        }
    }

    #[test]
    fn recovered_publications_of_a_delta_subscriber_go_as_a_chain() {
        // The third is too small for a delta to pay, and no delta of it is shorter
        // than the fourth: both go full, and the fifth is a delta of the fourth.
        let small = Publication {
            data: raw("1"),
            ..version(3)
        };
        let result = SubscribeResult {
            publications: vec![version(1), version(2), small, version(4), version(5)],
            delta: true,
            ..SubscribeResult::default()
        };
        let wire: serde_json::Value =
            serde_json::from_str(&encode_reply(1, &ReplyBody::Subscribe(result.clone()))).unwrap();
        let sent = wire["subscribe"]["publications"].as_array().unwrap();
        let flags: Vec<bool> = sent.iter().map(|p| p["delta"] == true).collect();
        assert_eq!(flags, [false, true, false, false, true]);
        let mut base = Vec::new();
        for (p, want) in sent.iter().zip(&result.publications) {
            let text = p["data"].as_str().expect("data as a string").as_bytes();
            base = if p["delta"] == true {
                assert!(text.len() < want.data.get().len());
                crate::fossil::apply(&base, text).unwrap()
            } else {
                text.to_vec()
            };
            assert_eq!(base, want.data.get().as_bytes());
            assert_eq!(p["offset"], want.offset);
        }
    }

    #[test]
    fn publication_round_trips_through_json() {
        let p = Publication {
            data: raw(r#"{"x":[1,2]}"#),
            info: Some(ClientInfo {
                user: "ann".into(),
                client: "c1".into(),
                conn_info: Some(raw(r#"{"n":"Ann"}"#)),
                chan_info: None,
            }),
            offset: 7,
            tags: Some(Arc::new(BTreeMap::from([("k".into(), "v".into())]))),
            exclude_client: Some("c2".into()),
        };
        // What a client sees leaves out whom the publication skips; what an engine
        // keeps has it.
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("c2"), "{text}");
        let stored = serde_json::to_string(&p.stored()).unwrap();
        let back: Publication = serde_json::from_str(&stored).unwrap();
        assert_eq!(back.exclude_client.as_deref(), Some("c2"));
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert_eq!(serde_json::to_string(&back.stored()).unwrap(), stored);
        let bare: Publication = serde_json::from_str(r#"{"data":1}"#).unwrap();
        assert_eq!((bare.offset, bare.info.is_none()), (0, true));
        assert!(bare.exclude_client.is_none());
    }
}
