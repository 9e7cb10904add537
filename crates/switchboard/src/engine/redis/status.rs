//! Users' last-seen times in Redis, so `user_status` on any node reports when a user
//! was last seen on any node, and the time outlives the node that saw it.
//!
//! Under prefix `P`: `P:{u:<user>}:seen`, the latest connect or disconnect of the user
//! (Unix ms), renewed while connected, kept `user_status.last_seen_ttl`. One key per
//! command.

use std::time::Duration;

use std::sync::Arc;

use redis::{Script, ScriptInvocation};

use super::{millis, unavailable, RedisEngine};
use crate::engine::EngineError;

/// KEYS: the user's record. ARGV: time (ms), keep (ms). Keeps the later time.
const RECORD: &str = "local at = tonumber(ARGV[1])
if at > tonumber(redis.call('get', KEYS[1]) or '0') then
  redis.call('set', KEYS[1], ARGV[1])
end
redis.call('pexpire', KEYS[1], ARGV[2])
return 1";

impl RedisEngine {
    fn seen_key(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:seen", self.keys.prefix)
    }

    pub(super) async fn record_seen_at(
        &self,
        user: &str,
        at_ms: u64,
        keep: Duration,
    ) -> Result<(), EngineError> {
        self.run::<i64>(&self.seen_invocation(user, at_ms, keep))
            .await
            .map(drop)
    }

    pub(super) async fn refresh_seen_at(
        &self,
        users: &[Arc<str>],
        at_ms: u64,
        keep: Duration,
    ) -> Result<(), EngineError> {
        let invocations: Vec<_> = users
            .iter()
            .map(|u| self.seen_invocation(u, at_ms, keep))
            .collect();
        self.run_bulk(&invocations).await
    }

    fn seen_invocation(&self, user: &str, at_ms: u64, keep: Duration) -> ScriptInvocation<'static> {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::new(RECORD));
        let mut inv = script.key(self.seen_key(user));
        inv.arg(at_ms).arg(millis(keep));
        inv
    }

    pub(super) async fn last_seen_of(&self, users: &[String]) -> Result<Vec<u64>, EngineError> {
        // One GET per user (their keys live on different slots of a cluster); the
        // connection pipelines them.
        let reads = users.iter().map(|u| {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("GET").arg(self.seen_key(u)).to_owned();
            async move {
                match tokio::time::timeout(self.timeout, cmd.query_async::<Option<u64>>(&mut conn))
                    .await
                {
                    Ok(r) => r
                        .map(Option::unwrap_or_default)
                        .map_err(|e| unavailable(&e)),
                    Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
                }
            }
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect()
    }
}
