//! Re-joining after a reconnect: the channels a connection joined through event routes
//! are kept for `socketio.rejoin_window` after it closes, under the private id (`pid`)
//! its `CONNECT` answer carried; `socket.io-client` (≥ 4.6) sends that id back when it
//! reconnects, and the new connection is subscribed to them again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Channels of closed connections, by their private id.
#[derive(Default)]
pub(super) struct Rejoin {
    /// Short sections only: insert, sweep, remove.
    saved: Mutex<HashMap<Box<str>, Saved>>,
}

struct Saved {
    user: Arc<str>,
    channels: Vec<Arc<str>>,
    until: Instant,
}

impl Rejoin {
    /// Keeps `channels` of `user`'s closed connection `pid` for `window`.
    pub(super) fn save(
        &self,
        pid: &str,
        user: Arc<str>,
        channels: Vec<Arc<str>>,
        window: Duration,
    ) {
        let now = Instant::now();
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        // Sweeping here bounds the map by the connections closed within one window.
        saved.retain(|_, s| s.until > now);
        saved.insert(
            pid.into(),
            Saved {
                user,
                channels,
                until: now + window,
            },
        );
    }

    /// The channels saved under `pid` for `user`, once: a `pid` of another user, or
    /// one past its window, gives nothing.
    pub(super) fn take(&self, pid: &str, user: &str) -> Vec<Arc<str>> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if saved.get(pid).is_none_or(|s| &*s.user != user) {
            // Another user's attempt leaves the entry to its owner.
            return Vec::new();
        }
        match saved.remove(pid) {
            Some(s) if s.until > Instant::now() => s.channels,
            _ => Vec::new(),
        }
    }
}
