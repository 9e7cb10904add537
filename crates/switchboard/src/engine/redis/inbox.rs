//! Inbox positions in Redis, shared by every node: a session on any node gets what
//! the user has not received, and a read on one node is the read everywhere.
//!
//! Under prefix `P`: `P:{u:<user>}:inbox`, a hash channel -> `<epoch> <delivered>
//! <read>`, kept `keep` after its last write; and, for `read_receipts` channels,
//! `P:{c}:r`, a hash user -> `<epoch> <read>` with the same lifetime. Each script names
//! one key (one hash tag, one Cluster slot); a read receipt is a second call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use switchboard_protocol::StreamPosition;

use super::{corrupt, millis, unavailable, RedisEngine};
use crate::engine::EngineError;
use crate::inbox::{InboxStore, Mark, Marks};

/// KEYS: the user's inbox hash. ARGV: channel, mark (`d`/`r`), epoch, offset, keep ms.
/// Moves the mark forward (another epoch starts over; read lifts delivered). Returns
/// `{epoch, delivered, read, changed}`.
const ADVANCE: &str = "local cur = redis.call('hget', KEYS[1], ARGV[1])
local epoch, d, r = '', 0, 0
if cur then
  local e, dd, rr = string.match(cur, '^(%S*) (%d+) (%d+)$')
  if e then epoch, d, r = e, tonumber(dd), tonumber(rr) end
end
local off = tonumber(ARGV[4])
local changed = 0
if epoch ~= ARGV[3] then
  epoch, d, r, changed = ARGV[3], 0, 0, 1
end
if ARGV[2] == 'r' then
  if off > r then r, changed = off, 1 end
  if r > d then d = r end
elseif off > d then
  d, changed = off, 1
end
local v = epoch .. ' ' .. string.format('%d', d) .. ' ' .. string.format('%d', r)
redis.call('hset', KEYS[1], ARGV[1], v)
redis.call('pexpire', KEYS[1], ARGV[5])
return {epoch, string.format('%d', d), string.format('%d', r), changed}";

/// KEYS: a channel's readers hash. ARGV: user, epoch, read offset, keep ms. Records the
/// user's read position unless it holds a later one of the same epoch.
const RECEIPT: &str = "local cur = redis.call('hget', KEYS[1], ARGV[1])
if cur then
  local e, rr = string.match(cur, '^(%S*) (%d+)$')
  if e == ARGV[2] and tonumber(rr) >= tonumber(ARGV[3]) then
    redis.call('pexpire', KEYS[1], ARGV[4])
    return 0
  end
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
redis.call('pexpire', KEYS[1], ARGV[4])
return 1";

/// Inbox positions kept in the Redis engine's Redis.
pub struct RedisInbox {
    engine: Arc<RedisEngine>,
    advance: Script,
    receipt: Script,
}

impl std::fmt::Debug for RedisInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInbox").finish_non_exhaustive()
    }
}

impl RedisInbox {
    pub(super) fn new(engine: Arc<RedisEngine>) -> Self {
        Self {
            engine,
            advance: Script::new(ADVANCE),
            receipt: Script::new(RECEIPT),
        }
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:inbox", self.engine.keys.prefix)
    }

    async fn hgetall(&self, key: String) -> Result<HashMap<String, String>, EngineError> {
        let mut conn = self.engine.conn.clone();
        let cmd = redis::cmd("HGETALL").arg(key).to_owned();
        match tokio::time::timeout(self.engine.timeout, cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(|e| unavailable(&e)),
            Err(_) => Err(EngineError::Unavailable("redis command timed out".into())),
        }
    }
}

/// Parses `<epoch> <delivered> <read>`.
fn parse_marks(v: &str) -> Result<Marks, EngineError> {
    let mut parts = v.split(' ');
    let (Some(epoch), Some(d), Some(r), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt("inbox record"));
    };
    Ok(Marks {
        epoch: epoch.to_owned(),
        delivered: d.parse().map_err(|_| corrupt("inbox record"))?,
        read: r.parse().map_err(|_| corrupt("inbox record"))?,
    })
}

#[async_trait]
impl InboxStore for RedisInbox {
    async fn marks(&self, user: &str, channel: &str) -> Result<Option<Marks>, EngineError> {
        let mut conn = self.engine.conn.clone();
        let cmd = redis::cmd("HGET")
            .arg(self.user_key(user))
            .arg(channel)
            .to_owned();
        let value: Option<String> =
            match tokio::time::timeout(self.engine.timeout, cmd.query_async(&mut conn)).await {
                Ok(r) => r.map_err(|e| unavailable(&e))?,
                Err(_) => return Err(EngineError::Unavailable("redis command timed out".into())),
            };
        value.as_deref().map(parse_marks).transpose()
    }

    async fn user_marks(&self, user: &str) -> Result<BTreeMap<String, Marks>, EngineError> {
        self.hgetall(self.user_key(user))
            .await?
            .into_iter()
            .map(|(channel, v)| Ok((channel, parse_marks(&v)?)))
            .collect()
    }

    async fn advance(
        &self,
        user: &str,
        channel: &str,
        mark: Mark,
        position: &StreamPosition,
        keep: Duration,
        receipts: bool,
    ) -> Result<(Marks, bool), EngineError> {
        let mut inv = self.advance.key(self.user_key(user));
        inv.arg(channel)
            .arg(if mark == Mark::Read { "r" } else { "d" })
            .arg(&position.epoch)
            .arg(position.offset)
            .arg(millis(keep));
        let (epoch, d, r, changed): (String, String, String, i64) = self.engine.run(&inv).await?;
        let marks = Marks {
            epoch,
            delivered: d.parse().map_err(|_| corrupt("inbox record"))?,
            read: r.parse().map_err(|_| corrupt("inbox record"))?,
        };
        if receipts && mark == Mark::Read {
            let mut inv = self.receipt.key(self.engine.keys.key(channel, 'r'));
            inv.arg(user)
                .arg(&marks.epoch)
                .arg(marks.read)
                .arg(millis(keep));
            self.engine.run::<i64>(&inv).await?;
        }
        Ok((marks, changed == 1))
    }

    async fn readers(&self, channel: &str) -> Result<BTreeMap<String, Marks>, EngineError> {
        self.hgetall(self.engine.keys.key(channel, 'r'))
            .await?
            .into_iter()
            .map(|(user, v)| {
                let (epoch, read) = v.split_once(' ').ok_or_else(|| corrupt("read receipt"))?;
                let read = read.parse().map_err(|_| corrupt("read receipt"))?;
                Ok((
                    user,
                    Marks {
                        epoch: epoch.to_owned(),
                        delivered: read,
                        read,
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let m = parse_marks("ab 7 3").unwrap();
        assert_eq!((m.epoch.as_str(), m.delivered, m.read), ("ab", 7, 3));
        assert!(parse_marks("ab 7").is_err());
        assert!(parse_marks("ab x 3").is_err());
    }
}
