//! Bodies of proxy requests and answers, spelled as Centrifugo's HTTP proxy spells
//! them, so a backend written for Centrifugo answers switchboard unchanged.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Raw JSON from the backend or the client, forwarded without re-encoding.
pub type RawJson = Box<RawValue>;

/// What every request carries about the connection.
#[derive(Debug, Serialize)]
pub struct Conn<'a> {
    /// Connection id.
    pub client: &'a str,
    /// `websocket` (Centrifugo protocol) or `socketio`.
    pub transport: &'a str,
    /// Always `json`.
    pub protocol: &'static str,
    /// Always `json`.
    pub encoding: &'static str,
    /// User id; absent before connect, empty for an anonymous connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// What the connect proxy attached to the connection as `meta`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
}

/// Body of a connect proxy request.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    /// The connection.
    #[serde(flatten)]
    pub conn: Conn<'a>,
    /// Client name from the connect command.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'a str,
    /// Client version from the connect command.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: &'a str,
    /// `data` of the connect command, or the Socket.IO `auth` object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    /// Channels the client asks to recover on connect.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub channels: &'a [String],
}

/// Body of a refresh proxy request.
#[derive(Debug, Serialize)]
pub struct RefreshRequest<'a> {
    /// The connection.
    #[serde(flatten)]
    pub conn: Conn<'a>,
}

/// Body of a subscribe, sub_refresh or publish proxy request.
#[derive(Debug, Serialize)]
pub struct ChannelRequest<'a> {
    /// The connection.
    #[serde(flatten)]
    pub conn: Conn<'a>,
    /// Channel.
    pub channel: &'a str,
    /// Subscription token the client sent (subscribe).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub token: &'a str,
    /// The client's `data` (subscribe) or publication (publish).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// Body of an RPC proxy request.
#[derive(Debug, Serialize)]
pub struct RpcRequest<'a> {
    /// The connection.
    #[serde(flatten)]
    pub conn: Conn<'a>,
    /// Method name.
    pub method: &'a str,
    /// Arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

/// An answer: exactly one of `result`, `error`, `disconnect` is expected; a
/// `disconnect` wins over an `error`, which wins over a `result`.
#[derive(Debug, Deserialize)]
pub struct Answer<T> {
    /// The backend agrees.
    pub result: Option<T>,
    /// The backend refuses with an error the client receives.
    pub error: Option<ErrorBody>,
    /// The backend closes the client's connection.
    pub disconnect: Option<DisconnectBody>,
}

/// `error` of an answer.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// Error code the client receives (use 400..=1999 for the app's own codes).
    pub code: u32,
    /// Message the client receives.
    #[serde(default)]
    pub message: String,
    /// Whether the client may retry.
    #[serde(default)]
    pub temporary: bool,
}

/// `disconnect` of an answer.
#[derive(Debug, Clone, Deserialize)]
pub struct DisconnectBody {
    /// Close code, 3000..=4999 (4000..=4499: the client reconnects; 4500..=4999: not).
    pub code: u32,
    /// Close reason (at most 123 bytes are sent).
    #[serde(default)]
    pub reason: String,
}

/// `result` of a connect answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConnectResult {
    /// User id; empty makes an anonymous connection.
    pub user: String,
    /// Unix seconds at which the connection expires unless the refresh proxy extends
    /// it; 0 never.
    pub expire_at: u64,
    /// Public info shown in presence and publications.
    pub info: Option<RawJson>,
    /// Server-side channels to subscribe the connection to.
    pub channels: Vec<String>,
    /// Private data sent with every later proxy request of this connection.
    pub meta: Option<RawJson>,
    /// Roles, as the token's `roles` claim (a switchboard extension): for `{roles}`
    /// templates and `subscribe_roles`.
    pub roles: Vec<String>,
    /// Tenant, as the token's `tenant` claim (a switchboard extension).
    pub tenant: Option<String>,
    /// Sent to the client in the connect reply's `data`.
    pub data: Option<RawJson>,
    /// `info`, base64-encoded JSON text.
    pub b64info: Option<String>,
    /// `data`, base64-encoded JSON text.
    pub b64data: Option<String>,
    /// More server-side channels, each with its subscription options.
    pub subs: BTreeMap<String, SubscribeOptions>,
}

/// Options of one server-side subscription the connect proxy gives (`subs`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeOptions {
    /// Channel info shown in presence (`chan_info`).
    pub info: Option<RawJson>,
    /// Sent to the client in this subscription's `data`.
    pub data: Option<RawJson>,
    /// `info`, base64-encoded JSON text.
    pub b64info: Option<String>,
    /// `data`, base64-encoded JSON text.
    pub b64data: Option<String>,
}

