//! The `[persistence]` section: whether the memory engine keeps its state (histories,
//! last-seen times) in a data directory, and when a publication counts as written.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Persistence of the memory engine (see docs/persistence.md). Off while `dir` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceConfig {
    /// Data directory; created if missing. Empty: everything stays in memory and a
    /// restart starts every stream in a new epoch.
    pub dir: PathBuf,
    /// When a publication into a channel with history counts as written.
    pub durability: Durability,
    /// With `durability = "flush"`: the longest a change waits in memory before it is
    /// written and synced to disk (what a crash may lose).
    #[serde(with = "super::duration")]
    pub flush_interval: Duration,
    /// Publications accepted but not yet on disk, at most; past it publishers wait for
    /// the disk (backpressure instead of unbounded memory).
    pub max_pending: usize,
}

/// When a publication counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answered and delivered at once; written and synced within `flush_interval`. A
    /// crash (`kill -9`, power loss) loses what was accepted in the last interval.
    #[default]
    Flush,
    /// Answered and delivered only once on disk (fsync); concurrent publishes share
    /// one sync (group commit). A crash loses nothing that was answered.
    Sync,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            durability: Durability::Flush,
            flush_interval: Duration::from_secs(1),
            max_pending: 65_536,
        }
    }
}

impl PersistenceConfig {
    /// Whether persistence is on.
    pub fn enabled(&self) -> bool {
        !self.dir.as_os_str().is_empty()
    }

    pub(super) fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.enabled() {
            return out;
        }
        if self.flush_interval.is_zero() {
            out.push("persistence.flush_interval must be positive".to_owned());
        }
        if self.max_pending == 0 {
            out.push("persistence.max_pending must be at least 1".to_owned());
        }
        out
    }
}
