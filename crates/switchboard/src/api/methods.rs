//! The server API methods: each takes a checked request (see [`super::decode`]), calls
//! the [`Node`], and shapes the result. The `#[utoipa::path]` on each is its entry in
//! the OpenAPI document.
//!
//! [`Node`]: crate::node::Node

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use switchboard_protocol::{Disconnect, SharedJson};

use super::error::ApiError;
use super::pattern::Pattern;
use super::wire::*;
use super::Api;
use crate::auth::now_secs;
use crate::cluster::UserCommand;
use crate::engine::HistoryQuery;
use crate::node::PublishOptions;
use crate::revocation::Revocation;

impl Api {
    /// Runs one command (a request of its own, or an item of a batch).
    ///
    /// # Errors
    /// [`ApiError`] saying why the command failed; first [`Command::validate`].
    pub async fn execute(&self, command: Command) -> Result<Reply, ApiError> {
        command.validate()?;
        Ok(match command {
            Command::Publish(r) => Reply::Publish(publish(self, r).await?),
            Command::Broadcast(r) => Reply::Broadcast(broadcast(self, r).await?),
            Command::Subscribe(r) => Reply::Subscribe(subscribe(self, r).await?),
            Command::Unsubscribe(r) => Reply::Unsubscribe(unsubscribe(self, r).await?),
            Command::Disconnect(r) => Reply::Disconnect(disconnect(self, r).await?),
            Command::Refresh(r) => Reply::Refresh(refresh(self, r).await?),
            Command::Presence(r) => Reply::Presence(presence(self, r).await?),
            Command::PresenceStats(r) => Reply::PresenceStats(presence_stats(self, r).await?),
            Command::History(r) => Reply::History(history(self, r).await?),
            Command::HistoryRemove(r) => Reply::HistoryRemove(history_remove(self, r).await?),
            Command::Channels(r) => Reply::Channels(channels(self, &r).await?),
            Command::Info(r) => Reply::Info(info(self, r).await?),
            Command::UserStatus(r) => Reply::UserStatus(user_status(self, &r).await),
            Command::RevokeToken(r) => Reply::RevokeToken(revoke_token(self, &r).await?),
            Command::InvalidateUserTokens(r) => {
                Reply::InvalidateUserTokens(invalidate_user_tokens(self, &r).await?)
            }
            Command::InboxStatus(r) => {
                Reply::InboxStatus(super::inbox::inbox_status(self, r).await?)
            }
            Command::InboxRead(r) => Reply::InboxRead(super::inbox::inbox_read(self, r).await?),
            Command::InboxReaders(r) => {
                Reply::InboxReaders(super::inbox::inbox_readers(self, r).await?)
            }
        })
    }
}

/// Publish data into a channel.
#[utoipa::path(post, path = "/api/publish", tag = "publications",
    request_body = PublishRequest,
    responses((status = 200, description = "`result`, or an API error (102 unknown channel) in `error`", body = Response<PublishResult>)))]
pub(super) async fn publish(api: &Api, req: PublishRequest) -> Result<PublishResult, ApiError> {
    let key = idempotency_key(req.idempotency_key.as_deref());
    let opts = PublishOptions {
        tags: req.tags.map(Arc::new),
        skip_history: req.skip_history,
    };
    publish_one(api, &req.channel, payload(req.data), opts, key).await
}

/// Publish the same data into many channels.
#[utoipa::path(post, path = "/api/broadcast", tag = "publications",
    request_body = BroadcastRequest,
    responses((status = 200, description = "One response per channel (each with `result` or `error`)", body = Response<BroadcastResult>)))]
pub(super) async fn broadcast(
    api: &Api,
    req: BroadcastRequest,
) -> Result<BroadcastResult, ApiError> {
    let key = idempotency_key(req.idempotency_key.as_deref());
    let opts = PublishOptions {
        tags: req.tags.map(Arc::new),
        skip_history: req.skip_history,
    };
    let data = payload(req.data);
    let mut responses = Vec::with_capacity(req.channels.len());
    for channel in &req.channels {
        let r = publish_one(api, channel, data.clone(), opts.clone(), key).await;
        responses.push(match r {
            Ok(r) => Response::ok(r),
            Err(e) => Response::err(e.classify().1),
        });
    }
    Ok(BroadcastResult { responses })
}

