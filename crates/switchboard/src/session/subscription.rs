//! Subscriptions of a session: subscribe, unsubscribe, recovery, and the pending phase
//! that queues a subscribe reply before the channel's events, with no gap and no
//! duplicate between recovered publications and live ones.

use super::*;
use crate::delivery::{Delivery, Requested};
use crate::event::EventKind;

/// Marks subscriptions whose reply is on its way; completing it queues the reply
/// first, then the events that arrived meanwhile (skipping those already covered).
#[must_use = "complete() queues the reply and releases buffered events"]
pub struct Activation {
    pub(super) session: Arc<Session>,
    pub(super) channels: Vec<(Arc<str>, u64)>,
}

impl Activation {
    /// Queues `first` (the reply or push announcing the subscriptions), then releases
    /// buffered events.
    pub fn complete(mut self, first: Option<Outgoing>) {
        self.session
            .activate(first, std::mem::take(&mut self.channels));
    }

    /// Queues `first`, then `read` (what the transport read from the channel's history
    /// after subscribing: a Pusher cache channel's last event, at offset `seen`), then
    /// releases buffered events newer than `seen`: none is sent twice.
    pub fn complete_with(mut self, first: Outgoing, read: Outgoing, seen: u64) {
        let mut channels = std::mem::take(&mut self.channels);
        for (_, offset) in &mut channels {
            *offset = (*offset).max(seen);
        }
        self.session.activate([first, read], channels);
    }
}

impl Drop for Activation {
    fn drop(&mut self) {
        if !self.channels.is_empty() {
            self.session
                .activate(None, std::mem::take(&mut self.channels));
        }
    }
}

/// Outcome of a successful subscribe.
pub struct Subscribed {
    /// The reply.
    pub result: SubscribeResult,
    /// The recovery in the reply came from the user's inbox (the client gave no
    /// position): its publications are what the user had not received.
    pub from_inbox: bool,
    /// Activate once the reply is queued.
    pub activation: Activation,
}

/// The publication tag naming the one connection a publication skips: the sender of a
/// Socket.IO route with `exclude_sender` (`socket.to(room).emit`), of a Pusher client
/// event, or whom the server API's publisher names. On publish it leaves the tags for
/// [`switchboard_protocol::Publication::exclude_client`], which no client sees.
pub const EXCLUDE_CLIENT_TAG: &str = "exclude_client";

impl Session {
    /// Delivers a channel event (called by the hub; never blocks), as `delivery` (how
    /// the subscription wants its events, if it asked for anything) says; `place`, the
    /// event's place in its channel's feed, lets a plain subscriber's outbox queue it
    /// as part of a run ([`crate::feed`]).
    pub fn deliver(
        &self,
        event: &Arc<ChannelEvent>,
        delivery: Option<&Delivery>,
        place: Option<Place<'_>>,
    ) {
        match &event.kind {
            EventKind::Publication(p) => {
                if p.exclude_client.as_deref() == Some(&*self.id) {
                    return;
                }
                if p.offset > 0 && self.has_inbox.load(Ordering::Acquire) {
                    self.note_delivered(&event.channel, p.offset);
                }
            }
            EventKind::Join(info) | EventKind::Leave(info) => {
                if !self.codec.own_presence && info.client == self.id {
                    return;
                }
            }
        }
        if self.pending_count.load(Ordering::Acquire) > 0 {
            let mut pending = self.pending();
            if let Some((buf, _)) = pending.as_mut().and_then(|p| p.get_mut(&event.channel)) {
                if buf.len() >= self.node.config.limits.outbox_size {
                    drop(pending);
                    self.node.metrics.outbox_drops.inc();
                    if self.close(Disconnect::SLOW) {
                        self.node.metrics.slow_disconnects.inc();
                    }
                    return;
                }
                buf.push(event.clone());
                return;
            }
            // Queue under the lock so an activation can not overtake this event.
            self.enqueue(self.encode(event, delivery));
            return;
        }
        match (place, delivery) {
            (Some(place), None) => self.enqueue_at(event, place),
            _ => self.enqueue(self.encode(event, delivery)),
        }
    }

