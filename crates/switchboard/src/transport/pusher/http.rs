//! The Pusher HTTP API for each app's backend (the Pusher server libraries): trigger
//! events, read channels and presence members, terminate a user's connections. Every
//! call is signed by the app its path names (see [`super::signature`]), reaches that
//! app's channels only, and acts through the [`Node`], so with the Redis engine it
//! reaches every node.
//!
//! Errors are answered as Pusher answers them: a status (400, 401, 404, 413, 500) and a
//! plain-text message.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use switchboard_protocol::{Disconnect, SharedJson};

use super::counts::subscription_counts;
use super::names::{self, Kind};
use super::signature;
use super::socket::MAX_EVENT_NAME;
use super::wire;
use crate::cluster::UserCommand;
use crate::config::PusherApp;
use crate::node::{Node, NodeError, PublishOptions};
use crate::session::EXCLUDE_CLIENT_TAG;
use crate::transport::socketio::EVENT_TAG;

/// A refused call: its status and what the caller is told.
#[derive(Debug)]
pub(super) struct HttpError(StatusCode, String);

impl HttpError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, [(header::CONTENT_TYPE, PLAIN_TEXT)], self.1).into_response()
    }
}

/// How errors are answered, as Pusher answers them.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

impl From<NodeError> for HttpError {
    /// Internal details stay in the logs.
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Channel(r) => Self::bad_request(r.to_string()),
            NodeError::NotAvailable => {
                Self::bad_request("presence is not kept in this channel's namespace")
            }
            NodeError::BadRequest(m) => Self::bad_request(m),
            e => {
                tracing::error!(error = %e, "pusher http api");
                Self(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        }
    }
}

type Answer = Result<Value, HttpError>;

/// A call of an app's backend, signed by the app its path (`/apps/<app_id>/...`)
/// names: every handler takes one, so every call is checked the one way before it
/// acts. Extracted as `Result<Signed, HttpError>`, so a refusal is answered and
/// counted like any other error of the call.
pub(super) struct Signed {
    /// The app id, from the path.
    app_id: String,
    /// The query parameters.
    params: Vec<(String, String)>,
    /// The body (empty for a GET).
    body: Bytes,
}

impl Signed {
    /// The app that signed the call.
    fn app<'n>(&self, node: &'n Node) -> Result<PusherApp<'n>, HttpError> {
        node.config
            .pusher
            .app_by_id(&self.app_id)
            .ok_or_else(|| HttpError(StatusCode::NOT_FOUND, "unknown app".into()))
    }
}

impl<S> FromRequest<S> for Signed
where
    S: Send + Sync,
    Arc<Node>: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let node = Arc::<Node>::from_ref(state);
        let method = req.method().clone();
        let uri = req.uri().clone();
        let app_id = uri
            .path()
            .strip_prefix("/apps/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| HttpError(e.status(), e.body_text()))?;
        let call = Self {
            app_id,
            params: Vec::new(),
            body,
        };
        let app = call.app(&node)?;
        let Query(params) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map_err(|_| HttpError::bad_request("malformed query string"))?;
        let now = crate::auth::now_secs();
        let skew = node.config.pusher.max_clock_skew;
        let path = uri.path();
        let checked =
            signature::verify_request(app, skew, method.as_str(), path, &params, &call.body, now);
        if let Err(e) = checked {
            node.metrics.api_auth_failures.inc();
            return Err(HttpError(StatusCode::UNAUTHORIZED, e.to_string()));
        }
        Ok(Self { params, ..call })
    }
}

/// What a handler is given: the checked call, or why it was refused.
pub(super) type Call = Result<Signed, HttpError>;

/// Runs one call, then counts and answers it as `method`.
async fn answer(node: &Node, method: &'static str, call: impl Future<Output = Answer>) -> Response {
    let started = Instant::now();
    let (status, body, content_type) = match call.await {
        Ok(v) => (StatusCode::OK, v.to_string(), "application/json"),
        Err(HttpError(status, message)) => (status, message, PLAIN_TEXT),
    };
    let metrics = &node.metrics.api;
    metrics.record(method, status.as_u16(), None);
    metrics.duration.observe(started.elapsed());
    tracing::info!(target: "switchboard::api", method, status = status.as_u16(), "pusher api call");
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| HttpError::bad_request(format!("invalid JSON: {e}")))
}

/// One event for one or more channels, checked and ready to publish.
struct Event {
    channels: Vec<String>,
    data: SharedJson,
    options: PublishOptions,
}

