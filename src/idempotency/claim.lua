-- Claims a key, or returns what holds it, in one call (one command, where
-- a transaction of plain commands would be six).
--
-- KEYS[1]  the record
-- KEYS[2]  its fencing-token counter (same hash tag)
-- ARGV[1]  the in-flight record to write (it names its holder)
-- ARGV[2]  the lease (ms)
-- ARGV[3]  how long the counter lives past this claim (ms)
--
-- Returns {0, token} when the key was free and is now claimed; else
-- {1, remaining ms, record}.
local rec = redis.call('GET', KEYS[1])
if rec then
  return {1, redis.call('PTTL', KEYS[1]), rec}
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, token}
