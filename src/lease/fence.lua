-- Counts a fencing token for a lease's current owner: the last token
-- plus one, or the server's time in microseconds if that is higher, so
-- tokens keep rising after the counter expired or a failover lost its
-- last write (as long as the new primary's clock is not behind the old
-- one's). A token is only ever counted for whoever holds the lease then,
-- so tokens rise in the order of their holders.
--
-- KEYS[1]  the lease (its value begins with its owner's mark while held)
-- KEYS[2]  the resource's fencing counter (same hash tag)
-- ARGV[1]  the owner's mark
-- ARGV[2]  how long the counter is kept past this token, ms
--
-- Returns the fencing token (> 0), or 0 when the lease is not (or no
-- longer) the owner's.
local v = redis.call('GET', KEYS[1])
if not v or #ARGV[1] == 0 or string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local token = math.max(last + 1, now_us)
redis.call('SET', KEYS[2], string.format('%d', token), 'PX', ARGV[2])
return token