impl Event {
    /// Checks an event as `app`'s caller sent it: its name, socket id, channels (the
    /// app's, mapped to switchboard's, in configured namespaces) and data.
    fn check(
        node: &Node,
        app: PusherApp<'_>,
        name: &str,
        data: &RawValue,
        channels: &[String],
        socket_id: Option<&str>,
    ) -> Result<Self, HttpError> {
        if name.is_empty() || name.len() > MAX_EVENT_NAME || wire::is_reserved(name) {
            return Err(HttpError::bad_request(format!(
                "invalid event name {name:?}"
            )));
        }
        if channels.is_empty() {
            return Err(HttpError::bad_request("no channel named"));
        }
        let max = node.config.pusher.max_event_channels;
        if channels.len() > max {
            return Err(HttpError::bad_request(format!(
                "at most {max} channels per event"
            )));
        }
        let socket_id = socket_id.filter(|s| !s.is_empty());
        if socket_id.is_some_and(|s| !valid_socket_id(s)) {
            return Err(HttpError::bad_request("invalid socket_id"));
        }
        let channels = channels
            .iter()
            .map(|name| {
                let (channel, _) = channel_of(node, app, name)?;
                node.rules
                    .namespace(&channel)
                    .map_err(|e| HttpError::bad_request(format!("channel {name:?}: {e}")))?;
                Ok(channel)
            })
            .collect::<Result<Vec<_>, HttpError>>()?;
        // The libraries send `data` as a string; any other JSON is taken as it is.
        let data = match serde_json::from_str::<String>(data.get()) {
            Ok(text) => {
                wire::payload_of(&text).ok_or_else(|| HttpError::bad_request("invalid data"))?
            }
            Err(_) => crate::api::methods::payload(data.to_owned()),
        };
        let mut tags = BTreeMap::new();
        tags.insert(EVENT_TAG.to_owned(), name.to_owned());
        if let Some(id) = socket_id {
            tags.insert(EXCLUDE_CLIENT_TAG.to_owned(), id.to_owned());
        }
        Ok(Self {
            channels,
            data,
            options: PublishOptions {
                tags: Some(Arc::new(tags)),
                skip_history: false,
            },
        })
    }

    async fn publish(self, node: &Node) -> Result<(), HttpError> {
        for channel in &self.channels {
            node.publish(channel, self.data.clone(), self.options.clone())
                .await?;
        }
        Ok(())
    }
}

/// Whether `id` has the shape of a socket id (`\d+\.\d+`).
fn valid_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
    })
}

