-- Writes the fields one request changed, and the expiry, in one step.
--
-- KEYS[1]  the session hash
-- ARGV[1]  "update": change an existing session; never recreate one that
--          expired, was destroyed or was revoked meanwhile
--          "create": make a new session; refuse if the key exists
-- ARGV[2]  idle timeout, ms
-- ARGV[3]  absolute timeout, ms (create only)
-- ARGV[4]  creation time to keep, ms, or "" for now (create only; id renewal
--          keeps the original creation time and absolute deadline)
-- ARGV[5]  absolute deadline to keep, ms, or "" for now + ARGV[3] (create only)
-- ARGV[6]  "1" to delete every data field ("d:*") before applying changes
-- ARGV[7..] field, value pairs; an empty value deletes the field
--
-- Returns { ttl_ms, deadline_ms } when saved,
--         0 when the session is gone (update), -1 when the key exists (create).
local key = KEYS[1]
local now = now_ms()

local deadline
if ARGV[1] == 'create' then
  if redis.call('EXISTS', key) == 1 then
    return -1
  end
  local created = now
  if ARGV[4] ~= '' then created = tonumber(ARGV[4]) end
  deadline = now + tonumber(ARGV[3])
  if ARGV[5] ~= '' then deadline = tonumber(ARGV[5]) end
  if deadline <= now then
    return 0
  end
  redis.call('HSET', key, 'm:created', created, 'm:deadline', deadline)
else
  deadline = tonumber(redis.call('HGET', key, 'm:deadline'))
  if not deadline then
    return 0
  end
  if deadline <= now then
    redis.call('DEL', key)
    return 0
  end
end

-- Deletions and writes are batched, at most 500 fields a call, instead of a
-- call per field (each redis.call has a fixed cost).
local dels = {}
if ARGV[6] == '1' then
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, 2) == 'd:' then
      dels[#dels + 1] = field
    end
  end
end

-- A write is activity: it refreshes last-seen and slides the idle expiry.
local sets = { 'm:seen', now }
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    dels[#dels + 1] = ARGV[i]
  else
    sets[#sets + 1] = ARGV[i]
    sets[#sets + 1] = ARGV[i + 1]
  end
end
for i = 1, #dels, 500 do
  redis.call('HDEL', key, unpack(dels, i, math.min(i + 499, #dels)))
end
for i = 1, #sets, 1000 do
  redis.call('HSET', key, unpack(sets, i, math.min(i + 999, #sets)))
end

local expires = math.min(now + tonumber(ARGV[2]), deadline)
redis.call('PEXPIREAT', key, expires)
return { expires - now, deadline }
