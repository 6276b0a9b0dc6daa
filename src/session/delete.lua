-- Deletes a session if it meets the conditions.
--
-- KEYS[1]  the session
-- ARGV[1]  the user it must be bound to, or "" for any
-- ARGV[2]  the revision it must still have (no save since), or "" for any
-- ARGV[3]  a renewal's successor handle, to leave under the key (after
--          "R1") instead of nothing, or ""
-- ARGV[4]  how long that marker stays, ms
--
-- Returns { 1, user or "" } when deleted, { 0, "" } when there was no
-- session, { -3, successor handle } when there was only a renewal's marker, { -1, "" } when it is bound to another user, { -2, "" } when it
-- was saved since that revision (nothing deleted in the last two cases).
local key = KEYS[1]
local v = redis.call('GET', key)
if not v then
  return { 0, '' }
end
if is_renewed(v) then
  return { -3, string.sub(v, 3) }
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
  redis.call('SET', key, RENEWED .. ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', key)
end
return { 1, user }
