//! Commands a client sends: `{"id":1,"subscribe":{"channel":"chat:1"}}`, one per line.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Raw JSON supplied by a client, kept as text so it is forwarded without re-encoding.
pub type RawJson = Box<RawValue>;

/// One decoded command: its id (0 for `send` and for the pong `{}`) and request.
#[derive(Debug)]
pub struct Command {
    /// Id the reply must carry; 0 means no reply is expected.
    pub id: u32,
    /// What the client asks for.
    pub request: Request,
}

/// What a command asks for. Exactly one per command.
#[derive(Debug)]
pub enum Request {
    /// The empty command `{}`: a pong to the server's ping.
    Pong,
    /// Authenticate the connection.
    Connect(ConnectRequest),
    /// Subscribe to a channel.
    Subscribe(SubscribeRequest),
    /// Unsubscribe from a channel.
    Unsubscribe(ChannelRequest),
    /// Publish into a channel.
    Publish(PublishRequest),
    /// Who is in a channel.
    Presence(ChannelRequest),
    /// How many clients and users are in a channel.
    PresenceStats(ChannelRequest),
    /// Read a channel's history.
    History(HistoryRequest),
    /// A client-initiated ping (the reply is empty).
    Ping,
    /// An asynchronous message to the server; no reply.
    Send(SendRequest),
    /// Call a server method.
    Rpc(RpcRequest),
    /// Replace the connection token.
    Refresh(RefreshRequest),
    /// Replace a subscription token.
    SubRefresh(SubRefreshRequest),
}

/// `connect`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectRequest {
    /// Connection JWT.
    pub token: String,
    /// Custom data (unused by switchboard; accepted for compatibility).
    pub data: Option<RawJson>,
    /// Subscriptions to restore (client-side recovery on connect).
    pub subs: HashMap<String, SubscribeRequest>,
    /// Client name, for logs.
    pub name: String,
    /// Client version, for logs.
    pub version: String,
}

/// `subscribe`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeRequest {
    /// Channel name.
    pub channel: String,
    /// Subscription JWT, for channels only the app can grant.
    pub token: String,
    /// Whether to recover missed publications from `offset` in `epoch`.
    pub recover: bool,
    /// Stream epoch the client saw last.
    pub epoch: String,
    /// Last offset the client saw.
    pub offset: u64,
    /// Custom data (ignored).
    pub data: Option<RawJson>,
    /// Ask for positioning (accepted; switchboard positions recoverable channels).
    pub positioned: bool,
    /// Ask for recoverability.
    pub recoverable: bool,
    /// Ask for join/leave pushes.
    pub join_leave: bool,
    /// Ask for publications as deltas of the previous one (`"fossil"`).
    pub delta: String,
    /// Deliver only publications whose tags pass this filter.
    pub tf: Option<crate::filter::FilterNode>,
}

/// A request that names only a channel (`unsubscribe`, `presence`, `presence_stats`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChannelRequest {
    /// Channel name.
    pub channel: String,
}

/// `publish`.
#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    /// Channel name.
    #[serde(default)]
    pub channel: String,
    /// Payload, any JSON value.
    pub data: Option<RawJson>,
}

/// A position in a channel's stream.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct StreamPosition {
    /// Offset of the last publication.
    pub offset: u64,
    /// Stream epoch: changes when the stream is lost, so offsets are not comparable.
    pub epoch: String,
}

/// `history`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryRequest {
    /// Channel name.
    pub channel: String,
    /// Maximum number of publications; 0 returns only the stream position.
    pub limit: i32,
    /// Return publications after this position.
    pub since: Option<StreamPosition>,
    /// Newest first.
    pub reverse: bool,
}

/// `send`.
#[derive(Debug, Deserialize)]
pub struct SendRequest {
    /// Payload.
    pub data: Option<RawJson>,
}

/// `rpc`.
#[derive(Debug, Deserialize)]
pub struct RpcRequest {
    /// Method name.
    #[serde(default)]
    pub method: String,
    /// Arguments.
    pub data: Option<RawJson>,
}

/// `refresh`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshRequest {
    /// New connection JWT.
    pub token: String,
}

/// `sub_refresh`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubRefreshRequest {
    /// Channel name.
    pub channel: String,
    /// New subscription JWT.
    pub token: String,
}

/// Why a command could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or a field has the wrong type. The id is kept when it was readable.
    Malformed {
        /// Command id if it could be read.
        id: u32,
        /// Parser message (safe to show: it describes the client's own input).
        detail: String,
    },
    /// Valid JSON, but no known request in it.
    UnknownMethod {
        /// Command id.
        id: u32,
    },
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    publish: Option<PublishRequest>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<serde::de::IgnoredAny>,
    send: Option<SendRequest>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: u32,
}

