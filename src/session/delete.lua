-- Deletes a session if it meets the conditions.
--
-- KEYS[1]  the session
-- ARGV[1]  the user it must be bound to, or "" for any
-- ARGV[2]  the revision it must still have (no save since), or "" for any
-- ARGV[3]  ms to leave a renewed marker under the key instead of nothing
--          (a renewal retiring the old id), or ""
--
-- Returns { 1, user or "" } when deleted, { 0, "" } when there was no
-- session (or only a renewed marker), { -1, "" } when it is bound to another user, { -2, "" } when it
-- was saved since that revision (nothing deleted in the last two cases).
local key = KEYS[1]
local v = redis.call('GET', key)
if not v or v == RENEWED then
  return { 0, '' }
end
local h = header(v)
if not h then
  return not_a_session()
end
if ARGV[2] ~= '' and h.revision ~= tonumber(ARGV[2]) then
  return { -2, '' }
end
local user = body(v).u or ''
if ARGV[1] ~= '' and ARGV[1] ~= user then
  return { -1, '' }
end
if ARGV[3] ~= '' then
  redis.call('SET', key, RENEWED, 'PX', ARGV[3])
else
  redis.call('DEL', key)
end
return { 1, user }
