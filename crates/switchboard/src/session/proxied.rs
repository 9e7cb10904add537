//! The session's side of the proxies: what it asks the app backend at connect,
//! subscribe, publish and RPC time, and the timers that ask again (refresh of a
//! proxied connection, sub_refresh of a proxied subscription).

use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_protocol::command::SubscribeRequest;

use super::*;
use crate::auth::Grant;
use crate::proxy::{wire, Admitted, ClientOrigin, ProxyError, ProxyKind};

impl From<ProxyError> for SessionError {
    /// What a client sees of a proxy call: the backend's own error or disconnect, or
    /// a temporary internal error (100) when the backend failed.
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Refused(body) => Self::Rejected(Box::new(ErrorReply {
                code: body.code,
                message: body.message,
                temporary: body.temporary,
            })),
            ProxyError::Disconnect(d) => Self::Disconnect(d),
            ProxyError::Timeout
            | ProxyError::Unreachable(_)
            | ProxyError::Status(_)
            | ProxyError::BadAnswer(_) => Self::Reply(ErrorCode::Internal),
        }
    }
}

/// The stamp of a credential the connect or refresh proxy gives now: no `jti`, issued
/// now (taken before the request, so an answer that crosses an invalidation is judged
/// by when it was asked for).
fn proxy_stamp() -> crate::auth::TokenStamp {
    crate::auth::TokenStamp {
        id: None,
        issued_at: Some(now_secs()),
    }
}

fn raw(json: Option<Box<RawValue>>) -> Option<SharedJson> {
    json.map(SharedJson::from)
}

/// What the connect proxy's answer gives a connection.
pub(super) struct ProxiedConnect {
    /// Who the client is.
    pub identity: Identity,
    /// When the refresh proxy is asked to extend the connection.
    pub expire_at: Option<u64>,
    /// The connect reply's `data`.
    pub data: Option<SharedJson>,
    /// What the backend gave for each of its `subs`: the subscriber's channel info,
    /// and the subscription's `data`.
    pub subs: HashMap<String, (Option<SharedJson>, Option<SharedJson>)>,
}

/// The namespace as this subscriber sees it: with presence turned off, or join and
/// leave turned on or off, when the subscribe proxy said so.
pub(super) fn overridden(
    ns: Arc<NamespaceConfig>,
    overrides: wire::SubscribeOverride,
) -> Arc<NamespaceConfig> {
    let presence = overrides.presence.map(|b| b.value && ns.presence);
    let join_leave = overrides.join_leave.map(|b| b.value);
    if presence.is_none_or(|p| p == ns.presence) && join_leave.is_none_or(|j| j == ns.join_leave) {
        return ns;
    }
    let mut changed = NamespaceConfig::clone(&ns);
    changed.presence = presence.unwrap_or(ns.presence);
    changed.join_leave = join_leave.unwrap_or(ns.join_leave);
    Arc::new(changed)
}

impl Session {
    /// Records what the client's HTTP request said, for the proxies of this connection.
    /// The first call wins.
    pub fn set_origin(&self, origin: ClientOrigin) {
        let _ = self.origin.set(origin);
    }

    fn origin(&self) -> &ClientOrigin {
        static NONE: ClientOrigin = ClientOrigin::empty();
        self.origin.get().unwrap_or(&NONE)
    }

    fn conn<'a>(&'a self, identity: Option<&'a Identity>) -> wire::Conn<'a> {
        wire::Conn {
            client: &self.id,
            transport: self.origin().transport,
            protocol: "json",
            encoding: "json",
            user: identity.map(|i| &*i.user),
            meta: identity.and_then(|i| i.meta.as_deref()),
        }
    }

    /// Asks the connect proxy who this token-less client is.
    pub(super) async fn connect_via_proxy(
        &self,
        req: &ConnectRequest,
    ) -> SessionResult<ProxiedConnect> {
        let node = &self.node;
        let Some(endpoint) = node.proxies.connect() else {
            return Err(SessionError::Disconnect(Disconnect::INVALID_TOKEN));
        };
        let channels: Vec<String> = req.subs.keys().cloned().collect();
        let body = wire::ConnectRequest {
            conn: self.conn(None),
            name: &req.name,
            version: &req.version,
            data: req.data.as_deref(),
            channels: &channels,
        };
        // The proxy's answer stands in for a token issued when it was asked: a user's
        // invalidation (`invalidate_user_tokens`) covers it like a token's `iat`.
        let issued = proxy_stamp();
        let result: wire::ConnectResult = node
            .proxies
            .call(ProxyKind::Connect, endpoint, self.origin(), &body, true)
            .await?;
        if result.expire_at > 0 && result.expire_at <= now_secs() {
            return Err(ErrorCode::Expired.into());
        }
        let mut channels = result.channels;
        let mut subs = HashMap::new();
        for (channel, options) in result.subs {
            if !channels.contains(&channel) {
                channels.push(channel.clone());
            }
            subs.insert(channel, (raw(options.info), raw(options.data)));
        }
        let identity = Identity {
            user: result.user.into(),
            info: raw(result.info),
            channels,
            meta: raw(result.meta),
            roles: result.roles,
            tenant: result.tenant.filter(|t| !t.is_empty()),
            token: Some(issued),
            ..Identity::default()
        };
        self.check_revoked(&identity.user, None, identity.token.as_ref())
            .await?;
        Ok(ProxiedConnect {
            identity,
            expire_at: (result.expire_at > 0).then_some(result.expire_at),
            data: raw(result.data),
            subs,
        })
    }

