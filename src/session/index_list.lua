-- Lists a user's sessions after pruning entries past their deadline.
--
-- KEYS[1]  the user's index (sorted set, see index_add.lua)
--
-- Returns the session handles, oldest deadline first. Entries whose session
-- ended early (idle expiry, logout) are removed by the caller with ZREM once
-- it has seen that the session is gone.
local key = KEYS[1]
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
return redis.call('ZRANGE', key, 0, -1)
