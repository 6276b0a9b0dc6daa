-- Adds a session to its user's index and prunes entries past their deadline.
--
-- KEYS[1]  the user's index (sorted set: member = session handle,
--          score = the session's absolute deadline, ms)
-- ARGV[1]  session handle
-- ARGV[2]  its absolute deadline, ms
--
-- Returns the number of entries left. The index itself expires with its
-- latest deadline, so an idle user's index does not outlive their sessions.
local key = KEYS[1]
local now = now_ms()
redis.call('ZADD', key, ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', key, last[2])
end
return redis.call('ZCARD', key)
