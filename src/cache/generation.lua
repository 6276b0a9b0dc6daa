-- Starts the next cache generation: one past both the stored counter and
-- the generation the caller knows, so a counter that went back (a
-- failover lost an INCR, or eviction dropped the key) still moves on.
--
-- KEYS[1]  the generation counter
-- ARGV[1]  the generation the caller knows
--
-- Returns the new generation.
local stored = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local next = math.max(stored, tonumber(ARGV[1]) or 0) + 1
redis.call('SET', KEYS[1], string.format('%d', next))
return next
