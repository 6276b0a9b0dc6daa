-- Loads a session and slides its idle expiry when a touch is due.
--
-- KEYS[1]  the session hash
-- ARGV[1]  idle timeout, ms
-- ARGV[2]  touch interval, ms: the expiry moves only when it would move
--          later by more than this, so most loads write nothing
-- ARGV[3]  "1" to return the hash's fields, "0" to only touch
--
-- Returns nil when there is no live session, else
--   { expires_at_ms, touched (0|1) }                 when ARGV[3] == "0"
--   { expires_at_ms, touched (0|1), {field, value, ...} }  when ARGV[3] == "1"
-- Time comes from Redis TIME, never from the caller.
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local deadline = tonumber(redis.call('HGET', key, 'm:deadline'))
if not deadline then
  return nil
end
if deadline <= now then
  -- Past the absolute timeout: gone, however active.
  redis.call('DEL', key)
  return nil
end

local expires = now + redis.call('PTTL', key)
local target = math.min(now + tonumber(ARGV[1]), deadline)
local touched = 0
if target - expires > tonumber(ARGV[2]) then
  redis.call('PEXPIREAT', key, target)
  redis.call('HSET', key, 'm:seen', now)
  expires = target
  touched = 1
end

if ARGV[3] == '1' then
  return { expires, touched, redis.call('HGETALL', key) }
end
return { expires, touched }
