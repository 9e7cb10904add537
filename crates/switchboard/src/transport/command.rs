//! Runs a decoded client request against its session, whatever the wire protocol:
//! rate limits and command metrics in one place, replies as protocol-neutral
//! [`ReplyBody`] values that each transport encodes its own way.

use std::sync::Arc;

use switchboard_protocol::command::{ConnectRequest, Request};
use switchboard_protocol::reply::{Empty, ReplyBody, RpcResult};
use switchboard_protocol::SharedJson;

use crate::session::{Connected, Session, SessionError, Subscribed};

/// What a request produced.
pub(crate) enum Executed {
    /// A reply to send.
    Reply(ReplyBody),
    /// A subscribe reply: queue it through [`Subscribed::activation`], so it precedes
    /// the channel's events.
    Subscribed(Subscribed),
    /// Nothing to send (`send`, the pong).
    Nothing,
}

/// Runs `request` (anything but `connect`) for a connected session.
///
/// # Errors
/// What the session refused, or a disconnect for a session that is not connected.
pub(crate) async fn execute(
    session: &Arc<Session>,
    request: Request,
) -> Result<Executed, SessionError> {
    if matches!(request, Request::Pong) {
        // Metered like any command: a client spamming `{}` is flooding, and is closed
        // with 3013 like one.
        session.admit_command()?;
        return Ok(Executed::Nothing);
    }
    let metrics = &session.node().metrics;
    metrics.commands.inc();
    let kind = command_kind(&request);
    let result = run(session, request).await;
    metrics.command_kinds.record(kind, result.is_ok());
    if matches!(result, Err(SessionError::Reply(_))) {
        metrics.command_errors.inc();
    }
    result
}

/// Runs `connect`, with its rate limit and command metrics. `req` is the decoded request,
/// or why the transport could not decode it (counted as a failed connect all the same).
///
/// # Errors
/// What the session refused: an error reply, or a disconnect.
pub(crate) async fn connect(
    session: &Arc<Session>,
    req: Result<ConnectRequest, SessionError>,
) -> Result<Connected, SessionError> {
    let metrics = &session.node().metrics;
    metrics.commands.inc();
    let result = async {
        let req = req?;
        session.admit_command()?;
        session.connect(req).await
    }
    .await;
    metrics.command_kinds.record("connect", result.is_ok());
    if let Ok(c) = &result {
        tracing::debug!(user = %session.user(), subs = c.result.subs.len(), "connected");
    }
    result
}

async fn run(session: &Arc<Session>, request: Request) -> Result<Executed, SessionError> {
    use switchboard_protocol::Disconnect;
    if !session.is_connected() || matches!(request, Request::Connect(_)) {
        return Err(SessionError::Disconnect(Disconnect::BAD_REQUEST));
    }
    session.admit_command()?;
    // Each command's future is boxed on its own: unboxed, every command's state would
    // take the room of the largest (a proxied subscribe, an RPC), and a burst of
    // subscribes would hold that much per connection at once.
    let reply = match request {
        Request::Pong | Request::Send(_) => return Ok(Executed::Nothing),
        Request::Connect(_) => return Err(SessionError::Disconnect(Disconnect::BAD_REQUEST)),
        Request::Subscribe(req) => {
            return Ok(Executed::Subscribed(
                Box::pin(session.subscribe(req)).await?,
            ))
        }
        Request::Unsubscribe(req) => {
            Box::pin(session.unsubscribe(&req.channel)).await?;
            ReplyBody::Unsubscribe(Empty {})
        }
        Request::Publish(req) => {
            Box::pin(session.publish(&req.channel, req.data.map(SharedJson::from))).await?;
            ReplyBody::Publish(Empty {})
        }
        Request::Presence(req) => {
            ReplyBody::Presence(Box::pin(session.presence(&req.channel)).await?)
        }
        Request::PresenceStats(req) => {
            ReplyBody::PresenceStats(Box::pin(session.presence_stats(&req.channel)).await?)
        }
        Request::History(req) => ReplyBody::History(Box::pin(session.history(req)).await?),
        Request::Ping => ReplyBody::Ping(Empty {}),
        Request::Rpc(req) => {
            let call = session.rpc(&req.method, req.data.map(SharedJson::from));
            ReplyBody::Rpc(RpcResult {
                data: Box::pin(call).await?,
            })
        }
        Request::Refresh(req) => ReplyBody::Refresh(Box::pin(session.refresh(&req.token)).await?),
        Request::SubRefresh(req) => {
            let refresh = session.sub_refresh(&req.channel, &req.token);
            ReplyBody::SubRefresh(Box::pin(refresh).await?)
        }
    };
    Ok(Executed::Reply(reply))
}

/// Counts a frame that carries no command (a WebSocket ping or pong, an Engine.IO
/// pong) against the command rate. Returns the disconnect for a client that persists.
pub(crate) fn meter_control(session: &Session) -> Option<switchboard_protocol::Disconnect> {
    match session.admit_command() {
        Err(SessionError::Disconnect(d)) => Some(d),
        _ => None,
    }
}

/// The command's name in metrics (see [`crate::metrics::COMMAND_KINDS`]).
pub(crate) fn command_kind(request: &Request) -> &'static str {
    match request {
        Request::Connect(_) => "connect",
        Request::Subscribe(_) => "subscribe",
        Request::Unsubscribe(_) => "unsubscribe",
        Request::Publish(_) => "publish",
        Request::Presence(_) => "presence",
        Request::PresenceStats(_) => "presence_stats",
        Request::History(_) => "history",
        Request::Ping | Request::Pong => "ping",
        Request::Send(_) => "send",
        Request::Rpc(_) => "rpc",
        Request::Refresh(_) => "refresh",
        Request::SubRefresh(_) => "sub_refresh",
    }
}
