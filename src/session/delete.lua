-- Deletes a session, optionally only if it is bound to a given user.
--
-- KEYS[1]  the session hash
-- ARGV[1]  the user the session must be bound to, or "" for any session
--
-- Returns { 1, user or "" } when deleted, { 0, "" } when there was no
-- session, { -1, "" } when it is bound to another user (nothing deleted).
local key = KEYS[1]
local user = redis.call('HGET', key, 'm:user')
if redis.call('EXISTS', key) == 0 then
  return { 0, '' }
end
if not user then user = '' end
if ARGV[1] ~= '' and ARGV[1] ~= user then
  return { -1, '' }
end
redis.call('DEL', key)
return { 1, user }
