-- Extends a lease, only for its owner.
--
-- KEYS[1]  the lease
-- ARGV[1]  the owner's token
-- ARGV[2]  the lease's new time to live, ms
--
-- Returns 1 when extended, 0 when the lease is not (or no longer) the
-- owner's: it expired, was taken by another, or removed from outside.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