async fn publish_one(
    api: &Api,
    channel: &str,
    data: SharedJson,
    opts: PublishOptions,
    key: Option<&str>,
) -> Result<PublishResult, ApiError> {
    required("channel", channel)?;
    let result = |pos: switchboard_protocol::StreamPosition| PublishResult {
        offset: pos.offset,
        epoch: pos.epoch,
    };
    match key {
        // The local cache joins concurrent retries on this node; the node's claim covers
        // retries through other nodes.
        Some(key) => {
            let window = api.node.config.api_idempotency_window;
            api.idempotency
                .run(channel, key, || async {
                    let pos = api
                        .node
                        .publish_idempotent(channel, key, window, || {
                            api.node.publish(channel, data, opts)
                        })
                        .await?;
                    Ok(result(pos))
                })
                .await
        }
        None => Ok(result(api.node.publish(channel, data, opts).await?)),
    }
}

/// Subscribe a user's connections to a channel.
#[utoipa::path(post, path = "/api/subscribe", tag = "connections",
    request_body = SubscribeRequest,
    responses((status = 200, description = "`{}` (also when the user has no connection here), or `error`", body = Response<Empty>)))]
pub(super) async fn subscribe(api: &Api, req: SubscribeRequest) -> Result<Empty, ApiError> {
    api.node
        .run_everywhere(UserCommand::Subscribe {
            user: req.user,
            channel: req.channel,
            client: client(&req.client).map(str::to_owned),
        })
        .await?;
    Ok(Empty {})
}

/// Unsubscribe a user's connections from a channel, on every node.
#[utoipa::path(post, path = "/api/unsubscribe", tag = "connections",
    request_body = UnsubscribeRequest,
    responses((status = 200, description = "`{}`, or `error`", body = Response<Empty>)))]
pub(super) async fn unsubscribe(api: &Api, req: UnsubscribeRequest) -> Result<Empty, ApiError> {
    api.node
        .run_everywhere(UserCommand::Unsubscribe {
            user: req.user,
            channel: req.channel,
            client: client(&req.client).map(str::to_owned),
        })
        .await?;
    Ok(Empty {})
}

/// Close a user's connections, on every node.
#[utoipa::path(post, path = "/api/disconnect", tag = "connections",
    request_body = DisconnectRequest,
    responses((status = 200, description = "`{}`", body = Response<Empty>)))]
pub(super) async fn disconnect(api: &Api, req: DisconnectRequest) -> Result<Empty, ApiError> {
    let reason = match &req.disconnect {
        Some(d) => custom_disconnect(d)?,
        None => Disconnect::FORCE_NO_RECONNECT,
    };
    api.node
        .run_everywhere(UserCommand::Disconnect {
            client: client(&req.client).map(str::to_owned),
            user: req.user,
            whitelist: req.whitelist,
            code: reason.code,
            reason: reason.reason.to_owned(),
        })
        .await?;
    Ok(Empty {})
}

/// Change when a user's connections expire, or expire them now, on every node.
#[utoipa::path(post, path = "/api/refresh", tag = "connections",
    request_body = RefreshRequest,
    responses((status = 200, description = "`{}`", body = Response<Empty>)))]
pub(super) async fn refresh(api: &Api, req: RefreshRequest) -> Result<Empty, ApiError> {
    let now = i64::try_from(now_secs()).unwrap_or(i64::MAX);
    let expire_now = req.expired || (req.expire_at != 0 && req.expire_at <= now);
    api.node
        .run_everywhere(UserCommand::Refresh {
            client: client(&req.client).map(str::to_owned),
            user: req.user,
            expire_now,
            expire_at: u64::try_from(req.expire_at).ok().filter(|t| *t > 0),
        })
        .await?;
    Ok(Empty {})
}