    /// Queues a transport's own push about `channel` (no channel event: a Pusher
    /// subscription count), unless the subscription to it waits for its subscribe
    /// reply, which must come first. Returns whether it was queued.
    pub fn push_about(&self, channel: &str, item: Outgoing) -> bool {
        if self.pending_count.load(Ordering::Acquire) > 0 {
            let pending = self.pending();
            if pending.as_ref().is_some_and(|p| p.contains_key(channel)) {
                return false;
            }
            // Queue under the lock so an activation can not overtake this push.
            self.enqueue(item);
            return true;
        }
        self.enqueue(item);
        true
    }

    /// An event as an outbox item: one reference-count increment on the shared frame
    /// (a delta subscriber's publication: on the shared delta or full frame). Called as
    /// the item is queued, in order.
    pub(super) fn encode(&self, event: &ChannelEvent, delivery: Option<&Delivery>) -> Outgoing {
        let frame = delivery
            .and_then(|d| d.frame(event, self.codec))
            .unwrap_or_else(|| event.encoded(self.codec, &self.node.config));
        Outgoing::Event(frame)
    }

    fn activate(&self, first: impl IntoIterator<Item = Outgoing>, channels: Vec<(Arc<str>, u64)>) {
        let mut pending = self.pending();
        for item in first {
            self.enqueue(item);
        }
        for (channel, offset) in channels {
            if let Some((buf, delivery)) = pending.as_mut().and_then(|p| p.remove(&channel)) {
                self.pending_count.fetch_sub(1, Ordering::AcqRel);
                for ev in buf {
                    let o = ev.offset();
                    if o == 0 || o > offset {
                        self.enqueue(self.encode(&ev, delivery.as_deref()));
                    }
                }
            }
        }
        // Empty again: the map's memory goes back (a map keeps its capacity), as most
        // connections subscribe once and then idle.
        if pending.as_ref().is_some_and(|p| p.is_empty()) {
            *pending = None;
        }
    }

    /// Subscribes to a channel on the client's request.
    ///
    /// # Errors
    /// Unknown channel, permission denied, already subscribed, limit exceeded, token
    /// expired; an invalid subscription token is `PermissionDenied`.
    pub async fn subscribe(self: &Arc<Self>, req: SubscribeRequest) -> SessionResult<Subscribed> {
        let identity = self.require_identity()?;
        if identity.console {
            return self.watch(req).await;
        }
        let node = self.node.clone();
        // Validate the name before verifying any token.
        node.rules.namespace(&req.channel)?;
        let grant = if req.token.is_empty() {
            None
        } else {
            match node
                .verifier
                .verify_subscription(&req.token, &identity.user, &req.channel)
                .await
            {
                Ok(g) => {
                    self.check_revoked(&identity.user, Some(&req.channel), g.token.as_ref())
                        .await?;
                    Some(g)
                }
                Err(AuthError::Expired) => return Err(ErrorCode::TokenExpired.into()),
                Err(AuthError::Invalid(why)) => {
                    tracing::info!(client = %self.id, channel = %req.channel, reason = %why, "subscription token refused");
                    return Err(ErrorCode::PermissionDenied.into());
                }
            }
        };
        self.subscribe_granted(req, grant).await
    }

