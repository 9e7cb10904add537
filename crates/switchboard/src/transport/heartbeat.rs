//! The timers every transport runs per connection: the connect deadline, the server's
//! pings and the pong deadline, and token expiry (connection and subscriptions).

use std::time::Duration;

use switchboard_protocol::Disconnect;
use tokio::time::Instant;

use crate::auth::now_secs;
use crate::event::{Frame, Outgoing};
use crate::session::Session;

/// One connection's deadlines. The transport sleeps until [`Heartbeat::deadline`] and
/// then calls [`Heartbeat::fire`].
pub(crate) struct Heartbeat {
    connect_deadline: Instant,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    /// Makes the ping frame: a function, not the frame, so an idle connection's task
    /// keeps 8 bytes rather than 40 for a frame it sends every `ping_interval`.
    ping: fn() -> Frame,
    /// Whether the client answers pings (unidirectional clients can not).
    expects_pong: bool,
}

fn unix_to_instant(unix: u64) -> Instant {
    Instant::now() + Duration::from_secs(unix.saturating_sub(now_secs()))
}

impl Heartbeat {
    /// Timers of a new connection whose protocol pings with the frame `ping`.
    pub(crate) fn new(session: &Session, ping: fn() -> Frame) -> Self {
        Self {
            connect_deadline: Instant::now() + session.node().config.client.connect_timeout,
            next_ping: None,
            pong_deadline: None,
            ping,
            expects_pong: true,
        }
    }

    /// Timers of a unidirectional connection: it is pinged (so proxies keep it open and
    /// the client sees the stream alive) but can not answer.
    pub(crate) fn one_way(session: &Session, ping: fn() -> Frame) -> Self {
        Self {
            expects_pong: false,
            ..Self::new(session, ping)
        }
    }

    /// Starts pinging (once; later calls keep the schedule).
    pub(crate) fn start_pings(&mut self, session: &Session) {
        if self.next_ping.is_none() {
            self.next_ping = Some(Instant::now() + session.node().config.client.ping_interval);
        }
    }

    /// The client showed it is alive.
    pub(crate) fn pong(&mut self) {
        self.pong_deadline = None;
    }

    /// When [`Heartbeat::fire`] has something to do next.
    pub(crate) fn deadline(&self, session: &Session) -> Instant {
        let client = &session.node().config.client;
        let mut deadline = if session.is_connected() {
            Instant::now() + Duration::from_secs(86_400 * 365)
        } else {
            self.connect_deadline
        };
        for t in [self.next_ping, self.pong_deadline].into_iter().flatten() {
            deadline = deadline.min(t);
        }
        let expiry = [session.expires_at(), session.next_sub_expiry()];
        for exp in expiry.into_iter().flatten() {
            deadline = deadline.min(unix_to_instant(exp) + client.expired_close_delay);
        }
        deadline
    }

    /// Sends a due ping; returns the disconnect to apply when a deadline passed.
    pub(crate) fn fire(&mut self, session: &Session) -> Option<Disconnect> {
        let now = Instant::now();
        let client = &session.node().config.client;
        if !session.is_connected() && now >= self.connect_deadline {
            return Some(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Some(Disconnect::NO_PONG);
        }
        if self.next_ping.is_some_and(|p| now >= p) {
            // A ping interval is quiet enough to give buffers back (see `Outbox`).
            session.outbox().release_when_drained();
            session.enqueue(Outgoing::frame((self.ping)()));
            // The deadline runs from the first unanswered ping: a later ping must not
            // move it, or with `pong_timeout` above `ping_interval` it never arrives.
            if self.expects_pong && self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + client.pong_timeout);
            }
            self.next_ping = Some(now + client.ping_interval);
        }
        let unix = now_secs();
        let grace = client.expired_close_delay.as_secs();
        if session.expires_at().is_some_and(|e| e + grace <= unix) {
            return Some(Disconnect::EXPIRED);
        }
        if session.next_sub_expiry().is_some_and(|e| e + grace <= unix) {
            return Some(Disconnect::SUB_EXPIRED);
        }
        None
    }
}