/// A record's expiry: `expire_at` when given, else `token_revocation_ttl` from now.
fn record_expiry(api: &Api, expire_at: i64) -> u64 {
    u64::try_from(expire_at)
        .ok()
        .filter(|t| *t > 0)
        .unwrap_or_else(|| now_secs() + api.node.config.token_revocation_ttl.as_secs())
}

/// Revoke one token by its id (`jti`).
#[utoipa::path(post, path = "/api/revoke_token", tag = "connections",
    request_body = RevokeTokenRequest,
    responses((status = 200, description = "`{}`", body = Response<Empty>)))]
pub(super) async fn revoke_token(api: &Api, req: &RevokeTokenRequest) -> Result<Empty, ApiError> {
    let node = &api.node;
    node.revocations
        .revoke_token(&req.uid, record_expiry(api, req.expire_at))
        .await
        .map_err(crate::node::NodeError::from)?;
    node.run_everywhere(UserCommand::Revoke {
        revocation: Revocation::Token {
            id: req.uid.clone(),
        },
    })
    .await?;
    Ok(Empty {})
}

/// Invalidate a user's tokens issued before a time.
#[utoipa::path(post, path = "/api/invalidate_user_tokens", tag = "connections",
    request_body = InvalidateUserTokensRequest,
    responses((status = 200, description = "`{}`", body = Response<Empty>)))]
pub(super) async fn invalidate_user_tokens(
    api: &Api,
    req: &InvalidateUserTokensRequest,
) -> Result<Empty, ApiError> {
    let node = &api.node;
    let before = u64::try_from(req.issued_before)
        .ok()
        .filter(|t| *t > 0)
        .unwrap_or_else(now_secs);
    node.revocations
        .invalidate_user_tokens(
            &req.user,
            req.channel.as_deref(),
            before,
            record_expiry(api, req.expire_at),
        )
        .await
        .map_err(crate::node::NodeError::from)?;
    node.run_everywhere(UserCommand::Revoke {
        revocation: Revocation::User {
            user: req.user.clone(),
            channel: req.channel.clone(),
            issued_before: before,
        },
    })
    .await?;
    Ok(Empty {})
}

/// Clients present in a channel.
#[utoipa::path(post, path = "/api/presence", tag = "channels",
    request_body = ChannelRequest,
    responses((status = 200, description = "`result`, or `error` (102 unknown channel, 108 presence off)", body = Response<PresenceResult>)))]
pub(super) async fn presence(api: &Api, req: ChannelRequest) -> Result<PresenceResult, ApiError> {
    let r = api.node.presence(&req.channel).await?;
    Ok(PresenceResult {
        presence: r
            .presence
            .into_iter()
            .map(|(client, info)| (client.to_string(), info.into()))
            .collect(),
    })
}

/// Online state, connection count and last-seen time of users.
#[utoipa::path(post, path = "/api/user_status", tag = "users",
    request_body = UserStatusRequest,
    responses((status = 200, description = "`result`", body = Response<UserStatusResult>)))]
pub(super) async fn user_status(api: &Api, req: &UserStatusRequest) -> UserStatusResult {
    UserStatusResult {
        statuses: api
            .node
            .user_status(&req.users)
            .await
            .into_iter()
            .map(|s| UserStatusView {
                user: s.user,
                online: s.online,
                connections: s.connections,
                last_seen: s.last_seen,
            })
            .collect(),
    }
}

/// Connection and user counts of a channel.
#[utoipa::path(post, path = "/api/presence_stats", tag = "channels",
    request_body = ChannelRequest,
    responses((status = 200, description = "`result`, or `error` (102, 108)", body = Response<PresenceStatsResult>)))]
pub(super) async fn presence_stats(
    api: &Api,
    req: ChannelRequest,
) -> Result<PresenceStatsResult, ApiError> {
    let r = api.node.presence_stats(&req.channel).await?;
    Ok(PresenceStatsResult {
        num_clients: r.num_clients,
        num_users: r.num_users,
    })
}