#[derive(Deserialize)]
struct EventRequest {
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

/// `POST /apps/<app_id>/events`: one event into one or more channels.
pub(super) async fn events(State(node): State<Arc<Node>>, call: Call) -> Response {
    answer(&node, "pusher_events", async {
        trigger(&node, &call?).await
    })
    .await
}

async fn trigger(node: &Node, call: &Signed) -> Answer {
    let app = call.app(node)?;
    let r: EventRequest = decode(&call.body)?;
    let mut channels = r.channels;
    channels.extend(r.channel);
    Event::check(
        node,
        app,
        &r.name,
        &r.data,
        &channels,
        r.socket_id.as_deref(),
    )?
    .publish(node)
    .await?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct BatchRequest {
    batch: Vec<BatchEvent>,
}

#[derive(Deserialize)]
struct BatchEvent {
    channel: String,
    name: String,
    data: Box<RawValue>,
    #[serde(default)]
    socket_id: Option<String>,
}

/// `POST /apps/<app_id>/batch_events`: several events, each into one channel; all are
/// checked before any is published.
pub(super) async fn batch_events(State(node): State<Arc<Node>>, call: Call) -> Response {
    let call = async { trigger_batch(&node, &call?).await };
    answer(&node, "pusher_batch_events", call).await
}

async fn trigger_batch(node: &Node, call: &Signed) -> Answer {
    let app = call.app(node)?;
    let r: BatchRequest = decode(&call.body)?;
    let max = node.config.pusher.max_batch_events;
    if r.batch.len() > max {
        return Err(HttpError::bad_request(format!(
            "at most {max} events per batch"
        )));
    }
    let events = r
        .batch
        .iter()
        .map(|e| {
            let channel = std::slice::from_ref(&e.channel);
            Event::check(node, app, &e.name, &e.data, channel, e.socket_id.as_deref())
        })
        .collect::<Result<Vec<_>, HttpError>>()?;
    for event in events {
        event.publish(node).await?;
    }
    Ok(json!({}))
}

/// What `info` asks for.
#[derive(Default)]
struct Info {
    user_count: bool,
    subscription_count: bool,
}

impl Info {
    fn of(params: &[(String, String)]) -> Self {
        let mut info = Self::default();
        for (_, value) in params.iter().filter(|(k, _)| k == "info") {
            for field in value.split(',') {
                match field.trim() {
                    "user_count" => info.user_count = true,
                    "subscription_count" => info.subscription_count = true,
                    _ => {}
                }
            }
        }
        info
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Distinct members of a presence channel.
async fn users(node: &Node, channel: &str) -> Result<BTreeSet<String>, HttpError> {
    let presence = node.presence(channel).await?;
    Ok(presence
        .presence
        .into_values()
        .map(|info| info.user.to_string())
        .collect())
}

/// `GET /apps/<app_id>/channels`: occupied channels, optionally those whose name starts
/// with `filter_by_prefix`, with `info=subscription_count,user_count` (the user count
/// for presence channels only, as Pusher has it).
pub(super) async fn channels(State(node): State<Arc<Node>>, call: Call) -> Response {
    let call = async { list_channels(&node, &call?).await };
    answer(&node, "pusher_channels", call).await
}

async fn list_channels(node: &Node, call: &Signed) -> Answer {
    let app = call.app(node)?;
    let params = &call.params;
    let pusher = &node.config.pusher;
    let prefix = param(params, "filter_by_prefix").unwrap_or("");
    let info = Info::of(params);
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(HttpError::bad_request(
            "user_count may only be requested with filter_by_prefix=presence-",
        ));
    }
    let mut channels = serde_json::Map::new();
    for (channel, n) in subscription_counts(node).await? {
        if !names::belongs(pusher, app, &channel) {
            continue;
        }
        let name = names::to_pusher(pusher, &channel);
        // Only names the app's Pusher clients can subscribe to.
        let reachable =
            names::to_switchboard(pusher, app, &name).is_some_and(|(c, _)| c == channel);
        if n == 0 || !reachable || !name.starts_with(prefix) {
            continue;
        }
        let mut fields = serde_json::Map::new();
        if info.subscription_count {
            fields.insert("subscription_count".into(), n.into());
        }
        if info.user_count {
            fields.insert(
                "user_count".into(),
                users(node, &channel).await?.len().into(),
            );
        }
        channels.insert(name.into_owned(), Value::Object(fields));
    }
    Ok(json!({ "channels": channels }))
}

/// `app`'s Pusher channel `name`, mapped.
fn channel_of(node: &Node, app: PusherApp<'_>, name: &str) -> Result<(String, Kind), HttpError> {
    names::to_switchboard(&node.config.pusher, app, name)
        .ok_or_else(|| HttpError::bad_request(format!("invalid channel {name:?}")))
}

/// `GET /apps/<app_id>/channels/<name>`: whether it is occupied, with
/// `info=subscription_count,user_count` (user count for presence channels only);
/// `GET /apps/<app_id>/channels/<name>/users`: a presence channel's members. Pusher
/// channel names hold no `/`, so `rest` says which.
pub(super) async fn channel(
    State(node): State<Arc<Node>>,
    Path((_, rest)): Path<(String, String)>,
    call: Call,
) -> Response {
    match rest.split_once('/') {
        None => {
            let call = async { one_channel(&node, &rest, &call?).await };
            answer(&node, "pusher_channel", call).await
        }
        Some((name, "users")) => {
            let call = async { members(&node, name, &call?).await };
            answer(&node, "pusher_users", call).await
        }
        Some(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn one_channel(node: &Node, name: &str, call: &Signed) -> Answer {
    let app = call.app(node)?;
    let (channel, kind) = channel_of(node, app, name)?;
    let info = Info::of(&call.params);
    if info.user_count && kind != Kind::Presence {
        return Err(HttpError::bad_request(
            "user_count may only be requested for presence channels",
        ));
    }
    let n = subscription_counts(node)
        .await?
        .get(&channel)
        .copied()
        .unwrap_or(0);
    let mut out = json!({ "occupied": n > 0 });
    if info.subscription_count {
        out["subscription_count"] = n.into();
    }
    if info.user_count {
        out["user_count"] = users(node, &channel).await?.len().into();
    }
    Ok(out)
}

async fn members(node: &Node, name: &str, call: &Signed) -> Answer {
    let app = call.app(node)?;
    let (channel, kind) = channel_of(node, app, name)?;
    if kind != Kind::Presence {
        return Err(HttpError::bad_request(
            "users may only be requested for presence channels",
        ));
    }
    let users: Vec<Value> = users(node, &channel)
        .await?
        .into_iter()
        .map(|id| json!({ "id": id }))
        .collect();
    Ok(json!({ "users": users }))
}

/// `POST /apps/<app_id>/users/<user_id>/terminate_connections`: closes the app's
/// user's connections on every node, whatever their protocol (3503, which Pusher
/// clients get as 4009: they do not reconnect).
pub(super) async fn terminate_connections(
    State(node): State<Arc<Node>>,
    Path((_, user)): Path<(String, String)>,
    call: Call,
) -> Response {
    let call = async { terminate(&node, &user, &call?).await };
    answer(&node, "pusher_terminate_connections", call).await
}

async fn terminate(node: &Node, user: &str, call: &Signed) -> Answer {
    let app = call.app(node)?;
    if user.is_empty() {
        return Err(HttpError::bad_request("no user"));
    }
    let user = names::user_of(&node.config.pusher, app, user)
        .ok_or_else(|| HttpError::bad_request("the user id names another app's user"))?;
    let d = Disconnect::FORCE_NO_RECONNECT;
    node.run_everywhere(UserCommand::Disconnect {
        user,
        client: None,
        whitelist: Vec::new(),
        code: d.code,
        reason: d.reason.to_owned(),
    })
    .await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_two_numbers() {
        assert!(valid_socket_id("123.456"));
        for bad in ["123", "123.", ".4", "1.2.3", "a.1", "1.-2", ""] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }
}
