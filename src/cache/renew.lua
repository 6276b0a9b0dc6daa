-- Extends a cache fill lease, only for its holder (a fill slower than the
-- lease keeps it while it runs).
--
-- KEYS[1]  the lease
-- ARGV[1]  the holder's token
-- ARGV[2]  the lease's new time to live, ms
--
-- Returns 1 when extended, 0 when the lease is not the holder's (it
-- expired, or an invalidation removed it).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
