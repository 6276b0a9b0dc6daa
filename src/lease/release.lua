-- Gives a lease up, only for its owner (the lease's value begins with the
-- owner's mark): a lease that expired and was taken by another is left
-- alone.
--
-- KEYS[1]  the lease
-- ARGV[1]  the owner's mark
--
-- Returns 1 when given up, 0 when it was not the owner's.
local v = redis.call('GET', KEYS[1])
if v and #ARGV[1] > 0 and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