    /// Keeps a proxied connection until `expire_at`, then asks the refresh proxy to
    /// extend it; without a refresh proxy, or when the backend says `expired`, the
    /// connection closes with 3005. A failing backend is asked again after
    /// `proxy.refresh_retry_interval`, the connection kept meanwhile.
    pub(super) fn spawn_proxy_refresh(self: &Arc<Self>, expire_at: u64) {
        let session = self.clone();
        let stop = self.stop_token();
        self.node.tracker.spawn(async move {
            let mut expire_at = expire_at;
            loop {
                let wait = Duration::from_secs(expire_at.saturating_sub(now_secs()));
                tokio::select! {
                    // Cancel-safe: holds no state.
                    () = stop.cancelled() => return,
                    // Cancel-safe: a timer.
                    () = tokio::time::sleep(wait) => {}
                }
                match session.refresh_via_proxy().await {
                    Ok(Some(next)) => expire_at = next,
                    Ok(None) => {
                        session.close(Disconnect::EXPIRED);
                        return;
                    }
                    Err(SessionError::Disconnect(d)) => {
                        session.close(d);
                        return;
                    }
                    Err(_) => {
                        let retry = session.node.config.proxy.refresh_retry_interval;
                        expire_at = now_secs() + retry.as_secs().max(1);
                    }
                }
            }
        });
    }

    /// The new expiry, or `None` when the connection must end.
    async fn refresh_via_proxy(&self) -> SessionResult<Option<u64>> {
        let node = &self.node;
        let Some(endpoint) = node.proxies.refresh() else {
            return Ok(None);
        };
        let identity = self.require_identity()?;
        let body = wire::RefreshRequest {
            conn: self.conn(Some(&identity)),
        };
        let issued = proxy_stamp();
        let result: wire::RefreshResult = node
            .proxies
            .call(ProxyKind::Refresh, endpoint, self.origin(), &body, true)
            .await?;
        if result.expired || result.expire_at <= now_secs() {
            return Ok(None);
        }
        // A refresh renews the connection's credential: one asked for before a user's
        // invalidation time still falls under it.
        self.check_revoked(&identity.user, None, Some(&issued))
            .await?;
        self.renew_identity(Some(issued), raw(result.info));
        Ok(Some(result.expire_at))
    }

    /// Asks the namespace's subscribe proxy (or its cache) whether the client may
    /// subscribe; a yes grants the channel with the info the backend gave, and the
    /// data and namespace overrides the subscription gets.
    pub(super) async fn subscribe_via_proxy(
        &self,
        identity: &Identity,
        ns: &NamespaceConfig,
        req: &SubscribeRequest,
    ) -> SessionResult<(Grant, Admitted)> {
        let node = &self.node;
        let Some(endpoint) = node.proxies.named(&ns.subscribe_proxy) else {
            return Err(ErrorCode::PermissionDenied.into());
        };
        let channel: Arc<str> = req.channel.as_str().into();
        // An anonymous user is one cache key for many people: never cached.
        let cacheable = !ns.subscribe_proxy_cache_ttl.is_zero() && !identity.user.is_empty();
        if cacheable {
            if let Some(hit) = node.proxies.cache().get(&identity.user, &channel) {
                let grant = Grant {
                    info: hit.answer.info.clone(),
                    ..Grant::default()
                };
                return Ok((grant, hit.answer));
            }
        }
        let body = wire::ChannelRequest {
            conn: self.conn(Some(identity)),
            channel: &req.channel,
            token: &req.token,
            data: req.data.as_deref(),
        };
        let result: wire::SubscribeResult = node
            .proxies
            .call(ProxyKind::Subscribe, endpoint, self.origin(), &body, false)
            .await?;
        let admitted = Admitted {
            info: raw(result.info),
            data: raw(result.data),
            overrides: result.overrides,
        };
        if cacheable {
            node.proxies.cache().put(
                identity.user.clone(),
                channel,
                admitted.clone(),
                ns.subscribe_proxy_cache_ttl,
            );
        }
        let grant = Grant {
            info: admitted.info.clone(),
            expires_at: (result.expire_at > 0).then_some(result.expire_at),
            ..Grant::default()
        };
        Ok((grant, admitted))
    }

