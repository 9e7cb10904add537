//! An endpoint's queue of encoded events: in this process with the memory engine, in a
//! Redis list with the Redis engine (so it outlives a node restart). Bounded either
//! way; whoever delivers peeks a batch and drops it only once the endpoint took it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::cluster::Cluster;
use super::WebhookError;

/// Where an endpoint's events wait.
pub(super) enum Queue {
    /// In this process.
    Memory {
        /// Short critical sections only.
        events: Mutex<VecDeque<String>>,
    },
    /// In Redis, shared by every node; one node at a time delivers (it holds `lock`).
    Redis {
        /// The list of events.
        list: String,
        /// Who delivers.
        lock: String,
    },
}

impl Queue {
    /// Appends an event unless `cap` are waiting; whether it did.
    pub(super) async fn push(
        &self,
        cluster: Option<&Cluster>,
        cap: usize,
        event: &str,
    ) -> Result<bool, WebhookError> {
        match (self, cluster) {
            (Self::Redis { list, .. }, Some(c)) => c.push(list, cap, event).await,
            (Self::Memory { events }, _) => {
                let mut events = events.lock().unwrap_or_else(|e| e.into_inner());
                if events.len() >= cap {
                    return Ok(false);
                }
                events.push_back(event.to_owned());
                Ok(true)
            }
            (Self::Redis { .. }, None) => Err(no_cluster()),
        }
    }

    /// Takes (or keeps) the right to deliver for `lease`: always with a memory queue.
    pub(super) async fn hold(
        &self,
        cluster: Option<&Cluster>,
        lease: Duration,
    ) -> Result<bool, WebhookError> {
        match (self, cluster) {
            (Self::Redis { lock, .. }, Some(c)) => c.hold(lock, lease).await,
            (Self::Memory { .. }, _) => Ok(true),
            (Self::Redis { .. }, None) => Err(no_cluster()),
        }
    }

    /// Gives up the right to deliver (shutdown), so another node takes over at once.
    pub(super) async fn release(&self, cluster: Option<&Cluster>) -> Result<(), WebhookError> {
        match (self, cluster) {
            (Self::Redis { lock, .. }, Some(c)) => c.release(lock).await,
            _ => Ok(()),
        }
    }

    /// The first `n` waiting events.
    pub(super) async fn peek(
        &self,
        cluster: Option<&Cluster>,
        n: usize,
    ) -> Result<Vec<String>, WebhookError> {
        match (self, cluster) {
            (Self::Redis { list, .. }, Some(c)) => c.peek(list, n).await,
            (Self::Memory { events }, _) => {
                let events = events.lock().unwrap_or_else(|e| e.into_inner());
                Ok(events.iter().take(n).cloned().collect())
            }
            (Self::Redis { .. }, None) => Err(no_cluster()),
        }
    }

    /// Drops the first `n` events (delivered or refused for good). False when another
    /// node took over delivery meanwhile: it sends them again.
    pub(super) async fn ack(
        &self,
        cluster: Option<&Cluster>,
        n: usize,
    ) -> Result<bool, WebhookError> {
        match (self, cluster) {
            (Self::Redis { list, lock }, Some(c)) => c.ack(list, lock, n).await,
            (Self::Memory { events }, _) => {
                let mut events = events.lock().unwrap_or_else(|e| e.into_inner());
                let n = n.min(events.len());
                events.drain(..n);
                Ok(true)
            }
            (Self::Redis { .. }, None) => Err(no_cluster()),
        }
    }
}

fn no_cluster() -> WebhookError {
    WebhookError::Redis("no Redis connection".into())
}
