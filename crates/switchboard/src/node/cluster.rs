//! The node among other nodes: the leases it keeps alive (its presence entries and its
//! status record), the sweep of dead nodes' presence entries, commands run on every
//! node, and publishes made idempotent across nodes.

use std::sync::Arc;

use switchboard_protocol::{Disconnect, StreamPosition};

use super::{Node, NodeError};
use crate::cluster::{disconnect_of, Envelope, NodeStatus, UserCommand};
use crate::engine::{Claim, EngineError};

impl Node {
    /// Publishes once per `key` of `channel` within `window` across every node: a
    /// retry (through any node) gets the first result. `publish` runs only when this
    /// call is first.
    ///
    /// # Errors
    /// What `publish` returns, or an engine failure.
    pub async fn publish_idempotent<F, Fut>(
        &self,
        channel: &str,
        key: &str,
        window: std::time::Duration,
        publish: F,
    ) -> Result<StreamPosition, NodeError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<StreamPosition, NodeError>>,
    {
        let deadline = tokio::time::Instant::now() + self.config.redis.command_timeout;
        loop {
            match self.engine.claim_idempotent(channel, key, window).await? {
                Claim::First => break,
                Claim::Done(pos) => return Ok(pos),
                // The first publish is under way on another node: wait for its result.
                Claim::Pending if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Claim::Pending => {
                    return Err(EngineError::Unavailable(
                        "an earlier publish with this idempotency key is still running".into(),
                    )
                    .into())
                }
            }
        }
        let result = publish().await;
        if let Err(e) = self
            .engine
            .settle_idempotent(channel, key, result.as_ref().ok(), window)
            .await
        {
            tracing::warn!(%channel, error = %e, "idempotency record failed");
        }
        result
    }

