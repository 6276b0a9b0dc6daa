-- Slides a session's idle expiry, if a touch is due by Redis's clock.
--
-- KEYS[1]  the session
-- ARGV[1]  the layer's idle timeout, ms
-- ARGV[2]  touch interval, ms: the expiry moves only when it would move
--          later by more than this
-- ARGV[3]  the session's own idle timeout as the caller read it: "" none,
--          ms, or "?" when the caller read only the header
-- ARGV[4]  the revision the caller read (not with "?")
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
-- whatever the size of the session, unless the caller may not know the
-- session's own idle timeout (rec.i): a save since its read (another
-- revision), or a header-only check of a session whose expiry was not set
-- with the layer's. Then the whole value is read for it.
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
local default = tonumber(ARGV[1])
-- The idle timeout the expiry was last set with: a save or touch sets
-- expires = min(seen + idle, deadline), so below the deadline it is
-- expires - seen. At the deadline nothing slides, whatever the timeout.
local capped = h.expires >= h.deadline
local implied = h.expires - h.seen
-- The session's own idle timeout, read from the whole value; nil if none.
local function own_idle()
  return tonumber(body(redis.call('GET', key)).i)
end
local own
if ARGV[3] == '?' then
  if not capped and implied ~= default then own = own_idle() end
elseif h.revision ~= tonumber(ARGV[4]) then
  own = own_idle()
else
  own = tonumber(ARGV[3])
end
local idle = own or default
local target = math.min(now + idle, h.deadline)
if target <= now then
  redis.call('DEL', key)
  return reply3(0, 0, now)
end
-- Due when it moves the expiry later by more than the interval, or when
-- the session has its own idle timeout and the expiry was set with another
-- (by an older version, which does not know it): then even earlier, so the
-- header says the session's timeout again. (Without its own, the plain
-- rule: instances with different layer settings sharing sessions must not
-- undo each other's touches.)
local stale = own ~= nil and not capped and implied ~= idle
if target - h.expires <= tonumber(ARGV[2]) and not stale then
  return reply3(1, h.expires, now)
end
redis.call('SETRANGE', key, 2, struct.pack('>dd', target, now))
redis.call('PEXPIREAT', key, target)
return reply3(2, target, now)
