//! Typing signals: throttled per user and channel, and ended by the server.
//!
//! A client in a `typing` namespace publishes whatever it likes (`{"typing":true}`);
//! switchboard forwards at most one signal per `typing_interval` per user and channel,
//! never stores them, and publishes `{"typing":false}` itself once the user stops
//! signalling for `typing_timeout`, unsubscribes or disconnects. No client ever has to
//! clean up after another.
//!
//! The state sits behind [`TypingStore`], so that the nodes of a shared engine throttle
//! and end a user's typing together (a user typing on two devices connected to two
//! nodes); [`MemoryTyping`] keeps it in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use switchboard_protocol::{ClientInfo, SharedJson};
use tokio::time::Instant;

use crate::engine::EngineError;

/// What to do with a typing signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Forward it; schedule an expiry check at the given instant.
    Forward(Instant),
    /// An explicit stop: forward it, nothing to schedule.
    Stop,
    /// Too soon after the last forwarded one: drop it (the expiry is extended).
    Throttled,
}

/// What an expiry check found.
#[derive(Debug, Clone)]
pub enum Expiry {
    /// The user stopped signalling: publish the stop for them (this caller only).
    Ended(ClientInfo),
    /// Signals came meanwhile: check again at this instant.
    Later(Instant),
    /// Nothing to do: the typing was stopped already (or ended by another node).
    Gone,
}

/// Where typing state lives.
#[async_trait]
pub trait TypingStore: Send + Sync + 'static {
    /// Records a signal of `info.user` in `channel`: an explicit stop, or a signal
    /// forwarded at most once per `interval`, which ends `timeout` after the last one.
    ///
    /// # Errors
    /// The backing store failed.
    async fn signal(
        &self,
        channel: &Arc<str>,
        info: &ClientInfo,
        stop: bool,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Signal, EngineError>;

    /// Checks whether `user`'s typing in `channel` has ended; whoever finds it ended
    /// first publishes the stop.
    ///
    /// # Errors
    /// The backing store failed.
    async fn expire(&self, channel: &Arc<str>, user: &Arc<str>) -> Result<Expiry, EngineError>;

    /// Ends `user`'s typing in `channel` at once (unsubscribe, disconnect); returns
    /// their info if they were typing.
    ///
    /// # Errors
    /// The backing store failed.
    async fn stop(&self, channel: &str, user: &str) -> Result<Option<ClientInfo>, EngineError>;
}

/// Typing state keyed by (channel, user).
type Entries = HashMap<(Arc<str>, Arc<str>), Entry>;

struct Entry {
    last_forward: Instant,
    expires: Instant,
    info: ClientInfo,
}

/// Who is typing where, in this process.
#[derive(Default)]
pub struct MemoryTyping {
    /// Short critical sections only.
    entries: Mutex<Entries>,
}

#[derive(Deserialize)]
struct Probe {
    typing: Option<bool>,
}

/// Whether a payload says `"typing": false`.
pub fn is_stop(data: &SharedJson) -> bool {
    serde_json::from_str::<Probe>(data.get()).is_ok_and(|p| p.typing == Some(false))
}

/// The payload of the server's stop signal.
pub fn stop_payload() -> SharedJson {
    Arc::from(
        serde_json::value::RawValue::from_string("{\"typing\":false}".to_owned())
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
    )
}

#[async_trait]
impl TypingStore for MemoryTyping {
    async fn signal(
        &self,
        channel: &Arc<str>,
        info: &ClientInfo,
        stop: bool,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Signal, EngineError> {
        Ok(MemoryTyping::signal(
            self, channel, info, stop, interval, timeout,
        ))
    }

    async fn expire(&self, channel: &Arc<str>, user: &Arc<str>) -> Result<Expiry, EngineError> {
        Ok(match MemoryTyping::expire(self, channel, user) {
            Ok(Some(info)) => Expiry::Ended(info),
            Ok(None) => Expiry::Gone,
            Err(later) => Expiry::Later(later),
        })
    }

    async fn stop(&self, channel: &str, user: &str) -> Result<Option<ClientInfo>, EngineError> {
        Ok(MemoryTyping::stop(self, channel, user))
    }
}

impl MemoryTyping {
    /// Records a signal of `info.user` in `channel`.
    pub fn signal(
        &self,
        channel: &Arc<str>,
        info: &ClientInfo,
        stop: bool,
        interval: Duration,
        timeout: Duration,
    ) -> Signal {
        let now = Instant::now();
        let key = (channel.clone(), info.user.clone());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if stop {
            entries.remove(&key);
            return Signal::Stop;
        }
        match entries.get_mut(&key) {
            Some(e) if now.duration_since(e.last_forward) < interval => {
                e.expires = now + timeout;
                Signal::Throttled
            }
            Some(e) => {
                e.last_forward = now;
                e.expires = now + timeout;
                Signal::Forward(e.expires)
            }
            None => {
                let expires = now + timeout;
                entries.insert(
                    key,
                    Entry {
                        last_forward: now,
                        expires,
                        info: info.clone(),
                    },
                );
                Signal::Forward(expires)
            }
        }
    }

    /// If the user's typing in `channel` has expired, forgets it and returns their info
    /// (the caller publishes the stop). Returns the new deadline if it was extended.
    pub fn expire(
        &self,
        channel: &Arc<str>,
        user: &Arc<str>,
    ) -> Result<Option<ClientInfo>, Instant> {
        let now = Instant::now();
        let key = (channel.clone(), user.clone());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&key) {
            Some(e) if e.expires > now => Err(e.expires),
            Some(_) => Ok(entries.remove(&key).map(|e| e.info)),
            None => Ok(None),
        }
    }

    /// Forgets a user's typing in `channel` at once (unsubscribe, disconnect); returns
    /// their info if they were typing.
    pub fn stop(&self, channel: &str, user: &str) -> Option<ClientInfo> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = entries
            .keys()
            .find(|(c, u)| &**c == channel && &**u == user)
            .cloned()?;
        entries.remove(&key).map(|e| e.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        }
    }

    const I: Duration = Duration::from_secs(1);
    const T: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn throttles_per_user_and_expires() {
        let t = MemoryTyping::default();
        let ch: Arc<str> = "typing:1".into();
        let ann = info("ann");
        assert!(matches!(
            t.signal(&ch, &ann, false, I, T),
            Signal::Forward(_)
        ));
        assert_eq!(t.signal(&ch, &ann, false, I, T), Signal::Throttled);
        // Another user is throttled separately.
        assert!(matches!(
            t.signal(&ch, &info("bob"), false, I, T),
            Signal::Forward(_)
        ));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(matches!(
            t.signal(&ch, &ann, false, I, T),
            Signal::Forward(_)
        ));
        // Not expired yet: the deadline is returned.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(t.expire(&ch, &ann.user).is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(t.expire(&ch, &ann.user).unwrap().unwrap().user, ann.user);
        assert!(t.expire(&ch, &ann.user).unwrap().is_none(), "expires once");
    }

    #[tokio::test(start_paused = true)]
    async fn explicit_stop_and_disconnect() {
        let t = MemoryTyping::default();
        let ch: Arc<str> = "typing:1".into();
        t.signal(&ch, &info("ann"), false, I, T);
        assert_eq!(t.signal(&ch, &info("ann"), true, I, T), Signal::Stop);
        assert!(t.stop("typing:1", "ann").is_none());
        t.signal(&ch, &info("ann"), false, I, T);
        assert!(t.stop("typing:1", "ann").is_some());
        assert!(is_stop(&stop_payload()));
    }
}