impl Command {
    /// Decodes one JSON command.
    ///
    /// # Errors
    /// [`DecodeError`] when the text is not a command.
    pub fn decode(line: &str) -> Result<Command, DecodeError> {
        let wire: Wire = serde_json::from_str(line).map_err(|e| DecodeError::Malformed {
            id: serde_json::from_str::<IdOnly>(line)
                .map(|i| i.id)
                .unwrap_or(0),
            detail: e.to_string(),
        })?;
        let id = wire.id;
        let request = if let Some(r) = wire.connect {
            Request::Connect(r)
        } else if let Some(r) = wire.subscribe {
            Request::Subscribe(r)
        } else if let Some(r) = wire.unsubscribe {
            Request::Unsubscribe(r)
        } else if let Some(r) = wire.publish {
            Request::Publish(r)
        } else if let Some(r) = wire.presence {
            Request::Presence(r)
        } else if let Some(r) = wire.presence_stats {
            Request::PresenceStats(r)
        } else if let Some(r) = wire.history {
            Request::History(r)
        } else if wire.ping.is_some() {
            Request::Ping
        } else if let Some(r) = wire.send {
            Request::Send(r)
        } else if let Some(r) = wire.rpc {
            Request::Rpc(r)
        } else if let Some(r) = wire.refresh {
            Request::Refresh(r)
        } else if let Some(r) = wire.sub_refresh {
            Request::SubRefresh(r)
        } else if id == 0 && is_empty_object(line) {
            Request::Pong
        } else {
            return Err(DecodeError::UnknownMethod { id });
        };
        Ok(Command { id, request })
    }
}

impl Request {
    /// Decodes a request given by name and JSON body, as transports other than
    /// Centrifugo's carry them (a Socket.IO event `["subscribe", {...}]`, say). A bare
    /// JSON string stands for `{"channel": ...}` in requests that name a channel.
    ///
    /// `connect` and the pong are not requests of this form.
    ///
    /// # Errors
    /// `UnknownMethod` for an unknown name, `Malformed` for a body of the wrong shape.
    pub fn decode_named(method: &str, body: Option<&str>) -> Result<Self, DecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(body: Option<&str>) -> Result<T, DecodeError> {
            let body = body.unwrap_or("{}");
            let owned;
            let body = match serde_json::from_str::<String>(body) {
                Ok(channel) => {
                    owned = serde_json::json!({ "channel": channel }).to_string();
                    owned.as_str()
                }
                Err(_) => body,
            };
            serde_json::from_str(body).map_err(|e| DecodeError::Malformed {
                id: 0,
                detail: e.to_string(),
            })
        }
        Ok(match method {
            "subscribe" => Self::Subscribe(parse(body)?),
            "unsubscribe" => Self::Unsubscribe(parse(body)?),
            "publish" => Self::Publish(parse(body)?),
            "presence" => Self::Presence(parse(body)?),
            "presence_stats" => Self::PresenceStats(parse(body)?),
            "history" => Self::History(parse(body)?),
            "ping" => Self::Ping,
            "send" => Self::Send(parse(body)?),
            "rpc" => Self::Rpc(parse(body)?),
            "refresh" => Self::Refresh(parse(body)?),
            "sub_refresh" => Self::SubRefresh(parse(body)?),
            _ => return Err(DecodeError::UnknownMethod { id: 0 }),
        })
    }
}

fn is_empty_object(line: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
        .map(|m| m.is_empty())
        .unwrap_or(false)
}

/// Splits a frame into its newline-delimited commands and decodes each.
///
/// Blank lines are skipped. Each command is decoded on its own, so one bad
/// command does not hide the good ones beside it.
pub fn decode_frame(frame: &str) -> impl Iterator<Item = Result<Command, DecodeError>> + '_ {
    frame
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(Command::decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_batch() {
        let frame = "{\"id\":1,\"connect\":{\"token\":\"t\"}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a:b\",\"recover\":true,\"offset\":3}}\n{}";
        let cmds: Vec<_> = decode_frame(frame).collect::<Result<_, _>>().unwrap();
        assert_eq!(cmds.len(), 3);
        assert!(matches!(&cmds[0].request, Request::Connect(c) if c.token == "t"));
        assert!(
            matches!(&cmds[1].request, Request::Subscribe(s) if s.channel == "a:b" && s.recover && s.offset == 3)
        );
        assert!(matches!(cmds[2].request, Request::Pong));
    }

    #[test]
    fn malformed_keeps_id() {
        let err = Command::decode("{\"id\":7,\"subscribe\":{\"channel\":5}}").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { id: 7, .. }));
        let err = Command::decode("not json").unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { id: 0, .. }));
    }

    #[test]
    fn named_requests() {
        let r = Request::decode_named("subscribe", Some("\"chat:1\"")).unwrap();
        assert!(matches!(r, Request::Subscribe(s) if s.channel == "chat:1"));
        let r =
            Request::decode_named("history", Some("{\"channel\":\"a:b\",\"limit\":5}")).unwrap();
        assert!(matches!(r, Request::History(h) if h.limit == 5));
        assert!(matches!(
            Request::decode_named("frobnicate", None),
            Err(DecodeError::UnknownMethod { .. })
        ));
        assert!(matches!(
            Request::decode_named("publish", Some("[1]")),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            Request::decode_named("history", Some("{\"limit\":\"x\"}")),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn unknown_method() {
        let err = Command::decode("{\"id\":3,\"frobnicate\":{}}").unwrap_err();
        assert_eq!(err, DecodeError::UnknownMethod { id: 3 });
    }

    #[test]
    fn publish_keeps_raw_data() {
        let c = Command::decode(
            "{\"id\":1,\"publish\":{\"channel\":\"x:y\",\"data\":{\"a\": [1, 2]}}}",
        )
        .unwrap();
        match c.request {
            Request::Publish(p) => assert_eq!(p.data.unwrap().get(), "{\"a\": [1, 2]}"),
            _ => panic!("not publish"),
        }
    }
}
