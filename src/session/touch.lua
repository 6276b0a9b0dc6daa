-- Slides a session's idle expiry, if a touch is due by Redis's clock.
--
-- KEYS[1]  the session
-- ARGV[1]  idle timeout, ms
-- ARGV[2]  touch interval, ms: the expiry moves only when it would move
--          later by more than this
-- ARGV[3]  "" when ARGV[1] is the session's idle timeout (the caller read
--          the session), "own" when it is the layer's and the session's
--          own (rec.i), if it has one, must be read here
--
-- Returns (as three doubles, see reply3) status, expires, now:
--   0, 0, now        no live session
--   1, expires, now  live, not touched
--   2, expires, now  touched (expires is the new expiry)
--   3, 0, now        just renewed (a marker)
-- now is Redis's time (ms), from which the caller learns its clock offset.
--
-- A read is a plain GET: the caller decides from the header (with its
-- estimate of Redis's time) whether a touch is due, and sends this script
-- only then. Only the header is read and rewritten (GETRANGE, SETRANGE),
-- whatever the size of the session, unless the session's own idle timeout
-- must be read (ARGV[3] "own": the whole value, once per touch).
local key = KEYS[1]
local now = now_ms()
local v = redis.call('GETRANGE', key, 0, HEADER - 1)
if v == '' then
  return reply3(0, 0, now)
end
if is_renewed(v) then
  return reply3(3, 0, now)
end
local h = header(v)
if not h then
  return not_a_session()
end
local idle = tonumber(ARGV[1])
if ARGV[3] == 'own' then
  local own = body(redis.call('GET', key)).i
  if own then idle = tonumber(own) end
end
local target = math.min(now + idle, h.deadline)
if target <= now then
  redis.call('DEL', key)
  return reply3(0, 0, now)
end
if target - h.expires <= tonumber(ARGV[2]) then
  return reply3(1, h.expires, now)
end
redis.call('SETRANGE', key, 2, struct.pack('>dd', target, now))
redis.call('PEXPIREAT', key, target)
return reply3(2, target, now)