    /// Runs periodic housekeeping until shutdown: engine upkeep and status sweeps once
    /// a minute, presence leases refreshed every third of the lease and swept every
    /// quarter of it.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        self.spawn_inbox_flusher();
        let node = self.clone();
        tokio::spawn(async move {
            let lease = node.config.presence_lease;
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            let mut refresh = tokio::time::interval(lease / 3);
            let mut sweep = tokio::time::interval(lease / 4);
            for t in [&mut tick, &mut refresh, &mut sweep] {
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                // Every arm is cancel-safe (interval ticks and a cancellation).
                tokio::select! {
                    _ = tick.tick() => {
                        node.engine.maintain().await;
                        node.inbox.maintain().await;
                        node.status.sweep(node.config.user_status.last_seen_ttl);
                    }
                    _ = refresh.tick() => {
                        node.refresh_presence().await;
                        node.heartbeat().await;
                        node.refresh_seen().await;
                    }
                    _ = sweep.tick() => node.sweep_presence().await,
                    () = node.shutdown.cancelled() => return,
                }
            }
        });
    }

    /// This node's status, as `info` shows it and the other nodes see it.
    pub fn local_status(&self) -> NodeStatus {
        let (users, clients) = self.hub.counts();
        let saturate = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        NodeStatus {
            uid: self.uid.clone(),
            name: self.name.clone(),
            version: crate::VERSION.to_owned(),
            num_clients: saturate(clients),
            num_users: saturate(users),
            num_subs: saturate(usize::try_from(self.metrics.subscriptions.get()).unwrap_or(0)),
            uptime: u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX),
            channels: self
                .hub
                .channels()
                .into_iter()
                .map(|(c, n)| (c.to_string(), saturate(n)))
                .collect(),
        }
    }

    async fn heartbeat(&self) {
        let Ok(status) = serde_json::to_string(&self.local_status()) else {
            return;
        };
        if let Err(e) = self.engine.heartbeat(&self.uid, status).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
    }

    /// Every live node's status: this node's as of now, the others' as of their last
    /// heartbeat (at most a third of `presence_lease` old).
    ///
    /// # Errors
    /// An engine failure.
    pub async fn cluster_status(&self) -> Result<Vec<NodeStatus>, NodeError> {
        let mut out = vec![self.local_status()];
        for record in self.engine.nodes().await? {
            match serde_json::from_str::<NodeStatus>(&record) {
                Ok(s) if s.uid != self.uid => out.push(s),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "undecodable node status"),
            }
        }
        Ok(out)
    }

    /// Runs a user command here and on every other node.
    ///
    /// # Errors
    /// The command is invalid (unknown channel), or the engine could not reach the
    /// other nodes (it ran here all the same).
    pub async fn run_everywhere(&self, command: UserCommand) -> Result<(), NodeError> {
        if let UserCommand::Subscribe { channel, .. } | UserCommand::Unsubscribe { channel, .. } =
            &command
        {
            self.rules.namespace(channel)?;
        }
        self.apply(&command).await;
        let envelope = Envelope {
            from: self.uid.clone(),
            command,
        };
        let payload =
            serde_json::to_string(&envelope).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        Ok(self.engine.publish_control(payload).await?)
    }

    /// Runs a user command on this node's sessions.
    pub async fn apply(&self, command: &UserCommand) {
        match command {
            UserCommand::Disconnect {
                user,
                client,
                whitelist,
                code,
                reason,
            } => {
                let reason = disconnect_of(*code, reason);
                for s in self.user_sessions(user, client.as_deref()) {
                    if !whitelist.iter().any(|keep| **keep == *s.id) {
                        s.close(reason);
                    }
                }
            }
            UserCommand::Subscribe {
                user,
                channel,
                client,
            } => {
                let _ = self.subscribe_user(user, channel, client.as_deref()).await;
            }
            UserCommand::Unsubscribe {
                user,
                channel,
                client,
            } => {
                let _ = self
                    .unsubscribe_user(user, channel, client.as_deref())
                    .await;
            }
            UserCommand::Refresh {
                user,
                client,
                expire_now,
                expire_at,
            } => {
                for s in self.user_sessions(user, client.as_deref()) {
                    if *expire_now {
                        s.close(Disconnect::EXPIRED);
                    } else {
                        s.set_expires_at(*expire_at);
                    }
                }
            }
            UserCommand::Revoke { revocation } => self.apply_revocation(revocation).await,
            UserCommand::InboxRead {
                user,
                channel,
                marks,
                except,
            } => self.push_inbox_read(user, channel, marks, except.as_deref()),
        }
    }

    /// Extends the leases of this node's presence entries.
    async fn refresh_presence(&self) {
        let mut owners = Vec::new();
        let mut entries = Vec::new();
        for session in self.hub.sessions() {
            for entry in session.presence_entries() {
                owners.push(session.clone());
                entries.push(entry);
            }
        }
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.engine.refresh_presence(&entries).await {
            tracing::warn!(error = %e, "presence refresh failed");
        }
        // A session that left a channel while the refresh was under way had its entry
        // put back by it: take it out again, or it would linger for a lease.
        for (session, (channel, info)) in owners.iter().zip(&entries) {
            if !session.is_subscribed(channel) {
                let _ = self
                    .engine
                    .remove_presence(channel, &info.client, &info.user)
                    .await;
            }
        }
    }

    /// Removes expired presence entries (of dead nodes) in the channels this node
    /// serves, and tells the local and remote subscribers they left.
    async fn sweep_presence(&self) {
        for (channel, _) in self.hub.channels() {
            let Ok(ns) = self.rules.namespace(&channel) else {
                continue;
            };
            if !ns.presence {
                continue;
            }
            let ns = ns.clone();
            let gone = match self.engine.expire_presence(&channel).await {
                Ok(gone) => gone,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "presence sweep failed");
                    return;
                }
            };
            for (info, last_of_user) in gone {
                tracing::info!(%channel, client = %info.client, "presence lease expired");
                if last_of_user || !ns.presence_per_user {
                    self.hooks.on_lifecycle(crate::hooks::Lifecycle::Left {
                        channel: channel.clone(),
                        info: info.clone(),
                    });
                }
                // The dead node's typing timer died with it: end the typing here.
                if ns.typing {
                    if let Ok(Some(typing)) = self.typing.stop(&channel, &info.user).await {
                        self.publish_typing_stop(&channel, typing).await;
                    }
                }
                if ns.join_leave && (last_of_user || !ns.presence_per_user) {
                    let _ = self.engine.publish_leave(&channel, info).await;
                }
            }
        }
    }
}