    /// Subscribes with what a transport's own authorization granted (a Pusher auth
    /// signature), or with nothing: then the rules decide, and the subscribe proxy
    /// when they refuse, as for [`Session::subscribe`] without a token.
    ///
    /// # Errors
    /// As for [`Session::subscribe`].
    pub async fn subscribe_granted(
        self: &Arc<Self>,
        req: SubscribeRequest,
        grant: Option<crate::auth::Grant>,
    ) -> SessionResult<Subscribed> {
        let identity = self.require_identity()?;
        let node = self.node.clone();
        node.rules.namespace(&req.channel)?;
        let mut grant = grant;
        let mut proxied = false;
        let mut data = None;
        let ns = match node
            .rules
            .check_subscribe(&identity, &req.channel, grant.is_some())
        {
            Ok(ns) => ns.clone(),
            // The rules alone do not admit the client: the app backend may.
            Err(RuleError::PermissionDenied) => {
                let ns = node.rules.namespace(&req.channel)?.clone();
                if ns.subscribe_proxy.is_empty() {
                    return Err(ErrorCode::PermissionDenied.into());
                }
                let (granted, admitted) = self.subscribe_via_proxy(&identity, &ns, &req).await?;
                grant = Some(granted);
                proxied = true;
                data = admitted.data;
                super::proxied::overridden(ns, admitted.overrides)
            }
            Err(e) => return Err(e.into()),
        };
        let requested = Requested {
            filter: req.tf.as_ref(),
            delta: &req.delta,
        };
        let history = node.history_options(&ns).is_some();
        let delivery = Delivery::requested(requested, &ns, &node.config.limits, history, self.codec)
            .map_err(|e| {
                tracing::info!(client = %self.id, channel = %req.channel, reason = %e, "subscribe refused");
                SessionError::Rejected(Box::new(ErrorReply {
                    code: ErrorCode::BadRequest.code(),
                    message: e.to_string(),
                    temporary: false,
                }))
            })?
            .map(Arc::new);
        let deltas = delivery.as_deref().is_some_and(Delivery::takes_deltas);
        let since = req.recover.then(|| StreamPosition {
            offset: req.offset,
            epoch: req.epoch.clone(),
        });
        let channel: Arc<str> = req.channel.into();
        // A proxied subscription's expiry is the sub_refresh proxy's business, not the
        // token timer's.
        let proxy_expiry = grant
            .as_mut()
            .filter(|_| proxied)
            .and_then(|g| g.expires_at.take());
        let mut subscribed = self
            .subscribe_inner(&channel, ns.clone(), grant, since, false, delivery)
            .await?;
        subscribed.result.data = data;
        subscribed.result.delta = deltas;
        if proxied {
            if let Some(guard) = self.spawn_sub_refresh(channel.clone(), &ns, proxy_expiry) {
                if let Some(sub) = self.state().subs.get_mut(&channel) {
                    sub.extra_mut()._proxy_checks = Some(guard);
                }
            }
        }
        Ok(subscribed)
    }

    /// Subscribes on the server's initiative (server API), pushing `subscribe` to the client.
    ///
    /// # Errors
    /// As for [`Session::subscribe`], without permission checks.
    pub async fn server_subscribe(self: &Arc<Self>, channel: &str) -> SessionResult<()> {
        let ns = self.node.rules.namespace(channel)?.clone();
        let channel: Arc<str> = channel.into();
        let s = self
            .subscribe_inner(&channel, ns, None, None, false, None)
            .await?;
        s.activation
            .complete(Some(Outgoing::Control(Box::new(Control::Subscribed {
                channel,
                result: s.result,
            }))));
        Ok(())
    }

    /// An operator console's subscribe: to a channel of its feed, or to any channel of
    /// a configured namespace as a watcher, which gets the channel's events (and may
    /// read its presence and history) but joins nothing: no presence entry, no join or
    /// leave, not counted, no hook.
    async fn watch(self: &Arc<Self>, req: SubscribeRequest) -> SessionResult<Subscribed> {
        let node = self.node.clone();
        let ns = if crate::admin::feed::is_feed(&req.channel) {
            if !crate::admin::feed::is_view(&req.channel, &node.rules) {
                return Err(ErrorCode::UnknownChannel.into());
            }
            Arc::new(NamespaceConfig::default())
        } else {
            node.rules.namespace(&req.channel)?.clone()
        };
        let since = req.recover.then(|| StreamPosition {
            offset: req.offset,
            epoch: req.epoch.clone(),
        });
        let channel: Arc<str> = req.channel.into();
        self.subscribe_inner(&channel, ns, None, since, true, None)
            .await
    }

