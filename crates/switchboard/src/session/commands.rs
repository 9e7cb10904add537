//! What a session does for the client besides subscribing: publish, presence,
//! history and built-in RPC methods.

use super::*;

impl Session {
    /// Publishes from the client.
    ///
    /// # Errors
    /// Permission denied unless the namespace allows publishing and the client is
    /// subscribed, or the namespace's publish proxy accepts; `TooManyRequests` over the
    /// namespace's publish rate; the proxy's own error or disconnect, or `Internal`
    /// when it fails.
    pub async fn publish(&self, channel: &str, data: Option<SharedJson>) -> SessionResult<()> {
        self.publish_tagged(channel, data, None).await
    }

    /// Publishes from the client with publication tags (a Socket.IO event route's
    /// `event` tag, [`EXCLUDE_CLIENT_TAG`]); the checks are those of [`Session::publish`].
    ///
    /// # Errors
    /// As for [`Session::publish`].
    pub async fn publish_tagged(
        &self,
        channel: &str,
        data: Option<SharedJson>,
        tags: Option<Arc<std::collections::BTreeMap<String, String>>>,
    ) -> SessionResult<()> {
        let identity = self.require_identity()?;
        // A console publishes through the console's API (audited), not as a client.
        if identity.console {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let data = data.ok_or(SessionError::Reply(ErrorCode::BadRequest))?;
        let (ns, info) = {
            let mut st = self.state();
            let sub = st.subs.get_mut(channel);
            let subscribed = sub.is_some();
            let ns = self.node.rules.namespace(channel)?;
            // With a publish proxy the backend decides, subscribed or not.
            let ns = if ns.publish_proxy.is_empty() {
                self.node.rules.check_publish(channel, subscribed)?
            } else {
                ns
            }
            .clone();
            let info = match sub {
                Some(sub) => {
                    if sub.publish_rate.as_mut().is_some_and(|r| !r.try_take()) {
                        return Err(ErrorCode::TooManyRequests.into());
                    }
                    sub.info.clone()
                }
                None if !ns.publish_proxy.is_empty() => ClientInfo {
                    user: identity.user.clone(),
                    client: self.id.clone(),
                    conn_info: identity.info.clone(),
                    chan_info: None,
                },
                None => return Err(ErrorCode::PermissionDenied.into()),
            };
            (ns, info)
        };
        let (data, tags, skip_history) = if ns.publish_proxy.is_empty() {
            (data, tags, false)
        } else {
            let shaped = self
                .publish_via_proxy(&ns.publish_proxy, channel, data.clone())
                .await?;
            // The backend's tags add to (and win over) a route's own.
            let tags = match (tags, shaped.tags) {
                (Some(route), Some(backend)) => {
                    let mut merged = (*route).clone();
                    merged.extend(backend);
                    Some(Arc::new(merged))
                }
                (route, backend) => backend.map(Arc::new).or(route),
            };
            (
                shaped.data.map_or(data, SharedJson::from),
                tags,
                shaped.skip_history,
            )
        };
        if ns.typing {
            self.node
                .typing_signal(channel, &ns, info, data, tags)
                .await?;
        } else {
            self.node
                .publish_shaped(channel, &ns, data, info, tags, skip_history)
                .await?;
        }
        Ok(())
    }

    pub(super) fn subscribed_ns(&self, channel: &str) -> SessionResult<Arc<NamespaceConfig>> {
        self.require_identity()?;
        self.state()
            .subs
            .get(channel)
            .map(|s| s.ns.clone())
            .ok_or(SessionError::Reply(ErrorCode::PermissionDenied))
    }

    /// Presence of a channel the client is subscribed to.
    ///
    /// # Errors
    /// Permission denied when not subscribed, not available when presence is off.
    pub async fn presence(&self, channel: &str) -> SessionResult<PresenceResult> {
        self.subscribed_ns(channel)?;
        Ok(self.node.presence(channel).await?)
    }

    /// Presence counts of a channel the client is subscribed to.
    ///
    /// # Errors
    /// As for [`Session::presence`].
    pub async fn presence_stats(&self, channel: &str) -> SessionResult<PresenceStatsResult> {
        self.subscribed_ns(channel)?;
        Ok(self.node.presence_stats(channel).await?)
    }

    /// History of a channel the client is subscribed to.
    ///
    /// # Errors
    /// Permission denied when not subscribed, not available without history.
    pub async fn history(&self, req: HistoryRequest) -> SessionResult<HistoryResult> {
        self.subscribed_ns(&req.channel)?;
        Ok(self
            .node
            .history(&req.channel, crate::node::history_query(&req))
            .await?)
    }

    /// Calls a built-in server method: `user_status` (`{"users": [...]}`, at most
    /// [`MAX_STATUS_USERS`]) when `user_status.query` allows it, `inbox.delivered` and
    /// `inbox.read` (a [`super::Receipt`]); other methods go to the proxy `rpc_proxies`
    /// maps them to, if any.
    ///
    /// # Errors
    /// `MethodNotFound`, `PermissionDenied`, `BadRequest`, `LimitExceeded`.
    pub async fn rpc(
        &self,
        method: &str,
        data: Option<SharedJson>,
    ) -> SessionResult<Option<SharedJson>> {
        #[derive(serde::Deserialize)]
        struct StatusRequest {
            users: Vec<String>,
        }
        self.require_identity()?;
        match method {
            "user_status" => {
                if !self.node.config.user_status.query {
                    return Err(ErrorCode::PermissionDenied.into());
                }
                let req: StatusRequest = data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .ok_or(SessionError::Reply(ErrorCode::BadRequest))?;
                if req.users.len() > MAX_STATUS_USERS {
                    return Err(ErrorCode::LimitExceeded.into());
                }
                let statuses = self.node.user_status(&req.users).await;
                let json = serde_json::json!({ "statuses": statuses }).to_string();
                let raw = serde_json::value::RawValue::from_string(json)
                    .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
                Ok(Some(SharedJson::from(raw)))
            }
            "inbox.delivered" => self.inbox_rpc(crate::inbox::Mark::Delivered, data).await,
            "inbox.read" => self.inbox_rpc(crate::inbox::Mark::Read, data).await,
            _ => {
                if let Some(answer) = self.rpc_via_proxy(method, data).await {
                    return answer;
                }
                tracing::debug!(client = %self.id, method, "unknown rpc method");
                Err(ErrorCode::MethodNotFound.into())
            }
        }
    }
}
