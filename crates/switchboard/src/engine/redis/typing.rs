//! Typing state in Redis, shared by every node: one user typing through two nodes is
//! forwarded at most once per `typing_interval`, and whichever node finds the typing
//! ended first publishes the one stop.
//!
//! Under prefix `P`, user `u` typing in channel `c` is the hash `P:{c}:typing:<u>`:
//! `f` (last forwarded, Redis ms), `e` (end, Redis ms), `i` (the typist's info). Each
//! script names that one key. The key outlives `e` by `typing_timeout` plus a minute, so
//! a node whose expiry check runs late still finds it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use switchboard_protocol::ClientInfo;
use tokio::time::Instant;

use super::scripts::NOW;
use super::{corrupt, millis, to_json, RedisEngine};
use crate::engine::EngineError;
use crate::typing::{Expiry, Signal, TypingStore};

/// Typing state kept in the Redis engine's Redis.
pub struct RedisTyping {
    engine: Arc<RedisEngine>,
    /// KEYS: state. ARGV: stop (`1`/`0`), interval ms, timeout ms, info JSON.
    /// Returns `{0, 0}` stop, `{1, 0}` throttled, `{2, ms until the end}` forward.
    signal: Script,
    /// KEYS: state. Returns `{0, ''}` gone, `{1, ms until the end}`, or `{2, info}`
    /// ended (and deleted).
    expire: Script,
    /// KEYS: state. Deletes it; returns the info, if any.
    stop: Script,
}

impl std::fmt::Debug for RedisTyping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTyping").finish_non_exhaustive()
    }
}

impl RedisTyping {
    pub(super) fn new(engine: Arc<RedisEngine>) -> Self {
        Self {
            engine,
            signal: Script::new(&format!(
                "{NOW}
if ARGV[1] == '1' then
  redis.call('del', KEYS[1])
  return {{0, 0}}
end
local timeout = tonumber(ARGV[3])
local keep = 2 * timeout + 60000
local last = redis.call('hget', KEYS[1], 'f')
if last and now - tonumber(last) < tonumber(ARGV[2]) then
  redis.call('hset', KEYS[1], 'e', string.format('%d', now + timeout))
  redis.call('pexpire', KEYS[1], keep)
  return {{1, 0}}
end
redis.call('hset', KEYS[1], 'f', string.format('%d', now), 'e', string.format('%d', now + timeout), 'i', ARGV[4])
redis.call('pexpire', KEYS[1], keep)
return {{2, timeout}}"
            )),
            expire: Script::new(&format!(
                "{NOW}
local e = redis.call('hget', KEYS[1], 'e')
if not e then
  return {{0, ''}}
end
if tonumber(e) > now then
  return {{1, tostring(tonumber(e) - now)}}
end
local info = redis.call('hget', KEYS[1], 'i')
redis.call('del', KEYS[1])
return {{2, info}}"
            )),
            stop: Script::new(
                "local info = redis.call('hget', KEYS[1], 'i')
redis.call('del', KEYS[1])
return info",
            ),
        }
    }

    fn key(&self, channel: &str, user: &str) -> String {
        format!("{}:{{{channel}}}:typing:{user}", self.engine.keys.prefix)
    }
}

fn info_of(json: &str) -> Result<ClientInfo, EngineError> {
    serde_json::from_str(json).map_err(|_| corrupt("typing state"))
}

#[async_trait]
impl TypingStore for RedisTyping {
    async fn signal(
        &self,
        channel: &Arc<str>,
        info: &ClientInfo,
        stop: bool,
        interval: Duration,
        timeout: Duration,
    ) -> Result<Signal, EngineError> {
        let mut inv = self.signal.key(self.key(channel, &info.user));
        inv.arg(if stop { "1" } else { "0" })
            .arg(millis(interval))
            .arg(millis(timeout))
            .arg(to_json(info)?);
        let (kind, ms): (i64, u64) = self.engine.run(&inv).await?;
        Ok(match kind {
            0 => Signal::Stop,
            1 => Signal::Throttled,
            _ => Signal::Forward(Instant::now() + Duration::from_millis(ms)),
        })
    }

    async fn expire(&self, channel: &Arc<str>, user: &Arc<str>) -> Result<Expiry, EngineError> {
        let inv = self.expire.key(self.key(channel, user));
        let (kind, value): (i64, String) = self.engine.run(&inv).await?;
        Ok(match kind {
            0 => Expiry::Gone,
            1 => {
                let ms = value.parse().map_err(|_| corrupt("typing state"))?;
                Expiry::Later(Instant::now() + Duration::from_millis(ms))
            }
            _ => Expiry::Ended(info_of(&value)?),
        })
    }

    async fn stop(&self, channel: &str, user: &str) -> Result<Option<ClientInfo>, EngineError> {
        let inv = self.stop.key(self.key(channel, user));
        let info: Option<String> = self.engine.run(&inv).await?;
        info.as_deref().map(info_of).transpose()
    }
}