/// `result` of a refresh or sub_refresh answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RefreshResult {
    /// End the connection (refresh) or subscription (sub_refresh).
    pub expired: bool,
    /// New expiry, Unix seconds; 0 keeps the schedule.
    pub expire_at: u64,
    /// Replaces the connection's info (refresh only), for later presence and
    /// publications.
    pub info: Option<RawJson>,
    /// `info`, base64-encoded JSON text.
    pub b64info: Option<String>,
}

/// `result` of a subscribe answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscribeResult {
    /// Channel info shown in presence (`chan_info`).
    pub info: Option<RawJson>,
    /// Unix seconds at which the sub_refresh proxy is asked again (if sooner than
    /// `sub_refresh_interval`); 0: at the interval.
    pub expire_at: u64,
    /// Sent to the client in the subscribe reply's `data`.
    pub data: Option<RawJson>,
    /// `info`, base64-encoded JSON text.
    pub b64info: Option<String>,
    /// `data`, base64-encoded JSON text.
    pub b64data: Option<String>,
    /// Namespace options changed for this subscriber.
    #[serde(rename = "override")]
    pub overrides: SubscribeOverride,
}

/// Centrifugo's `SubscribeOptionOverride`, as far as switchboard's namespace options
/// go: `force_recovery`, `force_positioning` and `force_push_join_leave` are ignored.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct SubscribeOverride {
    /// Keep this subscriber in presence; only turns presence off (presence is answered
    /// per namespace).
    pub presence: Option<BoolValue>,
    /// Send this subscriber's join and leave to the channel.
    pub join_leave: Option<BoolValue>,
}

/// A protobuf `BoolValue` in JSON: `{"value": true}`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct BoolValue {
    /// The value.
    pub value: bool,
}

/// `result` of a publish answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PublishResult {
    /// Replaces the client's data.
    pub data: Option<RawJson>,
    /// `data`, base64-encoded JSON text.
    pub b64data: Option<String>,
    /// Do not keep this publication in history.
    pub skip_history: bool,
    /// Tags of the publication (`event` names the Socket.IO event).
    pub tags: Option<BTreeMap<String, String>>,
}

/// `result` of an RPC answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RpcResult {
    /// What the caller receives.
    pub data: Option<RawJson>,
    /// `data`, base64-encoded JSON text.
    pub b64data: Option<String>,
}

/// A result whose payloads may come base64-encoded (`b64info`, `b64data`), as
/// Centrifugo allows for binary payloads. switchboard keeps payloads as JSON, so the
/// decoded bytes must be JSON text.
pub trait Payloads {
    /// Moves each base64 payload, decoded, into its JSON field (it wins over the field).
    ///
    /// # Errors
    /// Which payload is not base64 of JSON text.
    fn decode_b64(&mut self) -> Result<(), String>;
}

fn from_b64(field: &mut Option<RawJson>, b64: Option<String>, name: &str) -> Result<(), String> {
    // Go backends omit empty strings; an explicit "" means "not set" as well.
    let Some(text) = b64.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{name} is not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{name} is not JSON text"))?;
    let json = RawValue::from_string(text).map_err(|e| format!("{name} is not JSON: {e}"))?;
    *field = Some(json);
    Ok(())
}

impl Payloads for ConnectResult {
    fn decode_b64(&mut self) -> Result<(), String> {
        from_b64(&mut self.info, self.b64info.take(), "b64info")?;
        from_b64(&mut self.data, self.b64data.take(), "b64data")?;
        self.subs.values_mut().try_for_each(Payloads::decode_b64)
    }
}

impl Payloads for SubscribeOptions {
    fn decode_b64(&mut self) -> Result<(), String> {
        from_b64(&mut self.info, self.b64info.take(), "b64info")?;
        from_b64(&mut self.data, self.b64data.take(), "b64data")
    }
}

impl Payloads for RefreshResult {
    fn decode_b64(&mut self) -> Result<(), String> {
        from_b64(&mut self.info, self.b64info.take(), "b64info")
    }
}

impl Payloads for SubscribeResult {
    fn decode_b64(&mut self) -> Result<(), String> {
        from_b64(&mut self.info, self.b64info.take(), "b64info")?;
        from_b64(&mut self.data, self.b64data.take(), "b64data")
    }
}

impl Payloads for PublishResult {
    fn decode_b64(&mut self) -> Result<(), String> {
        from_b64(&mut self.data, self.b64data.take(), "b64data")
    }
}

impl Payloads for RpcResult {
    fn decode_b64(&mut self) -> Result<(), String> {
        from_b64(&mut self.data, self.b64data.take(), "b64data")
    }
}
