-- Takes a lease for an owner if no one holds it, and counts its fencing
-- token: the last token plus one, or the server's time in microseconds
-- if that is higher, so tokens keep rising after the counter expired or
-- a failover lost its last write (as long as the new primary's clock is
-- not behind the old one's).
--
-- KEYS[1]  the lease (its owner's token while held)
-- KEYS[2]  the resource's fencing counter (same hash tag)
-- ARGV[1]  the owner's token
-- ARGV[2]  the lease, ms
-- ARGV[3]  how long the counter is kept past this token, ms
--
-- Returns the fencing token (> 0) when taken; else -1 - the holder's
-- remaining lease in ms (so at most -1).
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return -1 - math.max(redis.call('PTTL', KEYS[1]), 0)
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local token = math.max(last + 1, now_us)
redis.call('SET', KEYS[2], string.format('%d', token), 'PX', ARGV[3])
return token