/// A channel's recent publications.
#[utoipa::path(post, path = "/api/history", tag = "channels",
    request_body = HistoryRequest,
    responses((status = 200, description = "`result`, or `error` (102, 108 history off, 112 unrecoverable position)", body = Response<HistoryResult>)))]
pub(super) async fn history(api: &Api, req: HistoryRequest) -> Result<HistoryResult, ApiError> {
    let query = HistoryQuery {
        since: req
            .since
            .clone()
            .map(|s| switchboard_protocol::StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
        limit: match req.limit {
            None | Some(0) => Some(0),
            Some(n) => usize::try_from(n).ok(),
        },
        reverse: req.reverse,
        ensure: None,
    };
    let h = api.node.history(&req.channel, query).await?;
    Ok(HistoryResult {
        publications: h.publications.into_iter().map(Into::into).collect(),
        offset: h.offset,
        epoch: h.epoch,
    })
}

/// Drop a channel's history.
#[utoipa::path(post, path = "/api/history_remove", tag = "channels",
    request_body = ChannelRequest,
    responses((status = 200, description = "`{}`, or `error` (102)", body = Response<Empty>)))]
pub(super) async fn history_remove(api: &Api, req: ChannelRequest) -> Result<Empty, ApiError> {
    api.node.remove_history(&req.channel).await?;
    Ok(Empty {})
}

/// Channels with subscribers on any node, with their counts summed over the nodes.
#[utoipa::path(post, path = "/api/channels", tag = "channels",
    request_body = ChannelsRequest,
    responses((status = 200, description = "`result`", body = Response<ChannelsResult>)))]
pub(super) async fn channels(api: &Api, req: &ChannelsRequest) -> Result<ChannelsResult, ApiError> {
    let pattern = req
        .pattern
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(Pattern::new);
    let mut channels: BTreeMap<String, ChannelInfo> = BTreeMap::new();
    for node in api.node.cluster_status().await? {
        for (name, n) in node.channels {
            if pattern.as_ref().is_none_or(|p| p.matches(&name)) {
                let info = channels
                    .entry(name)
                    .or_insert(ChannelInfo { num_clients: 0 });
                info.num_clients = info.num_clients.saturating_add(n);
            }
        }
    }
    Ok(ChannelsResult { channels })
}

/// Every node's counts (this node's now, the others' as of their last heartbeat).
#[utoipa::path(post, path = "/api/info", tag = "nodes",
    request_body = InfoRequest,
    responses((status = 200, description = "`result`", body = Response<InfoResult>)))]
pub(super) async fn info(api: &Api, _req: InfoRequest) -> Result<InfoResult, ApiError> {
    let nodes = api
        .node
        .cluster_status()
        .await?
        .into_iter()
        .map(|n| NodeInfo {
            uid: n.uid,
            name: n.name,
            version: n.version,
            num_clients: n.num_clients,
            num_users: n.num_users,
            num_channels: saturate(n.channels.len()),
            num_subs: n.num_subs,
            uptime: n.uptime,
        })
        .collect();
    Ok(InfoResult { nodes })
}

/// Several commands in one request.
#[utoipa::path(post, path = "/api/batch", tag = "batch",
    request_body = BatchRequest,
    responses((status = 200, description = "One reply per command, in order: `{\"<method>\": result}` or `{\"error\": ...}`", body = BatchResult)))]
pub(super) async fn batch(api: &Api, req: BatchRequest) -> BatchResult {
    let mut replies = Vec::with_capacity(req.commands.len());
    for command in req.commands {
        replies.push(match api.execute(command).await {
            Ok(reply) => reply,
            Err(e) => Reply::Error(e.classify().1),
        });
    }
    BatchResult { replies }
}

fn required(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::BadRequest(format!("{field} must not be empty")));
    }
    Ok(())
}

