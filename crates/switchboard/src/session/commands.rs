//! What a session does for the client besides subscribing: publish, presence,
//! history and built-in RPC methods.

use super::*;

impl Session {
    /// Publishes from the client.
    ///
    /// # Errors
    /// Permission denied unless the namespace allows publishing and the client is
    /// subscribed; `TooManyRequests` over the namespace's publish rate.
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
        self.require_identity()?;
        let data = data.ok_or(SessionError::Reply(ErrorCode::BadRequest))?;
        let (ns, info) = {
            let mut st = self.state();
            let sub = st.subs.get_mut(channel);
            let subscribed = sub.is_some();
            let ns = self.node.rules.check_publish(channel, subscribed)?.clone();
            let Some(sub) = sub else {
                return Err(ErrorCode::PermissionDenied.into());
            };
            if !sub.publish_rate.try_take() {
                return Err(ErrorCode::TooManyRequests.into());
            }
            (ns, sub.info.clone())
        };
        if ns.typing {
            self.node
                .typing_signal(channel, &ns, info, data, tags)
                .await?;
        } else {
            self.node
                .publish_in(channel, &ns, data, Some(info), tags)
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
    /// [`MAX_STATUS_USERS`]) when `user_status.query` allows it.
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
                let statuses = self.node.user_status(&req.users);
                let json = serde_json::json!({ "statuses": statuses }).to_string();
                let raw = serde_json::value::RawValue::from_string(json)
                    .map_err(|_| SessionError::Reply(ErrorCode::Internal))?;
                Ok(Some(SharedJson::from(raw)))
            }
            _ => {
                tracing::debug!(client = %self.id, method, "unknown rpc method");
                Err(ErrorCode::MethodNotFound.into())
            }
        }
    }
}
