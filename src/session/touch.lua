-- Checks that a session is live and slides its idle expiry when a touch is due.
--
-- KEYS[1]  the session hash
-- ARGV[1]  idle timeout, ms
-- ARGV[2]  touch interval, ms: the expiry moves only when it would move
--          later by more than this, so most calls write nothing
--
-- Returns nil when there is no live session, else { ttl_ms, touched (0|1) }.
--
-- A load sends this script and a plain HGETALL of the same key in one
-- pipeline (one round trip): returning the hash through Lua costs Redis
-- about twice as much as HGETALL itself.
--
-- The common path is one read (PTTL). Every expiry this crate sets is
-- min(now + idle, absolute deadline), so a key that still exists is within
-- its deadline, and a touch can only be due when idle - ttl exceeds the
-- interval; only then are TIME and the deadline read.
local key = KEYS[1]
local ttl = redis.call('PTTL', key)
if ttl < 0 then
  -- -2: no such key; -1: a key without expiry, which this crate never writes.
  return nil
end

local idle = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
if idle - ttl <= interval then
  return { ttl, 0 }
end

local now = now_ms()
local deadline = tonumber(redis.call('HGET', key, 'm:deadline'))
if not deadline then
  return { ttl, 0 }
end
local target = math.min(now + idle, deadline)
if target - (now + ttl) <= interval then
  return { ttl, 0 }
end
redis.call('PEXPIREAT', key, target)
redis.call('HSET', key, 'm:seen', now)
return { target - now, 1 }
