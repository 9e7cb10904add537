//! The Lua scripts of the Redis engine: each one atomic, so concurrent nodes never see
//! a half-written stream or presence set. Times come from Redis (`TIME`), so nodes
//! with skewed clocks agree on leases and expiries.

use redis::Script;

/// Current Redis time in milliseconds, as a Lua prelude.
pub(super) const NOW: &str = "local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// The engine's scripts, hashed once.
pub(super) struct Scripts {
    /// KEYS: list, meta. ARGV: pub/sub channel, publication JSON, size, ttl ms, epoch
    /// if new, meta ttl ms, publish command (`spublish` on a cluster). Appends (bounded, with TTL), assigns the next offset and publishes
    /// `p <offset> <epoch> <json>`. Returns `{offset, epoch}`.
    pub(super) publish: Script,
    /// KEYS: list, meta. ARGV: ttl ms to create the stream with (0: do not create),
    /// epoch if new. Returns `{epoch, top, now, entries}`; each entry is
    /// `<offset> <expires ms> <json>`, oldest first.
    pub(super) history: Script,
    /// KEYS: presence hash, lease zset, user counts. ARGV: client, user, info JSON,
    /// lease ms. Returns 1 when it is the user's first client.
    pub(super) add_presence: Script,
    /// KEYS: as above. ARGV: client, user. Returns 1 when it was the user's last client.
    pub(super) remove_presence: Script,
    /// KEYS: as above. Removes entries past their lease; returns `{{info, last}, ...}`.
    pub(super) expire_presence: Script,
    /// KEYS: presence hash, lease zset. Returns the infos of entries within their lease.
    pub(super) presence: Script,
    /// KEYS: node status hash, lease zset. ARGV: uid, status JSON, lease ms. Records
    /// one node's status and drops those of nodes whose lease ran out.
    pub(super) heartbeat: Script,
    /// KEYS: node lease zset. Returns the uids of nodes within their lease.
    pub(super) live_nodes: Script,
    /// KEYS: a user's connection counts (`n:<node uid>` -> count, `t:<node uid>` ->
    /// when it last changed, ms). ARGV: node uid, limit, lease ms, then the uids of the
    /// live nodes. Counts one more connection unless the live nodes (and this one) hold
    /// `limit`; drops the counts of dead nodes. Returns 1 when counted.
    pub(super) count_connection: Script,
    /// KEYS: a user's connection counts. ARGV: node uid.
    pub(super) uncount_connection: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            publish: Script::new(&format!(
                "{NOW}
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local top = redis.call('hincrby', KEYS[2], 's', 1)
local ttl = tonumber(ARGV[4])
redis.call('rpush', KEYS[1], string.format('%d %d ', top, now + ttl) .. ARGV[2])
redis.call('ltrim', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('pexpire', KEYS[1], ttl)
redis.call('pexpire', KEYS[2], ARGV[6])
redis.call(ARGV[7], ARGV[1], string.format('p %d ', top) .. epoch .. ' ' .. ARGV[2])
return {{top, epoch}}"
            )),
            history: Script::new(&format!(
                "{NOW}
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  if ARGV[1] == '0' then
    return {{'', 0, now, {{}}}}
  end
  epoch = ARGV[2]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('pexpire', KEYS[2], ARGV[1])
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
return {{epoch, top, now, redis.call('lrange', KEYS[1], 0, -1)}}"
            )),
            add_presence: Script::new(&format!(
                "{NOW}
local lease = tonumber(ARGV[4])
local added = redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
redis.call('zadd', KEYS[2], string.format('%d', now + lease), ARGV[1])
local first = 0
if added == 1 and redis.call('hincrby', KEYS[3], ARGV[2], 1) == 1 then
  first = 1
end
for i = 1, 3 do
  redis.call('pexpire', KEYS[i], lease)
end
return first"
            )),
            remove_presence: Script::new(
                "if redis.call('hdel', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('zrem', KEYS[2], ARGV[1])
if redis.call('hincrby', KEYS[3], ARGV[2], -1) <= 0 then
  redis.call('hdel', KEYS[3], ARGV[2])
  return 1
end
return 0",
            ),
            expire_presence: Script::new(&format!(
                "{NOW}
local out = {{}}
for _, c in ipairs(redis.call('zrangebyscore', KEYS[2], '-inf', string.format('%d', now))) do
  redis.call('zrem', KEYS[2], c)
  local info = redis.call('hget', KEYS[1], c)
  if info then
    redis.call('hdel', KEYS[1], c)
    local user = cjson.decode(info).user
    local last = 0
    if redis.call('hincrby', KEYS[3], user, -1) <= 0 then
      redis.call('hdel', KEYS[3], user)
      last = 1
    end
    table.insert(out, {{info, last}})
  end
end
return out"
            )),
            presence: Script::new(&format!(
                "{NOW}
local all = redis.call('hgetall', KEYS[1])
local out = {{}}
for i = 1, #all, 2 do
  local exp = redis.call('zscore', KEYS[2], all[i])
  if exp and tonumber(exp) > now then
    table.insert(out, all[i + 1])
  end
end
return out"
            )),
            heartbeat: Script::new(&format!(
                "{NOW}
local lease = tonumber(ARGV[3])
for _, uid in ipairs(redis.call('zrangebyscore', KEYS[2], '-inf', string.format('%d', now))) do
  redis.call('zrem', KEYS[2], uid)
  redis.call('hdel', KEYS[1], uid)
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[2], string.format('%d', now + lease), ARGV[1])
redis.call('pexpire', KEYS[1], lease)
redis.call('pexpire', KEYS[2], lease)
return 1"
            )),
            live_nodes: Script::new(&format!(
                "{NOW}
return redis.call('zrangebyscore', KEYS[1], string.format('(%d', now), '+inf')"
            )),
            // The live nodes come as arguments, read just before from the node records:
            // a script touching both would span two slots of a cluster. A node missing
            // from that list may have started since: its count is dropped only once it
            // went unchanged for a whole lease.
            count_connection: Script::new(&format!(
                "{NOW}
local live = {{}}
for i = 4, #ARGV do
  live[ARGV[i]] = true
end
live[ARGV[1]] = true
local lease = tonumber(ARGV[3])
local total = 0
local f = redis.call('hgetall', KEYS[1])
for i = 1, #f, 2 do
  local uid = string.match(f[i], '^n:(.*)$')
  if uid then
    if live[uid] then
      total = total + math.max(0, tonumber(f[i + 1]))
    elseif tonumber(redis.call('hget', KEYS[1], 't:' .. uid) or '0') + lease < now then
      redis.call('hdel', KEYS[1], f[i], 't:' .. uid)
    end
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then
  return 0
end
redis.call('hincrby', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('hset', KEYS[1], 't:' .. ARGV[1], string.format('%d', now))
redis.call('pexpire', KEYS[1], 604800000)
return 1"
            )),
            uncount_connection: Script::new(&format!(
                "{NOW}
if redis.call('hincrby', KEYS[1], 'n:' .. ARGV[1], -1) <= 0 then
  redis.call('hdel', KEYS[1], 'n:' .. ARGV[1], 't:' .. ARGV[1])
else
  redis.call('hset', KEYS[1], 't:' .. ARGV[1], string.format('%d', now))
end
return 1"
            )),
        }
    }
}