    /// Subscribes (or, `watching`, adds a console's watch) once permission is settled,
    /// with what the subscription asked of the channel's events.
    pub(super) async fn subscribe_inner(
        self: &Arc<Self>,
        channel: &Arc<str>,
        ns: Arc<NamespaceConfig>,
        grant: Option<crate::auth::Grant>,
        since: Option<StreamPosition>,
        watching: bool,
        delivery: Option<Arc<Delivery>>,
    ) -> SessionResult<Subscribed> {
        let identity = self.require_identity()?;
        let node = self.node.clone();
        {
            let st = self.state();
            if st.subs.contains_key(channel) {
                return Err(ErrorCode::AlreadySubscribed.into());
            }
            let max_channels = node.config.limits.max_channels_per_connection;
            if max_channels > 0 && st.subs.len() >= max_channels {
                return Err(ErrorCode::LimitExceeded.into());
            }
            let mut pending = self.pending();
            let pending = pending.get_or_insert_with(Box::default);
            if pending.contains_key(channel) {
                return Err(ErrorCode::AlreadySubscribed.into());
            }
            pending.insert(channel.clone(), (Vec::new(), delivery.clone()));
            self.pending_count.fetch_add(1, Ordering::AcqRel);
        }
        // From here on, failure must undo the pending mark and the hub entry.
        let activation = Activation {
            session: self.clone(),
            channels: vec![(channel.clone(), u64::MAX)],
        };
        let info = ClientInfo {
            user: grant
                .as_ref()
                .and_then(|g| g.user.clone())
                .unwrap_or_else(|| identity.user.clone()),
            client: self.id.clone(),
            conn_info: identity.info.clone(),
            chan_info: grant.as_ref().and_then(|g| g.info.clone()),
        };
        let listening = if watching {
            node.watch_channel(channel, self).await
        } else {
            node.subscribe_session(channel, self, delivery.clone())
                .await
        };
        if let Err(e) = listening {
            drop(activation);
            return Err(e.into());
        }
        let prepared = self
            .prepare_subscription(channel, &ns, &info, since, !watching, delivery.as_deref())
            .await;
        let (mut result, offset, from_inbox) = match prepared {
            Ok(r) => r,
            Err(e) => {
                if watching {
                    node.unwatch_channel(channel, self).await;
                } else {
                    node.unsubscribe_session(channel, self).await;
                }
                drop(activation);
                return Err(e);
            }
        };
        let token = grant.as_ref().and_then(|g| g.token.clone());
        let expires_at = grant.and_then(|g| g.expires_at);
        // The client schedules its sub_refresh from these.
        (result.expires, result.ttl) = ttl_of(expires_at);
        self.state().subs.insert(
            channel.clone(),
            Sub {
                publish_rate: (ns.publish_rate > 0)
                    .then(|| Box::new(TokenBucket::new(ns.publish_rate, ns.publish_rate))),
                ns,
                info,
                extra: (expires_at.is_some() || token.is_some()).then(|| {
                    Box::new(SubExtra {
                        expires_at,
                        _proxy_checks: None,
                        token,
                    })
                }),
                watching,
            },
        );
        if expires_at.is_some() {
            self.deadlines_moved();
        }
        let mut activation = activation;
        activation.channels[0].1 = offset;
        node.metrics.subscriptions.inc();
        Ok(Subscribed {
            result,
            from_inbox,
            activation,
        })
    }

    /// Reads what the reply needs from the stream (a recovery from the client's
    /// position, or in an inbox namespace from the user's delivered position) and
    /// joins. Returns the reply, the offset it covers, and whether it came from the
    /// inbox.
    async fn prepare_subscription(
        &self,
        channel: &Arc<str>,
        ns: &NamespaceConfig,
        info: &ClientInfo,
        since: Option<StreamPosition>,
        join: bool,
        delivery: Option<&Delivery>,
    ) -> SessionResult<(SubscribeResult, u64, bool)> {
        let node = &self.node;
        let mut result = SubscribeResult::default();
        let mut offset = 0;
        let inbox = ns.inbox && !info.user.is_empty();
        let from_inbox = inbox && since.is_none();
        if let Some(opts) = node.history_options(ns) {
            let marks = if from_inbox {
                node.flush_inbox_of(&info.user, channel).await;
                node.inbox_marks(&info.user, channel).await?
            } else {
                None
            };
            let since = since.or_else(|| {
                marks.as_ref().map(|m| StreamPosition {
                    offset: m.delivered,
                    epoch: m.epoch.clone(),
                })
            });
            let query = HistoryQuery {
                since: since.clone(),
                limit: if since.is_some() || from_inbox {
                    None
                } else {
                    Some(0)
                },
                reverse: false,
                ensure: Some(opts),
            };
            let h = node.read_stream(channel, query).await?;
            offset = h.offset;
            result.recoverable = true;
            result.positioned = true;
            result.epoch = h.epoch.clone();
            result.offset = h.offset;
            // A user never seen in the channel missed all of it (from offset 0).
            let since = match since {
                None if from_inbox => Some(StreamPosition {
                    offset: 0,
                    epoch: h.epoch.clone(),
                }),
                since => since,
            };
            if let Some(since) = since {
                result.was_recovering = true;
                // A position in a stream that is gone (its epoch changed) can not tell
                // what was lost with it.
                result.recovered = recovered(&since, &h);
                result.publications = h.publications;
                // Recovered publications pass the same filter as live ones.
                if let Some(d) = delivery {
                    result.publications.retain(|p| d.admits_publication(p));
                }
                // A delta subscriber's chain runs from the recovered publications on
                // into the live ones, when they reach the stream's top.
                let top = result.publications.last().filter(|p| p.offset == h.offset);
                if let (Some(d), Some(last)) = (delivery.filter(|d| d.takes_deltas()), top) {
                    d.continue_after(last.offset);
                    node.continue_deltas(channel, last);
                }
            }
            if inbox {
                let top = StreamPosition {
                    offset: h.offset,
                    epoch: h.epoch,
                };
                self.track_inbox(channel, &info.user, &top.epoch);
                node.inbox_subscribed(&info.user, channel, ns, &top).await;
            }
        }
        if join {
            node.join(channel, ns, info).await?;
        }
        Ok((result, offset, from_inbox))
    }

