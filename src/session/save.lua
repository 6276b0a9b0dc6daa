-- Merges the changes of one request into a session, or creates one, in one
-- step: concurrent saves of different keys all persist, and an update never
-- recreates a session that expired, was destroyed or was revoked.
--
-- KEYS[1]  the session
-- ARGV[1]  "update" (the session must exist) or "create" (it must not)
-- ARGV[2]  idle timeout, ms, for a session without its own (rec.i)
-- ARGV[3]  absolute timeout, ms (create)
-- ARGV[4]  creation time to keep, ms, or "" for now (create; a renewal
--          keeps the original creation time and deadline)
-- ARGV[5]  absolute deadline to keep, ms, or "" for now + ARGV[3] (create)
-- ARGV[6]  "1" to remove every data key before the changes
-- ARGV[7]  the user: "" unchanged, "-" unbind, "=" .. id to bind
-- ARGV[8]  the user agent (create), or ""
-- ARGV[9]  the session's own idle timeout: "" unchanged, "-" none, or ms
-- ARGV[10] its own cookie persistence: "" unchanged, "-" none, "0" or "1"
-- ARGV[11..] data key, JSON pairs; an empty JSON removes the key
--
-- Returns (as four doubles, see reply4) 1, expires, deadline, now when
-- saved; 0, 0, 0, now when the session is gone (update) or the kept
-- deadline has passed (create); 2, 0, 0, now when it was just renewed
-- (update); -1, 0, 0, now when the key exists (create).
local key = KEYS[1]
local now = now_ms()
local v = redis.call('GET', key)
local h, rec
if ARGV[1] == 'create' then
  if v then
    return reply4(-1, 0, 0, now)
  end
  local deadline = now + tonumber(ARGV[3])
  if ARGV[5] ~= '' then deadline = tonumber(ARGV[5]) end
  if deadline <= now then
    return reply4(0, 0, 0, now)
  end
  local created = now
  if ARGV[4] ~= '' then created = tonumber(ARGV[4]) end
  h = { created = created, deadline = deadline, revision = 0 }
  rec = {}
  if ARGV[8] ~= '' then rec.a = ARGV[8] end
else
  if not v then
    return reply4(0, 0, 0, now)
  end
  if is_renewed(v) then
    return reply4(2, 0, 0, now)
  end
  h = header(v)
  if not h then
    return not_a_session()
  end
  if h.deadline <= now then
    redis.call('DEL', key)
    return reply4(0, 0, 0, now)
  end
  rec = body(v)
end

local data = rec.d or {}
if ARGV[6] == '1' then data = {} end
for i = 11, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    data[ARGV[i]] = nil
  else
    data[ARGV[i]] = ARGV[i + 1]
  end
end
-- An empty table would be packed as an array: leave it out instead.
if next(data) == nil then rec.d = nil else rec.d = data end
if ARGV[7] == '-' then
  rec.u = nil
elseif string.sub(ARGV[7], 1, 1) == '=' then
  rec.u = string.sub(ARGV[7], 2)
end
-- Kept as text: cmsgpack would pack a whole number as an integer of the
-- smallest size, text reads back the same everywhere.
if ARGV[9] == '-' then rec.i = nil elseif ARGV[9] ~= '' then rec.i = ARGV[9] end
if ARGV[10] == '-' then rec.p = nil elseif ARGV[10] ~= '' then rec.p = ARGV[10] end

-- A write is activity: it refreshes last-seen and slides the idle expiry.
h.seen = now
h.expires = math.min(now + tonumber(rec.i or ARGV[2]), h.deadline)
h.revision = h.revision + 1
redis.call('SET', key, pack_header(h) .. cmsgpack.pack(rec), 'PXAT', h.expires)
return reply4(1, h.expires, h.deadline, now)