/// An empty `client` means "any connection", as Centrifugo's protobuf defaults have it.
fn client(client: &Option<String>) -> Option<&str> {
    client.as_deref().filter(|c| !c.is_empty())
}

/// An empty key means no key.
fn idempotency_key(key: Option<&str>) -> Option<&str> {
    key.filter(|k| !k.is_empty())
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The payload to publish. Structural newlines are removed: clients read
/// newline-delimited frames, so a pretty-printed payload would split in two.
pub(crate) fn payload(data: RawJson) -> SharedJson {
    if data.get().contains(['\n', '\r']) {
        if let Ok(compact) = RawValue::from_string(minify(data.get())) {
            return compact.into();
        }
    }
    data.into()
}

/// Drops whitespace outside strings (newlines can only be whitespace there: inside a
/// JSON string they are escaped).
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// Most distinct custom disconnect reasons kept for the life of the process.
const MAX_REASONS: usize = 256;

/// Custom reasons seen so far. A [`Disconnect`] carries a `&'static str` (it is `Copy`
/// and travels through every layer), so each distinct reason is leaked once; the cap
/// keeps callers from growing this without bound. Short critical sections only.
static REASONS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The close code and reason a `disconnect` call asks for.
fn custom_disconnect(d: &DisconnectCode) -> Result<Disconnect, ApiError> {
    let code = u16::try_from(d.code)
        .ok()
        .filter(|c| (4000..=4999).contains(c))
        .ok_or_else(|| ApiError::BadRequest("disconnect.code must be in 4000..=4999".into()))?;
    // A close frame's reason holds at most 123 bytes.
    let mut end = d.reason.len().min(123);
    while !d.reason.is_char_boundary(end) {
        end -= 1;
    }
    Ok(Disconnect {
        code,
        reason: intern(&d.reason[..end]),
    })
}

/// `reason` as a `'static` close reason: each distinct reason is leaked once, up to
/// `MAX_REASONS`, after which `"disconnect"` stands in.
pub(crate) fn intern(reason: &str) -> &'static str {
    if reason.is_empty() {
        return "";
    }
    let mut seen = REASONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = seen.iter().find(|r| **r == reason) {
        return r;
    }
    if seen.len() >= MAX_REASONS {
        return "disconnect";
    }
    let leaked: &'static str = Box::leak(reason.to_owned().into_boxed_str());
    seen.push(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_strings_intact() {
        let pretty = "{\n  \"a\": \"x y\\n\\\" }\",\n  \"b\": [1, 2]\n}";
        assert_eq!(minify(pretty), r#"{"a":"x y\n\" }","b":[1,2]}"#);
        let raw = RawValue::from_string(pretty.to_owned()).unwrap();
        assert_eq!(payload(raw).get(), r#"{"a":"x y\n\" }","b":[1,2]}"#);
        let one_line = RawValue::from_string(r#"{"a": 1}"#.to_owned()).unwrap();
        assert_eq!(payload(one_line).get(), r#"{"a": 1}"#, "untouched");
    }

    #[test]
    fn custom_disconnect_codes_and_reasons() {
        let d = |code, reason: &str| DisconnectCode {
            code,
            reason: reason.to_owned(),
        };
        let ok = custom_disconnect(&d(4001, "kicked")).unwrap();
        assert_eq!((ok.code, ok.reason), (4001, "kicked"));
        assert!(std::ptr::eq(
            custom_disconnect(&d(4002, "kicked")).unwrap().reason,
            ok.reason
        ));
        assert!(custom_disconnect(&d(3999, "x")).is_err());
        assert!(custom_disconnect(&d(5000, "x")).is_err());
        assert!(custom_disconnect(&d(70000, "x")).is_err());
        let long = custom_disconnect(&d(4500, &"é".repeat(100))).unwrap();
        assert!(long.reason.len() <= 123 && long.reason.starts_with('é'));
        let cut = custom_disconnect(&d(4500, &"a".repeat(130))).unwrap();
        assert_eq!(cut.reason.len(), 123);
    }
}