    /// Unsubscribes on the client's request.
    ///
    /// # Errors
    /// None today; kept for symmetry with the protocol.
    pub async fn unsubscribe(&self, channel: &str) -> SessionResult<()> {
        self.require_identity()?;
        self.remove_subscription(channel).await;
        Ok(())
    }

    /// Unsubscribes on the server's initiative, pushing `unsubscribe` to the client.
    /// Returns whether the session was subscribed.
    pub async fn server_unsubscribe(&self, channel: &str) -> bool {
        self.unsubscribe_with(channel, Unsubscribe::SERVER).await
    }

    /// Unsubscribes, pushing `unsubscribe` with `why`'s code and reason to the client.
    /// Returns whether the session was subscribed.
    pub(super) async fn unsubscribe_with(&self, channel: &str, why: Unsubscribe) -> bool {
        let Some(channel) = self.remove_subscription(channel).await else {
            return false;
        };
        self.enqueue(Outgoing::Control(Box::new(Control::Unsubscribed {
            channel,
            code: why.code,
            reason: why.reason,
        })));
        true
    }

    pub(super) async fn remove_subscription(&self, channel: &str) -> Option<Arc<str>> {
        let (channel, sub) = self.state().subs.remove_entry(channel)?;
        self.untrack_inbox(&channel);
        let node = &self.node;
        node.metrics.subscriptions.dec();
        if sub.watching {
            node.unwatch_channel(&channel, self).await;
        } else {
            node.unsubscribe_session(&channel, self).await;
            node.leave(&channel, &sub.ns, sub.info).await;
        }
        Some(channel)
    }

    /// The channels this session is subscribed to (a console's watches included).
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.state().subs.keys().cloned().collect()
    }

    /// Whether the session holds a subscription to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.state().subs.contains_key(channel)
    }

    /// This session's presence entries (channel and info), for the lease refresh.
    pub fn presence_entries(&self) -> Vec<(Arc<str>, ClientInfo)> {
        self.state()
            .subs
            .iter()
            .filter(|(_, sub)| sub.ns.presence && !sub.watching)
            .map(|(ch, sub)| (ch.clone(), sub.info.clone()))
            .collect()
    }

    /// Replaces a subscription token.
    ///
    /// # Errors
    /// Not subscribed, token expired, or an invalid token (permission denied).
    pub async fn sub_refresh(&self, channel: &str, token: &str) -> SessionResult<SubRefreshResult> {
        let identity = self.require_identity()?;
        self.subscribed_ns(channel)?;
        let grant = match self
            .node
            .verifier
            .verify_subscription(token, &identity.user, channel)
            .await
        {
            Ok(g) => g,
            Err(AuthError::Expired) => return Err(ErrorCode::TokenExpired.into()),
            Err(AuthError::Invalid(_)) => return Err(ErrorCode::PermissionDenied.into()),
        };
        self.check_revoked(&identity.user, Some(channel), grant.token.as_ref())
            .await?;
        if let Some(sub) = self.state().subs.get_mut(channel) {
            let extra = sub.extra_mut();
            extra.expires_at = grant.expires_at;
            extra.token = grant.token;
        }
        self.deadlines_moved();
        let (expires, ttl) = ttl_of(grant.expires_at);
        Ok(SubRefreshResult { expires, ttl })
    }
}

/// Whether `h` (read after `since`) holds every publication the client missed.
fn recovered(since: &StreamPosition, h: &HistoryResult) -> bool {
    if since.epoch != h.epoch {
        return false;
    }
    match h.publications.first() {
        Some(p) => p.offset == since.offset + 1,
        None => h.offset == since.offset,
    }
}