    /// Asks the namespace's sub_refresh proxy every `sub_refresh_interval` (or at the
    /// backend's `expire_at`, if sooner) whether the subscription goes on; ends it with
    /// an unsubscribe push ([`Unsubscribe::EXPIRED`]) when the backend says `expired`
    /// or refuses. A failing backend leaves the subscription as it is until the next
    /// check. Returns the guard that stops the checks when the subscription goes.
    pub(super) fn spawn_sub_refresh(
        self: &Arc<Self>,
        channel: Arc<str>,
        ns: &NamespaceConfig,
        expire_at: Option<u64>,
    ) -> Option<tokio_util::sync::DropGuard> {
        let endpoint = self.node.proxies.named(&ns.sub_refresh_proxy)?.clone();
        let interval = ns.sub_refresh_interval;
        let stop = self.stop_token().child_token();
        let session = self.clone();
        let guard = stop.clone().drop_guard();
        self.node.tracker.spawn(async move {
            let mut next = expire_at;
            loop {
                let wait = match next {
                    Some(at) => interval.min(Duration::from_secs(at.saturating_sub(now_secs()))),
                    None => interval,
                };
                tokio::select! {
                    // Cancel-safe: holds no state.
                    () = stop.cancelled() => return,
                    // Cancel-safe: a timer.
                    () = tokio::time::sleep(wait) => {}
                }
                let Some(identity) = session.identity() else {
                    return;
                };
                let body = wire::ChannelRequest {
                    conn: session.conn(Some(&identity)),
                    channel: &channel,
                    token: "",
                    data: None,
                };
                let answer: Result<wire::RefreshResult, ProxyError> = session
                    .node
                    .proxies
                    .call(
                        ProxyKind::SubRefresh,
                        &endpoint,
                        session.origin(),
                        &body,
                        false,
                    )
                    .await;
                match answer {
                    Ok(r) if !r.expired => {
                        next = (r.expire_at > now_secs()).then_some(r.expire_at);
                    }
                    Ok(_) | Err(ProxyError::Refused(_)) => {
                        session
                            .unsubscribe_with(&channel, Unsubscribe::EXPIRED)
                            .await;
                        return;
                    }
                    Err(ProxyError::Disconnect(d)) => {
                        session.close(d);
                        return;
                    }
                    Err(_) => next = None,
                }
            }
        });
        Some(guard)
    }

    /// Sends a client publication through the namespace's publish proxy: the backend
    /// may refuse it, replace its data, set its tags or keep it out of history.
    pub(super) async fn publish_via_proxy(
        &self,
        proxy: &str,
        channel: &str,
        data: SharedJson,
    ) -> SessionResult<wire::PublishResult> {
        let node = &self.node;
        let Some(endpoint) = node.proxies.named(proxy) else {
            return Err(ErrorCode::PermissionDenied.into());
        };
        let identity = self.require_identity()?;
        let body = wire::ChannelRequest {
            conn: self.conn(Some(&identity)),
            channel,
            token: "",
            data: Some(&data),
        };
        Ok(node
            .proxies
            .call(ProxyKind::Publish, endpoint, self.origin(), &body, false)
            .await?)
    }

    /// Forwards an RPC call to the proxy its method maps to, if any.
    pub(super) async fn rpc_via_proxy(
        &self,
        method: &str,
        data: Option<SharedJson>,
    ) -> Option<SessionResult<Option<SharedJson>>> {
        let node = &self.node;
        let endpoint = node.proxies.rpc(method)?;
        let identity = match self.require_identity() {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        let body = wire::RpcRequest {
            conn: self.conn(Some(&identity)),
            method,
            data: data.as_deref(),
        };
        let result = node
            .proxies
            .call::<wire::RpcResult>(ProxyKind::Rpc, endpoint, self.origin(), &body, false)
            .await;
        Some(result.map(|r| raw(r.data)).map_err(SessionError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_join_leave_both_ways_and_presence_only_to_off() {
        let off = Some(wire::BoolValue { value: false });
        let on = Some(wire::BoolValue { value: true });
        let ns = Arc::new(NamespaceConfig {
            presence: true,
            join_leave: true,
            ..NamespaceConfig::default()
        });
        let quiet = overridden(
            ns.clone(),
            wire::SubscribeOverride {
                presence: off,
                join_leave: off,
            },
        );
        assert!(!quiet.presence && !quiet.join_leave);
        // Nothing to change: the namespace itself, not a copy.
        let same = overridden(ns.clone(), wire::SubscribeOverride::default());
        assert!(Arc::ptr_eq(&same, &ns));
        let plain = Arc::new(NamespaceConfig::default());
        let loud = overridden(
            plain,
            wire::SubscribeOverride {
                presence: on,
                join_leave: on,
            },
        );
        assert!(!loud.presence && loud.join_leave);
    }
}
