//! Revocation records in Redis, shared by every node on the engine's Redis and prefix:
//! a node started after a revocation refuses the token too.
//!
//! Under prefix `P`: `P:revoked:<jti>` (a revoked token, until the record's expiry) and
//! `P:{u:<user>}:inv` / `P:{u:<user>}:inv:<channel>` (the user's cut-off time in Unix
//! seconds, for all tokens or one channel's subscription tokens, until the record's
//! expiry). Every command names one key, or the keys of one user (one hash tag), so
//! they work on a Redis Cluster.

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;

use super::{corrupt, unavailable, RedisEngine};
use crate::auth::TokenStamp;
use crate::engine::EngineError;
use crate::revocation::RevocationStore;

/// Revocation records kept in the Redis engine's Redis.
pub struct RedisRevocations {
    engine: Arc<RedisEngine>,
    /// KEYS: record. ARGV: value, expiry (Unix seconds). Keeps the larger value and
    /// the later expiry of the old and new records; an expired record is not written.
    record: Script,
}

impl std::fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRevocations").finish_non_exhaustive()
    }
}

impl RedisRevocations {
    pub(super) fn new(engine: Arc<RedisEngine>) -> Self {
        Self {
            engine,
            record: Script::new(
                "local now = tonumber(redis.call('time')[1])
local value = tonumber(ARGV[1])
local expire = tonumber(ARGV[2])
local left = redis.call('ttl', KEYS[1])
if left > 0 then
  value = math.max(value, tonumber(redis.call('get', KEYS[1]) or '0'))
  expire = math.max(expire, now + left)
end
if expire <= now then
  return 0
end
redis.call('set', KEYS[1], string.format('%d', value))
redis.call('expireat', KEYS[1], expire)
return 1",
            ),
        }
    }

    fn prefix(&self) -> &str {
        &self.engine.keys.prefix
    }

    fn token_key(&self, id: &str) -> String {
        format!("{}:revoked:{id}", self.prefix())
    }

    fn user_key(&self, user: &str, channel: Option<&str>) -> String {
        match channel {
            None => format!("{}:{{u:{user}}}:inv", self.prefix()),
            Some(c) => format!("{}:{{u:{user}}}:inv:{c}", self.prefix()),
        }
    }

    async fn write(&self, key: String, value: u64, expire_at: u64) -> Result<(), EngineError> {
        let mut inv = self.record.key(key);
        inv.arg(value).arg(expire_at);
        self.engine.run::<i64>(&inv).await.map(drop)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, EngineError> {
        let mut conn = self.engine.conn.clone();
        match tokio::time::timeout(self.engine.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(&e)),
            Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
        }
    }
}

#[async_trait]
impl RevocationStore for RedisRevocations {
    async fn revoke_token(&self, id: &str, expire_at: u64) -> Result<(), EngineError> {
        self.write(self.token_key(id), 1, expire_at).await
    }

    async fn invalidate_user_tokens(
        &self,
        user: &str,
        channel: Option<&str>,
        issued_before: u64,
        expire_at: u64,
    ) -> Result<(), EngineError> {
        self.write(self.user_key(user, channel), issued_before, expire_at)
            .await
    }

    async fn is_revoked(
        &self,
        user: &str,
        channel: Option<&str>,
        token: &TokenStamp,
    ) -> Result<bool, EngineError> {
        // Both lookups go out at once: the connection pipelines them.
        let by_id = async {
            match &token.id {
                Some(id) => {
                    self.query::<bool>(redis::cmd("EXISTS").arg(self.token_key(id)).to_owned())
                        .await
                }
                None => Ok(false),
            }
        };
        let mut keys = vec![self.user_key(user, None)];
        keys.extend(channel.map(|c| self.user_key(user, Some(c))));
        let cutoffs = self.query::<Vec<Option<String>>>(redis::cmd("MGET").arg(keys).to_owned());
        let (by_id, cutoffs) = tokio::join!(by_id, cutoffs);
        if by_id? {
            return Ok(true);
        }
        let mut cutoff = 0u64;
        for c in cutoffs?.into_iter().flatten() {
            cutoff = cutoff.max(c.parse().map_err(|_| corrupt("revocation record"))?);
        }
        // A token without `iat` can not show it was issued after the cut-off.
        Ok(cutoff > 0 && token.issued_at.unwrap_or(0) < cutoff)
    }
}
