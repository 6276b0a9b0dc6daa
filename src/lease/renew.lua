-- Extends a lease, only for its owner (the lease's value begins with the
-- owner's mark; marks of one kind of lease all have one length).
--
-- KEYS[1]  the lease
-- ARGV[1]  the owner's mark
-- ARGV[2]  the lease's new time to live, ms
--
-- Returns 1 when extended, 0 when the lease is not (or no longer) the
-- owner's: it expired, was taken by another, or removed from outside.
local v = redis.call('GET', KEYS[1])
if v and #ARGV[1] > 0 and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
